"""Gradients checked for NaN and Inf while the body arrives, in whatever pieces it arrives."""

from __future__ import annotations

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from ps_server import intake
from ps_server.intake import FiniteAsItArrives
from ps_server.metrics import ShardMetrics
from ps_server.state import ShardState
from pscluster.protocol import (
    ErrorCode,
    ProtocolError,
    all_finite,
    encode_frame,
    payload_start,
    to_wire,
)
from pscluster.settings import JobConfig


def arrival(body: bytes, cuts: list[int]) -> dict[str, bool]:
    """Feed the body into a buffer in pieces ending at ``cuts``, as a socket would."""
    buffer = memoryview(bytearray(len(body)))
    check = FiniteAsItArrives()
    for end in [*sorted(cuts), len(body)]:
        buffer[:end] = body[:end]
        check(buffer, end)
    return check.verdicts()


def gradients(spoil: dict[str, int]) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    arrays = {
        "big": rng.standard_normal(300_000).astype(np.float32),
        "half": to_wire(rng.standard_normal(5_001), "float16"),
        "brain": to_wire(rng.standard_normal(70_000), "bfloat16"),
        "empty": np.zeros(0, np.float32),
        "tiny": np.ones(3, np.float32),
    }
    for name, index in spoil.items():
        arrays[name][index] = np.inf if index % 2 else np.nan
    return arrays


@pytest.mark.parametrize(
    "spoil",
    [{}, {"big": 0}, {"big": 299_999}, {"big": 150_001, "brain": 69_999}, {"half": 2_500},
     {"tiny": 1}],
)  # fmt: skip
@pytest.mark.parametrize("step", [1 << 20, 4096, 7])
def test_verdicts_agree_with_a_check_after_arrival(monkeypatch, spoil, step: int) -> None:
    monkeypatch.setattr(intake, "STEP_BYTES", step)
    arrays = gradients(spoil)
    body = encode_frame({"worker": "w0"}, arrays)
    rng = np.random.default_rng(len(spoil) * 1000 + step)
    # Cuts anywhere, header and mid-element included; a few big pieces and a few tiny ones.
    cuts = [1, 2, 17, *rng.integers(0, len(body), 40).tolist()]
    verdicts = arrival(body, cuts)
    assert verdicts == {name: all_finite(a) for name, a in arrays.items()}
    assert [name for name, ok in verdicts.items() if not ok] == list(spoil)


def test_a_malformed_body_is_left_to_the_decoder() -> None:
    body = encode_frame({"worker": "w0"}, gradients({}))
    assert arrival(b"\x93" + body[1:], [10, 1000]) == {}
    assert arrival(body[: len(body) // 2], [100]) == {}  # shorter than its own header says


def test_payload_start_waits_for_the_whole_header() -> None:
    body = encode_frame({"worker": "w0", "note": "x" * 5000}, {"a": np.ones(4, np.float32)})
    start = payload_start(memoryview(body))
    assert start is not None and body[start:] == np.ones(4, np.float32).tobytes()
    for end in (1, 100, 5000, start - 1):
        assert payload_start(memoryview(body)[:end]) is None
    with pytest.raises(ProtocolError):
        payload_start(memoryview(b"\x90not a frame"))


def test_validation_trusts_the_verdicts_it_is_given() -> None:
    job = JobConfig(optimizer="sgd", lr=0.5, steps=10)
    params = {"w": np.zeros(4, np.float32), "b": np.zeros(2, np.float32)}
    state = ShardState(job, 0, params, ShardMetrics(CollectorRegistry()))
    spoiled = {"w": np.full(4, np.nan, np.float32), "b": np.ones(2, np.float32)}
    # Checked as it arrived (an array of the same body): not read again.
    assert set(state.validate_gradients(spoiled, finite={"w": True})) == {"w", "b"}
    clean = {"w": np.ones(4, np.float32), "b": np.ones(2, np.float32)}
    with pytest.raises(ProtocolError) as refused:
        state.validate_gradients(clean, finite={"b": False})
    assert refused.value.code is ErrorCode.NOT_FINITE and "'b'" in refused.value.message
    with pytest.raises(ProtocolError):  # what no verdict covers is still checked
        state.validate_gradients(spoiled, finite={"b": True})
