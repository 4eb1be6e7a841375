"""One parameter-server shard's settings."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from pscluster.settings.service import ServiceSettings


class ShardSettings(ServiceSettings):
    """One parameter-server shard."""

    port: int = Field(0, ge=0, le=65535, description="Port to listen on; 0 picks a free one.")
    coordinator_url: str = Field(
        "http://127.0.0.1:7000", description="Where the coordinator listens."
    )
    shard_index: int = Field(0, ge=0, description="This shard's index, 0 .. M-1.")
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
