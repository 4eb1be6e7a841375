"""Block passes split across threads: every element once, the same bits as one whole pass."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from ps_server import kernels
from ps_server.metrics import ShardMetrics
from ps_server.optimizers import SGD, Adam, Optimizer, apply
from ps_server.state import ShardState
from pscluster.protocol import ErrorCode, ProtocolError
from pscluster.settings import JobConfig


@pytest.fixture
def three_parts(monkeypatch):
    """Three parts on real threads with tiny blocks, whatever the machine's core count."""
    pool = ThreadPoolExecutor(max_workers=2)
    monkeypatch.setattr(kernels, "_helpers", pool)
    monkeypatch.setattr(kernels, "PARTS", 3)
    monkeypatch.setattr(kernels, "PARALLEL_ELEMENTS", 0)
    monkeypatch.setattr(kernels, "BLOCK", 16)
    yield
    pool.shutdown()


@pytest.mark.parametrize("parts", [1, 2, 3, 7])
def test_plan_covers_every_element_once(monkeypatch, parts: int) -> None:
    monkeypatch.setattr(kernels, "BLOCK", 16)
    sizes = {"a": 100, "empty": 0, "b": 7, "c": 64}
    runs = kernels.plan(sizes, parts)
    assert 1 <= len(runs) <= parts
    seen = {name: np.zeros(n, np.int64) for name, n in sizes.items()}
    for run in runs:
        for name, start, stop in run:
            assert 0 <= start < stop <= sizes[name]
            seen[name][start:stop] += 1
            # Cut on block boundaries, but for an array's end.
            assert start % 16 == 0 and (stop % 16 == 0 or stop == sizes[name])
    for name, count in seen.items():
        np.testing.assert_array_equal(count, 1, err_msg=name)
    # Balanced: no part holds more than its share of blocks, rounded up.
    blocks = [sum(-(-(b - a) // 16) for _, a, b in run) for run in runs]
    assert max(blocks) <= -(-sum(-(-n // 16) for n in sizes.values()) // parts)


def test_blocks_run_on_several_threads_and_each_once(three_parts) -> None:
    data = np.zeros(1000, np.int64)
    threads: set[int] = set()
    lock = threading.Lock()

    def mark(name: str, span: slice) -> None:
        assert span.stop - span.start <= 16
        with lock:
            threads.add(threading.get_ident())
        data[span] += 1

    assert kernels.for_each_block({"x": 1000}, mark) is True
    np.testing.assert_array_equal(data, 1)
    assert len(threads) >= 2  # the caller's and a helper's (one helper may take two parts)


def test_a_failed_check_stops_and_an_error_waits_for_every_part(three_parts) -> None:
    assert kernels.for_each_block({"x": 900}, lambda name, span: span.start < 800) is False
    finished = []

    def fail_first(name: str, span: slice) -> None:
        if span.start == 0:
            raise ValueError("boom")
        finished.append(span.start)

    with pytest.raises(ValueError, match="boom"):
        kernels.for_each_block({"x": 900}, fail_first)
    # The other two parts ran to their end before the error reached the caller.
    assert len(finished) == len(range(16 * 19, 900, 16))


def whole_pass(opt: Optimizer, params, grads, scale, fold, fold_adds: bool, snapshot) -> None:
    """The reference: one pass per operation over whole arrays, on one thread."""
    opt.begin_step()
    for name, p in params.items():
        g = grads[name]
        if fold_adds:
            g += fold[name]
        else:
            np.copyto(g, fold[name])
        opt.update_block(name, slice(0, p.size), p.reshape(-1), g.reshape(-1), scale)
        np.copyto(snapshot[name], p, casting="same_kind")


@pytest.mark.parametrize("kind", ["sgd", "momentum", "adam"])
@pytest.mark.parametrize("fold_adds", [True, False])
@pytest.mark.parametrize("wire", ["float32", "float16"])
def test_fused_parallel_update_has_the_bits_of_whole_passes(
    three_parts, kind: str, fold_adds: bool, wire: str
) -> None:
    """As a shard runs it: float32 frames get the new parameters written out of place, 16-bit
    frames a converted copy; either way the bits of one whole-array pass per operation."""
    rng = np.random.default_rng(3)
    shapes = {"w": (37, 11), "b": (11,), "e": (0,), "v": (300,)}

    def arrays(scale: float = 1.0) -> dict[str, np.ndarray]:
        return {k: (rng.standard_normal(s) * scale).astype(np.float32) for k, s in shapes.items()}

    start, g1, g2, f1, f2 = arrays(), arrays(0.1), arrays(0.1), arrays(0.1), arrays(0.1)

    def build(params):
        if kind == "adam":
            return Adam(params, lr=0.01)
        return SGD(params, lr=0.1, momentum=0.9 if kind == "momentum" else 0.0)

    ours = {k: v.copy() for k, v in start.items()}
    ref = {k: v.copy() for k, v in start.items()}
    opt_ours, opt_ref = build(ours), build(ref)
    for grads, fold in ((g1, f1), (g2, f2)):  # two steps: the state carries over
        snap_ours = {k: np.empty(s, wire) for k, s in shapes.items()}
        snap_ref = {k: np.empty(s, wire) for k, s in shapes.items()}
        old = {k: v.copy() for k, v in ours.items()}
        where = {"out": snap_ours} if wire == "float32" else {"snapshot": snap_ours}
        apply(opt_ours, ours, {k: v.copy() for k, v in grads.items()}, 0.25, fold=fold,
              fold_adds=fold_adds, **where)  # fmt: skip
        whole_pass(opt_ref, ref, {k: v.copy() for k, v in grads.items()}, 0.25, fold, fold_adds,
                   snap_ref)  # fmt: skip
        if wire == "float32":
            for k in shapes:  # out of place: the old parameters are left as they were
                assert ours[k].tobytes() == old[k].tobytes(), k
            ours = snap_ours
        for k in shapes:
            assert ours[k].tobytes() == ref[k].tobytes(), k
            assert snap_ours[k].tobytes() == snap_ref[k].tobytes(), k
        assert not np.array_equal(ours["v"], old["v"])
    for k, v in opt_ref.state().items():
        assert opt_ours.state()[k].tobytes() == v.tobytes(), k


def test_a_nan_in_any_part_is_refused_by_name(three_parts) -> None:
    job = JobConfig(optimizer="sgd", lr=0.5, steps=10)
    params = {"a": np.zeros(500, np.float32), "b": np.zeros((20, 20), np.float32)}
    state = ShardState(job, 0, params, ShardMetrics(CollectorRegistry()))
    grads = {k: np.ones_like(v) for k, v in params.items()}
    assert set(state.validate_gradients(grads)) == {"a", "b"}
    grads["b"][19, 19] = np.nan  # the very last element, in the last part
    with pytest.raises(ProtocolError) as refused:
        state.validate_gradients(grads)
    assert refused.value.code is ErrorCode.NOT_FINITE and "'b'" in refused.value.message
