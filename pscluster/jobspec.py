"""What the coordinator hands a shard or worker when it registers: the job and the shard map."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pscluster.models.sparse import TableSpec
from pscluster.settings import JobConfig
from pscluster.sharding import Part, ShardMap


@dataclass(frozen=True)
class Registration:
    job: JobConfig
    n_features: int
    n_classes: int
    shard_map: ShardMap
    shard_urls: list[str | None]  # None: that shard has not registered yet
    # Each shard's data port (tcp://host:port), where pushes and pulls go; None: not known yet.
    shard_data_urls: list[str | None] = field(default_factory=list)
    rank: int = -1  # workers only
    worker_id: str = ""
    # The model's embedding tables (none for a dense model), for shards that build no model.
    tables: tuple[TableSpec, ...] = ()

    @property
    def world(self) -> int:
        return self.job.workers + self.job.spares

    def to_json(self) -> dict[str, Any]:
        return {
            "job": self.job.model_dump(mode="json"),
            "n_features": self.n_features,
            "n_classes": self.n_classes,
            "shard_map": [[part.to_json() for part in parts] for parts in self.shard_map],
            "shard_urls": self.shard_urls,
            "shard_data_urls": self.shard_data_urls,
            "rank": self.rank,
            "worker_id": self.worker_id,
            "tables": [table.to_json() for table in self.tables],
        }

    @staticmethod
    def from_json(data: dict[str, Any]) -> Registration:
        return Registration(
            job=JobConfig.model_validate(data["job"]),
            n_features=int(data["n_features"]),
            n_classes=int(data["n_classes"]),
            shard_map=[[Part.from_json(p) for p in parts] for parts in data["shard_map"]],
            shard_urls=list(data["shard_urls"]),
            shard_data_urls=list(data.get("shard_data_urls", [])),
            rank=int(data.get("rank", -1)),
            worker_id=str(data.get("worker_id", "")),
            tables=tuple(TableSpec.from_json(t) for t in data.get("tables", [])),
        )
