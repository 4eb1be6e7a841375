"""``python -m coordinator``: read settings, build the app, serve until SIGTERM."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from pscluster.threads import limit_blas_threads

if TYPE_CHECKING:
    from pscluster.settings import CoordinatorSettings


def serve(settings: CoordinatorSettings) -> int:
    from coordinator.app import build_app
    from pscluster.service import run_service

    run_service(lambda url: build_app(settings, url), settings)
    return 0


def main(argv: Sequence[str]) -> int:
    # Before anything loads NumPy (the settings do): see pscluster.threads.
    limit_blas_threads()
    from pscluster.settings import CoordinatorSettings
    from pscluster.startup import run_one_service

    return run_one_service("coordinator", CoordinatorSettings, serve, argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
