"""``python -m ps_server``: read settings, build the app, serve until SIGTERM."""

from __future__ import annotations

import sys

from ps_server.app import build_app
from pscluster.service import run_service
from pscluster.settings import ShardSettings


def serve(settings: ShardSettings) -> int:
    run_service(lambda url: build_app(settings, url), settings)
    return 0


if __name__ == "__main__":
    from pscluster.cli import run_one_service

    sys.exit(run_one_service("ps", sys.argv[1:]))
