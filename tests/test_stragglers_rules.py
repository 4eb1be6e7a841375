"""The straggler policies' decisions as pure functions: the adaptive deadline, the SSP clock gate,
and the order statistics of step time (Chen et al. 2016)."""

from __future__ import annotations

import numpy as np
import pytest

from bench.order_stats import (
    expected_order_statistic,
    harmonic,
    predicted_step_seconds,
    simulate_step_seconds,
)
from ps_server.deadline import (
    MARGIN_S,
    MIN_DURATIONS,
    SPREAD,
    arrives_in_time,
    auto_deadline,
    default_min_gradients,
    in_phase,
    step_may_close,
)
from ps_server.ssp import clock_gap, joining_clock, may_start_step
from pscluster.settings.job import parse_deadline

# --- deadline --------------------------------------------------------------------------------


def test_no_deadline_without_history() -> None:
    assert auto_deadline([0.001] * 7) is None
    assert auto_deadline([]) is None


def test_deadline_of_identical_offsets_is_the_offset_plus_margin() -> None:
    assert auto_deadline([0.004] * 10) == pytest.approx(0.004 + MARGIN_S)


def test_deadline_formula() -> None:
    offsets = [0.001, 0.002, 0.003, 0.004, 0.005, 0.006, 0.007, 0.008, 0.009]
    # median 0.005; |x - median| = 0.004, 0.003, ..., 0, ..., 0.004: MAD 0.002
    expected = 0.005 + SPREAD * 1.4826 * 0.002 + MARGIN_S
    assert auto_deadline(offsets) == pytest.approx(expected)
    assert auto_deadline(offsets, spread=0.0, margin_s=0.0) == pytest.approx(0.005)


def test_one_persistent_straggler_is_left_out() -> None:
    # Three workers of four arrive within 2 ms of the first; the fourth 40 ms after it. Pooled
    # over 20 steps, the straggler is a third of the offsets and the deadline stays short.
    rng = np.random.default_rng(0)
    offsets = []
    for _ in range(20):
        offsets += [float(rng.uniform(0, 0.002)), float(rng.uniform(0, 0.002)), 0.04]
    deadline = auto_deadline(offsets)
    assert deadline is not None
    assert 0.002 < deadline < 0.01


def test_deadline_is_robust_to_a_rare_long_tail() -> None:
    calm = [0.001 * (i % 5) for i in range(60)]
    tail = [*calm[:57], 0.2, 0.2, 0.2]  # one arrival in twenty 200 ms late
    a, b = auto_deadline(calm), auto_deadline(tail)
    assert a is not None and b is not None
    assert b < 0.01
    assert b == pytest.approx(a, abs=0.002)


def test_deadline_follows_a_cluster_that_slows_down_as_a_whole() -> None:
    fast = [0.001 * (1 + i % 4) for i in range(40)]
    slow = [10 * x for x in fast]
    a, b = auto_deadline(fast), auto_deadline(slow)
    assert a is not None and b is not None
    assert b - MARGIN_S == pytest.approx(10 * (a - MARGIN_S))


@pytest.mark.parametrize(
    ("contributions", "required", "minimum", "elapsed", "deadline", "closes"),
    [
        (4, 4, 2, 0.0, None, True),  # all in
        (3, 4, 2, 9.9, None, False),  # no deadline: wait for N
        (3, 4, 2, 0.009, 0.01, False),  # before the deadline
        (3, 4, 2, 0.01, 0.01, True),  # at it, with enough
        (2, 4, 2, 0.05, 0.01, True),
        (1, 4, 2, 0.05, 0.01, False),  # past it, too few: wait for the minimum
        (1, 1, 2, 0.0, 0.01, True),  # one live worker: its gradient is all there is
        (2, 2, 3, 0.02, 0.01, True),  # fewer live than the minimum
    ],
)
def test_step_may_close(contributions, required, minimum, elapsed, deadline, closes) -> None:
    assert (
        step_may_close(
            contributions=contributions,
            required=required,
            min_gradients=minimum,
            elapsed_s=elapsed,
            deadline_s=deadline,
        )
        is closes
    )


@pytest.mark.parametrize(
    ("contributions", "minimum", "elapsed", "deadline", "awaited", "closes"),
    [
        (3, 2, 0.0, 0.05, 0, True),  # the fourth is busy with an older step: do not wait for it
        (3, 2, 0.0, 0.05, 1, False),  # one in phase still to come: wait, up to the deadline
        (3, 2, 0.05, 0.05, 1, True),  # the deadline passed
        (1, 2, 0.0, 0.05, 0, False),  # too few, however many are busy
        (3, 2, 0.0, None, 0, False),  # no deadline (none, or auto without history): wait for N
        (3, 2, 0.0, 0.05, None, False),  # no membership yet: nobody is known to be busy
    ],
)
def test_step_with_a_deadline_closes_once_every_worker_in_phase_is_in(
    contributions, minimum, elapsed, deadline, awaited, closes
) -> None:
    assert (
        step_may_close(
            contributions=contributions,
            required=4,
            min_gradients=minimum,
            elapsed_s=elapsed,
            deadline_s=deadline,
            awaited=awaited,
        )
        is closes
    )


def test_arrives_in_time() -> None:
    # Step opened at t = 10.0 with a 5 ms deadline; the worker was sent its parameters at 9.99.
    assert arrives_in_time(9.99, [0.01, 0.012, 0.011], 10.0, 0.005)  # expected at 10.001
    assert not arrives_in_time(9.99, [0.05, 0.05, 0.05], 10.0, 0.005)  # five times slower
    # The median: one long stall (or two) among five does not make a worker slow ...
    assert arrives_in_time(9.99, [0.01, 0.2, 0.01, 0.2, 0.01], 10.0, 0.005)
    # ... and one slow step among few is no pattern yet: waited for.
    assert arrives_in_time(9.99, [0.05] * (MIN_DURATIONS - 1), 10.0, 0.005)


def test_in_phase() -> None:
    # Step 5 opened (first gradient) at t = 10.0.
    assert in_phase(None, 5, 10.0)  # not heard from: may be on its way
    assert in_phase((5, 9.98), 5, 10.0)  # released by step 4's close, before step 5 opened
    assert in_phase((5, 10.0), 5, 10.0)
    assert not in_phase((4, 9.5), 5, 10.0)  # dropped from step 4: still computing for it
    assert not in_phase((5, 10.01), 5, 10.0)  # its late push answered after step 5 opened


@pytest.mark.parametrize(("n", "m"), [(1, 1), (2, 1), (3, 2), (4, 2), (5, 3), (8, 4)])
def test_default_min_gradients_is_half_rounded_up(n, m) -> None:
    assert default_min_gradients(n) == m


def test_parse_deadline() -> None:
    assert parse_deadline("none") is None
    assert parse_deadline("AUTO") == "auto"
    assert parse_deadline("0.25") == 0.25
    for bad in ("0", "-1", "soon", "nan", "inf"):
        with pytest.raises(ValueError):
            parse_deadline(bad)


# --- SSP -------------------------------------------------------------------------------------


def test_ssp_gate_lets_a_worker_run_at_most_s_steps_ahead() -> None:
    # "step c may start when every live worker has finished step c - S - 1": a worker that has
    # finished c steps starts step c; the slowest has finished m steps, i.e. step m - 1.
    for bound in range(4):
        for slowest in range(6):
            for clock in range(slowest, slowest + 8):
                allowed = slowest - 1 >= clock - bound - 1
                assert may_start_step(clock, [slowest, clock, clock + 1], bound) is allowed


def test_clock_gap() -> None:
    assert clock_gap(5, [2, 5, 7]) == 3
    assert clock_gap(2, [2, 5, 7]) == 0
    assert clock_gap(3, []) == 0  # alone


def test_joining_worker_starts_at_the_slowest_clock() -> None:
    assert joining_clock([9, 4, 6]) == 4
    assert joining_clock([]) == 0
    assert may_start_step(joining_clock([9, 4, 6]), [9, 4, 6], bound=0)


# --- order statistics ------------------------------------------------------------------------


def test_expected_order_statistics_known_values() -> None:
    assert harmonic(4) == pytest.approx(25 / 12)
    # the minimum of n exponentials has mean scale / n; the maximum scale * H(n)
    assert expected_order_statistic(8, 1, 0.0, 1.0) == pytest.approx(1 / 8)
    assert expected_order_statistic(8, 8, 0.0, 1.0) == pytest.approx(harmonic(8))
    assert expected_order_statistic(1, 1, 0.01, 0.01) == pytest.approx(0.02)
    with pytest.raises(ValueError):
        expected_order_statistic(4, 5, 0.0, 1.0)


@pytest.mark.parametrize(("n", "rank"), [(8, 8), (8, 6), (8, 4), (5, 3)])
def test_expected_order_statistic_matches_sampling(n, rank) -> None:
    rng = np.random.default_rng(1)
    draws = 0.01 + rng.exponential(0.01, size=(200_000, n))
    sampled = np.sort(draws, axis=1)[:, rank - 1].mean()
    assert expected_order_statistic(n, rank, 0.01, 0.01) == pytest.approx(sampled, rel=0.01)


def test_fewer_gradients_per_step_means_shorter_steps() -> None:
    times = [predicted_step_seconds(8, n, 0.01, 0.005) for n in (8, 6, 4)]
    assert times[0] > times[1] > times[2] > 0.005 + 0.01


def test_simulation_without_spares_is_chen_et_al() -> None:
    # k = 0: nobody is dropped, everyone starts each step together
    simulated = simulate_step_seconds(4, 4, 0.01, 0.005, steps=20000, seed=2)
    assert simulated == pytest.approx(predicted_step_seconds(4, 4, 0.01, 0.005), rel=0.02)


@pytest.mark.parametrize("aggregate", [6, 4])
def test_late_starts_lengthen_steps_beyond_chen_et_al(aggregate) -> None:
    predicted = predicted_step_seconds(8, aggregate, 0.01, 0.005)
    simulated = simulate_step_seconds(8, aggregate, 0.01, 0.005, steps=20000, seed=3)
    assert predicted < simulated < predicted_step_seconds(8, 8, 0.01, 0.005)
