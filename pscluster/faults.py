"""Deterministic fault injection for tests: SIGKILL a process once, at a given step.

Like torchft's ``EventInjector().fail_at(rank, step)``: the fault is tied to a (service, step),
fires exactly once (a marker file remembers it across the restart it provokes), and the marker
lets the test assert that it really fired.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

from pscluster.settings import ServiceSettings


def maybe_kill(settings: ServiceSettings, step: int) -> None:
    """SIGKILL this process if its fault is due at ``step`` and has not fired before."""
    at, marker = settings.fault_kill_at, settings.fault_marker
    if at is None or step < at:
        return
    if marker is not None:
        if marker.exists():
            return
        # Written and synced before dying: the test reads the step the fault fired at.
        with open(marker, "w") as f:
            f.write(f"{step}\n")
            f.flush()
            os.fsync(f.fileno())
    os.kill(os.getpid(), signal.SIGKILL)


def fired_at(marker: Path) -> int | None:
    return int(marker.read_text()) if marker.exists() else None
