"""Loading settings at start-up: from the environment and flags, or exit 2 naming each bad
variable."""

from __future__ import annotations

import os
import sys
from typing import Any, NoReturn, TypeVar

from pydantic import ValidationError
from pydantic_settings import BaseSettings

from pscluster.settings.service import ENV_PREFIX

SettingsT = TypeVar("SettingsT", bound=BaseSettings)


def settings_error_exit(exc: ValidationError, cls: type[BaseSettings]) -> NoReturn:
    """Print a start-up error that names each bad variable, then exit 2."""
    lines = [f"error: invalid {cls.__name__}:"]
    for error in exc.errors():
        message = error["msg"].removeprefix("Value error, ")
        if not error["loc"]:
            # A check across fields: its message starts with the variable to change.
            lines.append(f"  {message}")
            continue
        # The field alone: a union's member (``loc`` = (field, "int")) is no variable name.
        variable = f"{ENV_PREFIX}{str(error['loc'][0]).upper()}"
        value = error.get("input")
        shown = "" if isinstance(value, dict) else f" (got {value!r})"
        lines.append(f"  {variable}: {message}{shown}")
    # One bad variable, one line: what a log collector under compose or Kubernetes shows whole.
    text = f"{lines[0]} {lines[1].strip()}" if len(lines) == 2 else "\n".join(lines)
    print(text, file=sys.stderr)
    raise SystemExit(2)


def unknown_variables(cls: type[BaseSettings], environ: dict[str, str] | None = None) -> list[str]:
    """``PSC_*`` variables that are no field of ``cls``: typos, or meant for another service."""
    environ = dict(os.environ) if environ is None else environ
    return sorted(
        name
        for name in environ
        if name.upper().startswith(ENV_PREFIX)
        and name[len(ENV_PREFIX) :].lower() not in cls.model_fields
    )


def load_settings(cls: type[SettingsT], overrides: dict[str, Any] | None = None) -> SettingsT:
    """Settings from the environment and ``overrides`` (flags); exit 2 with a clear message."""
    for name in unknown_variables(cls):
        print(f"warning: {name} is not a setting of {cls.__name__}; ignored", file=sys.stderr)
    try:
        return cls(**(overrides or {}))
    except ValidationError as exc:
        settings_error_exit(exc, cls)
