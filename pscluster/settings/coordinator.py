"""The coordinator's settings: the job, plus membership and evaluation."""

from __future__ import annotations

from typing import Self

from pydantic import Field, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from pscluster.datasets import DATASETS
from pscluster.models import resolve_model
from pscluster.settings.job import JobConfig
from pscluster.settings.service import ENV_PREFIX, ServiceSettings


class CoordinatorSettings(ServiceSettings, JobConfig):
    """The coordinator: membership, the job's life cycle, evaluation."""

    # An empty variable means "unset": compose passes ``${PSC_X:-}`` through as "".
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, extra="forbid", frozen=True, env_ignore_empty=True
    )

    eval_every: int = Field(
        25, ge=1, description="Evaluate on held-out data every this many steps."
    )
    heartbeat_lease_s: float = Field(
        5.0, gt=0, description="A worker silent this long is dropped from membership."
    )
    poll_interval_s: float = Field(
        0.2, gt=0, description="How often the coordinator checks shards and leases."
    )

    # The coordinator (and ``pscluster up``, which loads these settings before it starts anything)
    # resolves the names at start-up: a typo exits 2 with its message, not a traceback in a log
    # after the services started. Shards and workers take the job from the coordinator.
    @field_validator("model")
    @classmethod
    def _check_model(cls, value: str) -> str:
        resolve_model(value)
        return value

    @field_validator("dataset")
    @classmethod
    def _check_dataset(cls, value: str) -> str:
        if value not in DATASETS:
            raise ValueError(f"unknown dataset {value!r}; expected one of {', '.join(DATASETS)}")
        return value

    @model_validator(mode="after")
    def _check_timeouts(self) -> Self:
        if self.heartbeat_lease_s <= self.poll_interval_s:
            raise ValueError(
                f"PSC_HEARTBEAT_LEASE_S: a lease of {self.heartbeat_lease_s} s is checked only "
                f"every PSC_POLL_INTERVAL_S = {self.poll_interval_s} s; make the lease longer"
            )
        return self

    def job(self) -> JobConfig:
        return JobConfig.model_validate(self.model_dump(include=set(JobConfig.model_fields)))
