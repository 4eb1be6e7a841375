"""``python -m ps_server``: read settings, build the app, serve until SIGTERM."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from ps_server.app import build_app
from pscluster.service import run_service
from pscluster.settings import ShardSettings
from pscluster.startup import run_one_service


def serve(settings: ShardSettings) -> int:
    run_service(lambda url: build_app(settings, url), settings)
    return 0


def main(argv: Sequence[str]) -> int:
    return run_one_service("ps", ShardSettings, serve, argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
