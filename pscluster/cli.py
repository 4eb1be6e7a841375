"""``pscluster``: run a whole local cluster (``up``) or one service (coordinator, ps, worker).

Service flags mirror the settings objects field for field; a flag wins over its environment
variable.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from pydantic_settings import BaseSettings

from pscluster.settings import (
    ENV_PREFIX,
    CoordinatorSettings,
    ShardSettings,
    WorkerSettings,
    load_settings,
)

SERVICES: dict[str, type[BaseSettings]] = {
    "coordinator": CoordinatorSettings,
    "ps": ShardSettings,
    "worker": WorkerSettings,
}


def add_settings_flags(parser: argparse.ArgumentParser, cls: type[BaseSettings]) -> None:
    """One ``--flag`` per settings field, documented with its variable and default."""
    for name, info in cls.model_fields.items():
        default = info.default
        shown = "unset" if default is None else getattr(default, "value", default)
        parser.add_argument(
            f"--{name.replace('_', '-')}",
            dest=name,
            default=argparse.SUPPRESS,
            metavar=name.split("_")[-1].upper(),
            help=f"{info.description} [env {ENV_PREFIX}{name.upper()}, default {shown}]",
        )


def settings_from_args(cls: type[BaseSettings], args: argparse.Namespace) -> Any:
    overrides = {name: value for name, value in vars(args).items() if name in cls.model_fields}
    return load_settings(cls, overrides)


def run_one_service(name: str, argv: Sequence[str]) -> int:
    cls = SERVICES[name]
    parser = argparse.ArgumentParser(
        prog=f"pscluster {name}",
        description=f"Run the {name} service. Every flag is also an environment variable.",
    )
    add_settings_flags(parser, cls)
    settings = settings_from_args(cls, parser.parse_args(argv))
    if name == "coordinator":
        from coordinator.__main__ import serve
    elif name == "ps":
        from ps_server.__main__ import serve
    else:
        from worker.__main__ import serve
    return serve(settings)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = ("up", *SERVICES)
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
        from pscluster.launcher import main as up

        return up(argv[1:])
    return run_one_service(argv[0], argv[1:])


if __name__ == "__main__":
    raise SystemExit(main())
