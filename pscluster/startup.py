"""Starting one service from the command line: flags that mirror its settings, then serve.

Shared by every service's ``__main__`` (``python -m ps_server`` ...) and by the ``pscluster``
command, so a flag means the same wherever it is given. A flag wins over its environment variable.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Collection, Sequence
from typing import TypeVar

from pydantic_settings import BaseSettings

from pscluster.settings import ENV_PREFIX, load_settings

SettingsT = TypeVar("SettingsT", bound=BaseSettings)


def add_settings_flags(
    parser: argparse.ArgumentParser,
    cls: type[BaseSettings],
    only: Collection[str] | None = None,
) -> None:
    """One ``--flag`` per settings field (of those named in ``only``, if given), documented with
    its variable and default."""
    for name, info in cls.model_fields.items():
        if only is not None and name not in only:
            continue
        default = info.default
        shown = "unset" if default is None else getattr(default, "value", default)
        parser.add_argument(
            f"--{name.replace('_', '-')}",
            dest=name,
            default=argparse.SUPPRESS,
            metavar=name.split("_")[-1].upper(),
            help=f"{info.description} [env {ENV_PREFIX}{name.upper()}, default {shown}]",
        )


def settings_from_args(cls: type[SettingsT], args: argparse.Namespace) -> SettingsT:
    overrides = {name: value for name, value in vars(args).items() if name in cls.model_fields}
    return load_settings(cls, overrides)


def run_one_service(
    name: str, cls: type[SettingsT], serve: Callable[[SettingsT], int], argv: Sequence[str]
) -> int:
    """Parse ``argv`` as ``cls``'s flags (over the environment), then ``serve`` the settings."""
    parser = argparse.ArgumentParser(
        prog=f"pscluster {name}",
        description=f"Run the {name} service. Every flag is also an environment variable.",
    )
    add_settings_flags(parser, cls)
    return serve(settings_from_args(cls, parser.parse_args(argv)))
