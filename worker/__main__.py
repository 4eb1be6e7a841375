"""``python -m worker``: read settings, build the app, train until the job is done."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from pscluster.service import run_service
from pscluster.settings import WorkerSettings
from pscluster.startup import run_one_service
from worker.app import SERVICE, build_app


def serve(settings: WorkerSettings) -> int:
    app = run_service(lambda url: build_app(settings, url), settings)
    # Exit 1 when training failed, so a supervisor (compose, the launcher) sees it.
    return 1 if app[SERVICE].failed is not None else 0


def main(argv: Sequence[str]) -> int:
    return run_one_service("worker", WorkerSettings, serve, argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
