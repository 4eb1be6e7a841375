"""Each benchmark runs end to end at tiny sizes and reports the figures it promises.

No test asserts a time: these only check that the benchmarks still run against the current code
and that their tables and JSON carry numbers in every column.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def run_bench(module: str, *args: str, tmp_path: Path) -> tuple[str, dict]:
    out = tmp_path / f"{module}.json"
    done = subprocess.run(
        [sys.executable, "-m", f"bench.{module}", *args, "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout, json.loads(out.read_text())


def assert_numbers(row: dict, keys: list[str]) -> None:
    for key in keys:
        value = row[key]
        assert isinstance(value, int | float) and math.isfinite(value) and value > 0, (key, row)


@pytest.mark.timeout(120)
def test_roundtrip_bench(tmp_path: Path) -> None:
    stdout, figures = run_bench(
        "roundtrip",
        "--params",
        "2e4",
        "--workers",
        "2",
        "--repeats",
        "1",
        "--min-time",
        "0.02",
        tmp_path=tmp_path,
    )
    for title in ("raw rt/s", "naive MB/s", "project rt/s", "project/raw", "project/naive"):
        assert title in stdout
    (row,) = figures["rows"]
    assert (row["params"], row["workers"]) == (20000, 2)
    assert_numbers(row, [f"{i}_{u}" for i in ("raw", "naive", "project") for u in ("rts", "mbps")])
    assert_numbers(row, [f"{i}_cpu_us" for i in ("raw", "naive", "project")])
    assert_numbers(row, ["vs_raw", "vs_naive", "cpu_ratio"])


@pytest.mark.timeout(120)
def test_roundtrip_bench_ceilings(tmp_path: Path) -> None:
    """The transport alone and the protocol without shard work, beside the project."""
    args = ("--params", "2e4", "--workers", "2", "--repeats", "1", "--min-time", "0.02")
    impls = ("raw", "frames", "stub", "project")
    stdout, figures = run_bench("roundtrip", *args, "--impls", ",".join(impls), tmp_path=tmp_path)
    for title in ("frames rt/s", "stub CPU us/rt", "frames/raw", "stub/raw", "project/raw"):
        assert title in stdout
    (row,) = figures["rows"]
    assert_numbers(row, [f"{i}_{u}" for i in impls for u in ("rts", "cpu_us")])
    assert_numbers(row, ["frames_vs_raw", "stub_vs_raw", "vs_raw", "cpu_ratio"])


@pytest.mark.timeout(120)
def test_transports_bench(tmp_path: Path) -> None:
    args = ("--params", "1e2", "--workers", "2", "--repeats", "1", "--min-time", "0.02")
    stdout, figures = run_bench("transports", *args, tmp_path=tmp_path)
    assert "websocket us/rt" in stdout
    (row,) = figures["rows"]
    transports = ("frames", "streams", "websocket", "http")
    assert_numbers(row, [f"{t}_{u}" for t in transports for u in ("us", "cpu_us")])


@pytest.mark.timeout(120)
def test_aggregate_bench(tmp_path: Path) -> None:
    stdout, figures = run_bench(
        "aggregate",
        "--params",
        "1e4",
        "--workers",
        "1,3",
        "--repeats",
        "1",
        "--min-time",
        "0.01",
        tmp_path=tmp_path,
    )
    assert "vs copy" in stdout and "copy GB/s" in stdout
    rows = figures["rows"]
    assert {(r["workers"], r["optimizer"]) for r in rows} == {
        (n, o) for n in (1, 3) for o in ("sgd", "momentum", "adam")
    }
    for row in rows:
        assert_numbers(
            row,
            ["step_ms", "steps_per_s", "gb_per_s", "copy_gb_per_s", "vs_copy",
             "all_core_copy_gb_per_s", "vs_all_core_copy"],
        )  # fmt: skip


@pytest.mark.timeout(180)
def test_training_bench(tmp_path: Path) -> None:
    stdout, figures = run_bench(
        "training",
        *("--model", "torch_cnn", "--workers", "1", "--wire-dtypes", "float32", "--steps", "8"),
        *("--alone-s", "0.05"),
        tmp_path=tmp_path,
    )
    for title in ("samples/s", "vs mlp", "compute ms", "push ms", "wait ms", "wire dtype"):
        assert title in stdout
    # The NumPy MLP, then the PyTorch CNN beside it, at the same worker count.
    assert [row["model"] for row in figures["rows"]] == ["mlp", "torch_cnn"]
    for row in figures["rows"]:
        assert row["workers"] == 1 and row["steps"] == 8
        keys = ["samples_per_s", "vs_baseline", "step_ms", "compute_ms", "push_ms", "accuracy"]
        assert_numbers(row, keys)
        assert row["pull_ms"] >= 0 and row["wait_ms"] >= 0
    assert figures["rows"][0]["vs_baseline"] == 1.0
    assert [row["model"] for row in figures["alone"]] == ["mlp", "torch_cnn"]
    for row in figures["alone"]:
        assert_numbers(row, ["parameters", "ms_per_batch"])
    # float32 at the largest worker count reuses the run above: no more cluster starts.
    assert [(r["model"], r["wire_dtype"]) for r in figures["precision"]] == [
        ("torch_cnn", "float32")
    ]
    for precise in figures["precision"]:
        assert 0 < precise["accuracy"] <= 1 and math.isfinite(precise["loss"])


def test_stragglers_bench(tmp_path: Path) -> None:
    stdout, figures = run_bench(
        "stragglers",
        "--pattern",
        "one-slow",
        "--workers",
        "2",
        "--spares",
        "1",
        "--steps",
        "6",
        "--eval-every",
        "3",
        "--delay-s",
        "0.001",
        "--ssp-bounds",
        "1",
        # Four clusters, one per kind of row (the other async rows differ only in a flag).
        "--only",
        "^(sync, 1 spares|async|sync, deadline auto|ssp, S = 1)$",
        tmp_path=tmp_path,
    )
    for title in ("ms/step", "s to target", "accuracy", "dropped"):
        assert title in stdout
    configs = [row["config"] for row in figures["rows"]]
    assert configs == [
        "sync, 1 spares",
        "async",
        "sync, deadline auto",
        "ssp, S = 1",
    ]
    for row in figures["rows"]:
        assert_numbers(row, ["step_ms", "gradients_per_s", "seconds", "loss", "accuracy"])
        assert row["history"], row["config"]  # the loss curve the plot draws
    # Sync runs 6 steps of N = 2 gradients; async N times as many single-gradient steps.
    assert [row["steps"] for row in figures["rows"]] == [6, 12, 6, 12]


@pytest.mark.timeout(120)
def test_sparse_bench(tmp_path: Path) -> None:
    stdout, figures = run_bench(
        "sparse",
        *("--rows", "2e4", "--batches", "1e3", "--min-time", "0.02", "--repeats", "1"),
        tmp_path=tmp_path,
    )
    assert "bytes per row measured" in stdout and "through a shard's data port" in stdout
    (row,) = figures["rows"]
    assert row["batch"] == 1000
    keys = ["pull_rows_s", "push_rows_s", "pull_vs_dense", "push_vs_dense", "bytes_vs_dense"]
    keys += ["port_pull_rows_s", "port_push_rows_s", "port_step_rows_s", "port_step_vs_inproc"]
    assert_numbers(row, keys)
    # A step moves its rows and ids, not the table: 16 floats and 3 ids per row plus framing.
    assert row["step_bytes"] < 1000 * (2 * 16 * 4 + 3 * 8) + 4096
    assert figures["row_bytes"] == 64 and figures["bytes_per_row"] > 64


@pytest.mark.timeout(120)
def test_messages_bench(tmp_path: Path) -> None:
    args = ("--params", "1e2", "--repeats", "1", "--min-time", "0.01")
    _, figures = run_bench("messages", *args, tmp_path=tmp_path)
    assert [row["message"] for row in figures["rows"]] == ["push", "pull", "reply", "refusal"]
    for row in figures["rows"]:
        assert_numbers(row, ["frame_us", "decode_us", "parse_us"])
