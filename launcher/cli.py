"""``pscluster``: run a whole local cluster (``up``) or one service (coordinator, ps, worker).

Service flags mirror the settings objects field for field; a flag wins over its environment
variable.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

SERVICE_NAMES = ("coordinator", "ps", "worker")


def __getattr__(name: str) -> Any:
    """``SERVICES``: each service's settings class. Loaded on first use, not at import: the
    settings load NumPy, and the coordinator's command limits its BLAS threads before that
    (``coordinator.__main__``, ``pscluster.threads``)."""
    if name != "SERVICES":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from pscluster.settings import CoordinatorSettings, ShardSettings, WorkerSettings

    return {"coordinator": CoordinatorSettings, "ps": ShardSettings, "worker": WorkerSettings}


def run_service_command(name: str, argv: Sequence[str]) -> int:
    # Imported here: one service's command loads that service alone.
    if name == "coordinator":
        from coordinator.__main__ import main as service_main
    elif name == "ps":
        from ps_server.__main__ import main as service_main
    else:
        from worker.__main__ import main as service_main
    return service_main(argv)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = ("up", *SERVICE_NAMES)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in commands:
        print(
            "usage: pscluster {up,coordinator,ps,worker} [--help] [flags]\n\n"
            "  up           start a local cluster (coordinator, M shards, N + k workers), train\n"
            "  coordinator  run the coordinator service\n"
            "  ps           run one parameter-server shard\n"
            "  worker       run one worker replica",
            file=sys.stderr if argv and argv[0] not in ("-h", "--help") else sys.stdout,
        )
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    if argv[0] == "up":
        from launcher.up import main as up

        return up(argv[1:])
    return run_service_command(argv[0], argv[1:])


if __name__ == "__main__":
    raise SystemExit(main())
