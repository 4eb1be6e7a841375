"""The README's tables of settings, generated from the settings objects so they never disagree.

``python -m pscluster.settings_doc`` prints the tables; ``--write README.md`` puts them between
the README's markers, ``--check README.md`` exits 1 when the README is out of date.
"""

from __future__ import annotations

import argparse
import sys
import types
from collections.abc import Sequence
from enum import Enum
from pathlib import Path
from typing import Any, Union, get_args, get_origin

import annotated_types
from pydantic import BaseModel, SecretStr
from pydantic.fields import FieldInfo

from pscluster.settings import (
    ENV_PREFIX,
    CoordinatorSettings,
    JobConfig,
    ServiceSettings,
    ShardSettings,
    WorkerSettings,
)

BEGIN = "<!-- settings:begin -->"
END = "<!-- settings:end -->"

# (heading, settings class, the class whose fields it leaves to another table, intro)
SECTIONS: list[tuple[str, type[BaseModel], tuple[type[BaseModel], ...], str]] = [
    (
        "Every service",
        ServiceSettings,
        (),
        "`pscluster coordinator`, `pscluster ps` and `pscluster worker` (and `python -m "
        "coordinator|ps_server|worker`) all read these.",
    ),
    (
        "Coordinator: the job",
        JobConfig,
        (),
        "What is trained and how. Set on the coordinator only (and as flags of `pscluster up`); "
        "shards and workers receive the job when they register.",
    ),
    (
        "Coordinator",
        CoordinatorSettings,
        (ServiceSettings, JobConfig),
        "The coordinator's own settings (`pscluster up` takes them as flags too).",
    ),
    ("Parameter-server shard", ShardSettings, (ServiceSettings,), "`pscluster ps`."),
    ("Worker", WorkerSettings, (ServiceSettings,), "`pscluster worker`."),
]


def env_name(field: str) -> str:
    return f"{ENV_PREFIX}{field.upper()}"


def flag_name(field: str) -> str:
    return f"--{field.replace('_', '-')}"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _type_name(annotation: Any) -> str:
    """A readable type; ``X | None`` reads as X (its default, "unset", says the rest)."""
    if get_origin(annotation) in (Union, types.UnionType):
        members = [a for a in get_args(annotation) if a is not type(None)]
        return _type_name(members[0]) if len(members) == 1 else "value"
    if isinstance(annotation, type) and issubclass(annotation, Enum):
        return " | ".join(f"`{member.value}`" for member in annotation)
    names = {
        int: "int",
        float: "float",
        str: "string",
        bool: "bool",
        Path: "path",
        SecretStr: "secret",
    }
    return names.get(annotation, getattr(annotation, "__name__", str(annotation)))


def _bounds(info: FieldInfo) -> str:
    parts = []
    for item in info.metadata:
        for kind, symbol in (
            (annotated_types.Ge, "≥"),
            (annotated_types.Gt, ">"),
            (annotated_types.Le, "≤"),
            (annotated_types.Lt, "<"),
        ):
            if isinstance(item, kind):
                value = getattr(item, kind.__name__.lower())
                parts.append(f"{symbol} {value}")
    return ", ".join(parts)


def _default(value: Any) -> str:
    if value is None:
        return "unset"
    if isinstance(value, Enum):
        value = value.value
    if isinstance(value, bool):
        value = "true" if value else "false"
    return f"`{value}`"


def field_row(name: str, info: FieldInfo) -> str:
    kind = _type_name(info.annotation)
    bounds = _bounds(info)
    shown_type = f"{kind} ({bounds})" if bounds else kind
    variable = f"`{env_name(name)}` `{flag_name(name)}`"
    default = _default(info.default)
    return (
        f"| {variable} | {_cell(shown_type)} | {_cell(default)} | {_cell(info.description or '')} |"
    )


def section_fields(
    cls: type[BaseModel], covered: tuple[type[BaseModel], ...]
) -> list[tuple[str, FieldInfo]]:
    """``cls``'s fields, less those another table documents identically."""
    rows = []
    for name, info in cls.model_fields.items():
        inherited = [base.model_fields[name] for base in covered if name in base.model_fields]
        if inherited and all(
            base.default == info.default and base.description == info.description
            for base in inherited
        ):
            continue
        rows.append((name, info))
    return rows


def settings_tables() -> str:
    """The Markdown that goes between the README's markers."""
    lines = [
        "Each variable has a flag of the same name (`PSC_BATCH_SIZE` is `--batch-size`); "
        "the flag wins. An empty variable counts as unset. Invalid values stop the service at "
        "start with a message naming the variable, and exit code 2.",
    ]
    for heading, cls, covered, intro in SECTIONS:
        lines += [
            "",
            f"### {heading}",
            "",
            intro,
            "",
            "| variable, flag | type | default | meaning |",
            "|---|---|---|---|",
            *(field_row(name, info) for name, info in section_fields(cls, covered)),
        ]
    return "\n".join(lines) + "\n"


def readme_block(text: str) -> str:
    """What lies between the markers (without them)."""
    start, end = text.find(BEGIN), text.find(END)
    if start < 0 or end < start:
        raise ValueError(f"the README has no {BEGIN} ... {END} block")
    return text[start + len(BEGIN) : end].strip("\n") + "\n"


def replace_block(text: str, block: str) -> str:
    start, end = text.find(BEGIN), text.find(END)
    if start < 0 or end < start:
        raise ValueError(f"the README has no {BEGIN} ... {END} block")
    return f"{text[: start + len(BEGIN)]}\n{block.strip(chr(10))}\n{text[end:]}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pscluster.settings_doc",
        description="Print the settings tables; or check or rewrite the README's copy.",
    )
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--check", type=Path, metavar="README", help="Exit 1 if out of date.")
    group.add_argument("--write", type=Path, metavar="README", help="Rewrite its settings block.")
    args = parser.parse_args(argv)
    tables = settings_tables()
    if args.check:
        if readme_block(args.check.read_text()) != tables:
            print(
                f"{args.check}: the settings tables are out of date; run "
                f"python -m pscluster.settings_doc --write {args.check}",
                file=sys.stderr,
            )
            return 1
        return 0
    if args.write:
        args.write.write_text(replace_block(args.write.read_text(), tables))
        return 0
    sys.stdout.write(tables)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
