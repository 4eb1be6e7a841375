"""SIGTERM to each service mid-run: exit code 0, and a final checkpoint on disk for the shard."""

from __future__ import annotations

import signal
import time
from pathlib import Path

from ps_server.checkpoint import CheckpointStore
from tests.processes import get, start


def test_sigterm_stops_every_service_cleanly(tmp_path: Path) -> None:
    processes = []
    try:
        coordinator, coord_url = start(
            "coordinator",
            tmp_path,
            "coordinator",
            PSC_SHARDS="1",
            PSC_WORKERS="1",
            PSC_STEPS="1000000",
            PSC_CHECKPOINT_EVERY="0",
        )
        processes.append(coordinator)
        link = {"PSC_COORDINATOR_URL": coord_url}
        shard, shard_url = start(
            "ps_server", tmp_path, "ps0", **link, PSC_CHECKPOINT_DIR=str(tmp_path / "ckpt")
        )
        processes.append(shard)
        worker, _ = start(
            "worker",
            tmp_path,
            "worker0",
            **link,
            PSC_WORKER_ID="w0",
            PSC_DELAY="fixed",
            PSC_DELAY_S="0.005",
        )
        processes.append(worker)
        deadline = time.monotonic() + 30
        while get(f"{shard_url}/state").get("version", 0) < 20:
            assert time.monotonic() < deadline, "training did not start"
            time.sleep(0.05)

        # Worker first: it stops training, says goodbye, exits 0.
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(20) == 0
        assert get(f"{coord_url}/status")["live_workers"] == 0
        final_version = get(f"{shard_url}/state")["version"]
        assert final_version >= 20

        shard.send_signal(signal.SIGTERM)
        assert shard.wait(20) == 0
        store = CheckpointStore(tmp_path / "ckpt", 0)
        checkpoint = store.newest_valid()
        # No periodic checkpoints (PSC_CHECKPOINT_EVERY=0): this one was written on SIGTERM.
        assert checkpoint is not None and checkpoint.version == final_version
        assert len(store.paths()) == 1

        coordinator.send_signal(signal.SIGTERM)
        assert coordinator.wait(20) == 0
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
