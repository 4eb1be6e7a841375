"""One parameter-server shard's settings."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from pydantic import Field, model_validator

from pscluster.settings.service import ServiceSettings


class ShardSettings(ServiceSettings):
    """One parameter-server shard."""

    port: int = Field(0, ge=0, le=65535, description="Port to listen on; 0 picks a free one.")
    data_port: int = Field(
        0,
        ge=0,
        le=65535,
        description="Port of the data plane (pushes and pulls on persistent connections); 0 "
        "picks a free one.",
    )
    coordinator_url: str = Field(
        "http://127.0.0.1:7000", description="Where the coordinator listens."
    )
    shard_index: int = Field(0, ge=0, description="This shard's index, 0 .. M-1.")
    shard_name: str | None = Field(
        None,
        description="A StatefulSet pod's name (pscluster-ps-3): its trailing ordinal is the "
        "shard index.",
    )
    max_body_mb: float = Field(512.0, gt=0, description="Largest request body accepted, in MiB.")
    register_interval_s: float = Field(
        2.0, gt=0, description="How often the shard re-announces itself to the coordinator."
    )
    request_timeout_s: float = Field(10.0, gt=0, description="Timeout of calls to the coordinator.")
    checkpoint_dir: Path | None = Field(
        None, description="Directory for this shard's checkpoints (unset: no checkpoints)."
    )
    max_inflight_pushes: int = Field(
        256, ge=1, description="Pushes handled at once; more are refused 'busy' (memory cap)."
    )

    @model_validator(mode="before")
    @classmethod
    def _index_from_name(cls, values: Any) -> Any:
        # Kubernetes passes the pod's name (downward API), never the ordinal itself: the index
        # is read from the name the StatefulSet gave the pod, not guessed from a hostname.
        if not isinstance(values, dict) or values.get("shard_name") in (None, ""):
            return values
        index = shard_index_from_name(str(values["shard_name"]))
        given = values.get("shard_index")
        if given not in (None, "") and int(given) != index:
            raise ValueError(
                f"PSC_SHARD_INDEX: {given} disagrees with PSC_SHARD_NAME "
                f"{values['shard_name']!r} (index {index}); set only one of them"
            )
        return {**values, "shard_index": index}


def shard_index_from_name(name: str) -> int:
    """The ordinal a StatefulSet appends to its pods' names: ``pscluster-ps-3`` -> 3."""
    match = re.fullmatch(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?-(\d+)", name)
    if match is None:
        raise ValueError(
            f"PSC_SHARD_NAME: {name!r} does not end in '-<ordinal>' as a StatefulSet pod's "
            "name does"
        )
    return int(match.group(2))
