"""The job: what is trained and how, set on the coordinator and handed to every shard and worker."""

from __future__ import annotations

import math
from functools import cached_property
from typing import Any, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from pscluster.settings.choices import (
    AdamForm,
    DataMode,
    Mode,
    OptimizerName,
    SparseOptimizerName,
    StalenessPolicy,
    WireDtype,
)

# Defaults that depend on the mode (see JobConfig._per_mode); measured in docs/stragglers.md.
SYNC_STEPS = 300
SYNC_MOMENTUM = 0.9
ASYNC_MOMENTUM = 0.7
# Batch size by dataset (see JobConfig._per_dataset): a click log's signal is spread over many
# rare ids, so its steps take many impressions (measured in docs/sparse.md).
BATCH_SIZE = 32
CLICKS_BATCH_SIZE = 1024


class JobConfig(BaseModel):
    """What is trained and how: set on the coordinator, handed to every shard and worker."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    shards: int = Field(2, ge=1, le=256, description="Number of parameter-server shards (M).")
    workers: int = Field(4, ge=1, le=4096, description="Gradients to aggregate per sync step (N).")
    spares: int = Field(
        0, ge=0, le=4096, description="Spare replicas (k): N + k workers run, the fastest N count."
    )
    mode: Mode = Field(
        Mode.SYNC, description="Update mode: sync, async or ssp (bounded staleness)."
    )
    steps: int = Field(
        None,  # type: ignore[assignment]  # resolved per mode before validation: see _per_mode
        ge=1,
        description="Parameter updates (shard versions) to train for (unset: 300 in sync mode, "
        "300 x PSC_WORKERS in async and ssp: the same number of gradients).",
    )
    model: str = Field("mlp", description="softmax, mlp, or a user model as 'package.module:Name'.")
    hidden: str = Field("64", description="Hidden layer widths for mlp, comma separated (1 or 2).")
    dataset: str = Field("digits", description="digits, synthetic or clicks (a click log).")
    synthetic_samples: int = Field(10000, ge=10, description="Size of the synthetic dataset.")
    synthetic_features: int = Field(32, ge=1, description="Features of the synthetic dataset.")
    synthetic_classes: int = Field(10, ge=2, description="Classes of the synthetic dataset.")
    data_mode: DataMode = Field(DataMode.SAMPLE, description="shard or sample the training set.")
    batch_size: int = Field(
        None,  # type: ignore[assignment]  # resolved per dataset before validation
        ge=1,
        description="Mini-batch size per worker step (unset: 1024 for clicks, else 32).",
    )
    optimizer: OptimizerName = Field(OptimizerName.MOMENTUM, description="sgd, momentum or adam.")
    lr: float = Field(0.1, gt=0, description="Learning rate.")
    momentum: float = Field(
        None,  # type: ignore[assignment]  # resolved per mode before validation: see _per_mode
        ge=0,
        lt=1,
        description="Momentum coefficient (unset: 0.9 in sync mode, 0.7 in "
        "async and ssp, where staleness adds momentum of its own).",
    )
    beta1: float = Field(0.9, ge=0, lt=1, description="Adam's first-moment decay.")
    beta2: float = Field(0.999, ge=0, lt=1, description="Adam's second-moment decay.")
    adam_form: AdamForm = Field(
        AdamForm.TORCH,
        description="Adam's update: torch (textbook, as torch.optim.Adam: lr (m/c1) / "
        "(sqrt(v/c2) + eps)) or keras (the eps-hat form: lr sqrt(c2)/c1 m / (sqrt(v) + eps)).",
    )
    seed: int = Field(0, ge=0, description="Seed for parameters, data split and batches.")
    max_staleness: int | None = Field(
        None, ge=0, description="async: drop gradients staler than this (unset: never drop)."
    )
    staleness_policy: StalenessPolicy = Field(
        StalenessPolicy.NONE, description="async: scale by none, inverse or inverse_plus_one."
    )
    lr_divide_by_workers: bool = Field(
        False, description="async: divide the learning rate by the number of workers."
    )
    warmup_steps: int = Field(
        0, ge=0, description="async: updates during which only rank 0 trains (Dean et al. 2012)."
    )
    ssp_bound: int = Field(
        2,
        ge=0,
        description="ssp: a worker starts step c only once every live worker has finished "
        "step c - S - 1 (S counts worker steps).",
    )
    deadline: str = Field(
        "none",
        description="sync: none, auto (adapted to recent arrival times) or S seconds after a "
        "step's first gradient; then the step closes with PSC_MIN_GRADIENTS.",
    )
    min_gradients: int | None = Field(
        None,
        ge=1,
        description="sync: gradients a step needs to close at its deadline (unset: ceil(N/2)).",
    )
    push_wait_s: float = Field(
        30.0,
        gt=0,
        description="sync: longest a shard holds a push reply waiting for the step (ssp: for "
        "the slowest worker to catch up; then the worker asks again).",
    )
    checkpoint_every: int = Field(
        50, ge=0, description="Shards checkpoint every this many versions (0: only on stop)."
    )
    admit_after: int = Field(
        1,
        ge=1,
        description="Sparse tables: a row is created by the push that names its id for the "
        "n-th time; until then pulls get zeros and its gradients are dropped (1: admission off).",
    )
    evict_after: int = Field(
        0, ge=0, description="Sparse tables: drop rows untouched for this many versions (0: off)."
    )
    table_capacity: int | None = Field(
        None,
        ge=1,
        description="Sparse tables: rows a table keeps per shard, least recently updated "
        "evicted beyond (unset: the model's own capacity, or unbounded).",
    )
    sparse_optimizer: SparseOptimizerName = Field(
        SparseOptimizerName.ADAGRAD, description="Sparse tables' per-row optimizer: sgd or adagrad."
    )
    sparse_lr: float = Field(0.08, gt=0, description="Sparse tables' learning rate.")
    wire_dtype: WireDtype = Field(
        WireDtype.FLOAT32,
        description="Gradients and parameters on the wire: float32, float16 or bfloat16 (half "
        "the bytes; shards still sum and update in float32).",
    )

    @model_validator(mode="before")
    @classmethod
    def _per_mode(cls, data: Any) -> Any:
        """Fill in the defaults that depend on the mode (and on N): async applies one
        gradient per step, so it runs N times the steps, and its staleness acts as momentum
        (Mitliagkas et al. 2016), so it defaults to less of it."""
        if not isinstance(data, dict):
            return data
        mode, workers = data.get("mode", Mode.SYNC), data.get("workers", 4)
        try:
            arrival = Mode(mode).applies_on_arrival
            workers = int(workers)
        except ValueError:
            return data  # the fields' own validation reports it
        data = dict(data)
        if data.get("steps") is None:
            data["steps"] = SYNC_STEPS * workers if arrival else SYNC_STEPS
        if data.get("momentum") is None:
            data["momentum"] = ASYNC_MOMENTUM if arrival else SYNC_MOMENTUM
        if data.get("batch_size") is None:
            clicks = data.get("dataset") == "clicks"
            data["batch_size"] = CLICKS_BATCH_SIZE if clicks else BATCH_SIZE
        return data

    @model_validator(mode="after")
    def _check_job(self) -> Self:
        if self.mode.applies_on_arrival and self.spares:
            raise ValueError("PSC_SPARES: spare replicas only apply to sync mode; set it to 0")
        try:
            parse_deadline(self.deadline)
        except ValueError as exc:
            raise ValueError(f"PSC_DEADLINE: {exc}") from None
        if self.mode.applies_on_arrival:
            sync_only = {
                "PSC_DEADLINE": parse_deadline(self.deadline) is not None,
                "PSC_MIN_GRADIENTS": self.min_gradients is not None,
            }
            for variable, is_set in sync_only.items():
                if is_set:
                    raise ValueError(f"{variable}: applies to sync mode only (PSC_MODE=sync)")
        if self.mode is Mode.SYNC:
            # Stale-gradient control means nothing where every gradient is fresh; refusing it
            # beats a user believing a setting is in force.
            async_only = {
                "PSC_MAX_STALENESS": self.max_staleness is not None,
                "PSC_STALENESS_POLICY": self.staleness_policy is not StalenessPolicy.NONE,
                "PSC_LR_DIVIDE_BY_WORKERS": self.lr_divide_by_workers,
                "PSC_WARMUP_STEPS": self.warmup_steps > 0,
            }
            for variable, is_set in async_only.items():
                if is_set:
                    raise ValueError(
                        f"{variable}: applies to async and ssp modes only (PSC_MODE=async)"
                    )
        if self.mode is Mode.SSP and self.warmup_steps:
            # Warmup holds every rank but one still: their clocks would stop and the bound
            # would then hold the leader too.
            raise ValueError("PSC_WARMUP_STEPS: applies to async mode, not ssp; set it to 0")
        if self.mode.applies_on_arrival and self.warmup_steps >= self.steps:
            raise ValueError(
                f"PSC_WARMUP_STEPS: {self.warmup_steps} warmup updates leave none of the "
                f"{self.steps} PSC_STEPS to the other replicas; make it smaller than PSC_STEPS"
            )
        parse_hidden(self.hidden)
        return self

    @property
    def hidden_sizes(self) -> tuple[int, ...]:
        return parse_hidden(self.hidden)

    # Cached: a shard reads both on every sync push (the settings are frozen).
    @cached_property
    def deadline_value(self) -> float | str | None:
        """None (no deadline), "auto", or a fixed number of seconds."""
        return parse_deadline(self.deadline)

    @cached_property
    def min_gradients_value(self) -> int:
        """Gradients a sync step needs to close at its deadline: ceil(N / 2) unless set."""
        if self.min_gradients is not None:
            return self.min_gradients
        return max(1, math.ceil(self.workers / 2))

    @property
    def world(self) -> int:
        """Worker replicas that run: N + k."""
        return self.workers + self.spares


def parse_deadline(text: str) -> float | str | None:
    """'none' -> None, 'auto' -> 'auto', 'S' -> S seconds (> 0); else ValueError."""
    value = text.strip().lower()
    if value == "none":
        return None
    if value == "auto":
        return "auto"
    try:
        seconds = float(value)
    except ValueError:
        raise ValueError(f"{text!r} is not none, auto or a number of seconds") from None
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"{text!r}: a fixed deadline must be a positive number of seconds")
    return seconds


def divergence_warnings(job: JobConfig) -> list[str]:
    """Settings measured to diverge: they may run, but the coordinator logs these."""
    warnings = []
    if (
        job.mode.applies_on_arrival
        and job.optimizer is OptimizerName.MOMENTUM
        and job.momentum >= 0.9
        and job.lr >= 0.1
    ):
        warnings.append(
            f"PSC_MOMENTUM={job.momentum} with PSC_LR={job.lr} in {job.mode.value} mode diverged "
            f"with 4 workers (held-out accuracy 0.13-0.23); the {job.mode.value} default is "
            f"PSC_MOMENTUM={ASYNC_MOMENTUM}"
        )
    return warnings


def parse_hidden(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise ValueError(f"PSC_HIDDEN: {text!r} is not comma-separated integers") from None
    if any(size < 1 for size in sizes):
        raise ValueError(f"PSC_HIDDEN: widths must be positive, got {text!r}")
    return sizes
