"""One declarative settings object per service: the single source of truth.

Every field is an environment variable ``PSC_<FIELD>`` with a documented default; command-line
flags ``--field-name`` mirror them and win over the environment. The README's table is generated
from these classes (``python -m pscluster.settings_doc``), so the two never disagree.

The job itself (model, data, mode, N, k, optimizer, steps) is configured on the coordinator only;
shards and workers receive it when they register, so a cluster cannot run with two opinions of
what it is training.
"""

from __future__ import annotations

import os
import sys
from enum import StrEnum
from pathlib import Path
from typing import Any, NoReturn, Self, TypeVar

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

ENV_PREFIX = "PSC_"

# Longest a worker's pull asks a shard to hold it waiting for a newer version (seconds); a
# worker's request timeout must be longer, or every long-poll would time out.
PULL_LONG_POLL_S = 10.0


class Mode(StrEnum):
    SYNC = "sync"
    ASYNC = "async"


class OptimizerName(StrEnum):
    SGD = "sgd"
    MOMENTUM = "momentum"
    ADAM = "adam"


class StalenessPolicy(StrEnum):
    NONE = "none"  # apply stale gradients at full strength
    INVERSE = "inverse"  # scale by 1/staleness for staleness >= 1 (Zhang et al. 2016)
    INVERSE_PLUS_ONE = "inverse_plus_one"  # scale by 1/(1 + staleness)


class DataMode(StrEnum):
    SHARD = "shard"  # each worker walks its own disjoint part of the training set
    SAMPLE = "sample"  # each worker samples batches from the whole training set


class DelayKind(StrEnum):
    NONE = "none"
    FIXED = "fixed"  # every step sleeps delay_s * delay_factor
    EXPONENTIAL = "exponential"  # shifted exponential: delay_s * factor * (1 + Exp(1))
    LONG_TAIL = "long_tail"  # usually delay_s * factor, with probability 5% twenty times that


class WireDtype(StrEnum):
    FLOAT32 = "float32"  # exact
    FLOAT16 = "float16"  # half the bytes; 11-bit mantissa, range +-65504
    BFLOAT16 = "bfloat16"  # half the bytes; float32's range, 8-bit mantissa


class Backend(StrEnum):
    AUTO = "auto"  # CuPy when it and a GPU are present, NumPy otherwise
    NUMPY = "numpy"
    CUPY = "cupy"


class ServiceSettings(BaseSettings):
    """What every service has: where it listens and how it finds the cluster."""

    # An empty variable means "unset": compose passes ``${PSC_X:-}`` through as "".
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, extra="forbid", frozen=True, env_ignore_empty=True
    )

    host: str = Field("127.0.0.1", description="Address to listen on.")
    port: int = Field(0, ge=0, le=65535, description="Port to listen on; 0 picks a free one.")
    ready_file: Path | None = Field(
        None, description="Once listening, write the service's URL to this file (for launchers)."
    )
    advertise_url: str | None = Field(
        None, description="URL others use to reach this service; default http://HOST:PORT."
    )
    log_level: str = Field("INFO", description="Python logging level.")
    token: SecretStr | None = Field(
        None, description="Cluster token: required as 'Authorization: Bearer' on every call."
    )
    token_file: Path | None = Field(
        None, description="Read the cluster token from this file (a compose secret)."
    )
    insecure: bool = Field(
        False, description="Run without a cluster token: anyone who reaches the port can train."
    )
    fault_kill_at: int | None = Field(
        None, description="Fault injection (tests): SIGKILL this process once at this step."
    )
    fault_marker: Path | None = Field(
        None, description="Fault injection: file recording that the fault fired (fires once)."
    )

    @model_validator(mode="after")
    def _check_token(self) -> Self:
        if self.token_file is not None and self.token is None:
            if not self.token_file.is_file():
                raise ValueError(f"PSC_TOKEN_FILE: {self.token_file} is not a readable file")
            if not self.token_file.read_text().strip():
                raise ValueError(f"PSC_TOKEN_FILE: {self.token_file} is empty")
        if self.token is None and self.token_file is None and not self.insecure:
            raise ValueError(
                "PSC_TOKEN: a cluster token is required (PSC_TOKEN or PSC_TOKEN_FILE); set "
                "PSC_INSECURE=true to run without one on a trusted network"
            )
        return self

    def cluster_token(self) -> str | None:
        """The token every call must carry; None when running insecure."""
        if self.token is not None:
            return self.token.get_secret_value()
        if self.token_file is not None:
            return self.token_file.read_text().strip()
        return None


class JobConfig(BaseModel):
    """What is trained and how: set on the coordinator, handed to every shard and worker."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    shards: int = Field(2, ge=1, le=256, description="Number of parameter-server shards (M).")
    workers: int = Field(4, ge=1, le=4096, description="Gradients to aggregate per sync step (N).")
    spares: int = Field(
        0, ge=0, le=4096, description="Spare replicas (k): N + k workers run, the fastest N count."
    )
    mode: Mode = Field(Mode.SYNC, description="Update mode: sync or async.")
    steps: int = Field(300, ge=1, description="Parameter updates (shard versions) to train for.")
    model: str = Field("mlp", description="softmax, mlp, or a user model as 'package.module:Name'.")
    hidden: str = Field("64", description="Hidden layer widths for mlp, comma separated (1 or 2).")
    dataset: str = Field("digits", description="digits or synthetic.")
    synthetic_samples: int = Field(10000, ge=10, description="Size of the synthetic dataset.")
    synthetic_features: int = Field(32, ge=1, description="Features of the synthetic dataset.")
    synthetic_classes: int = Field(10, ge=2, description="Classes of the synthetic dataset.")
    data_mode: DataMode = Field(DataMode.SAMPLE, description="shard or sample the training set.")
    batch_size: int = Field(32, ge=1, description="Mini-batch size per worker step.")
    optimizer: OptimizerName = Field(OptimizerName.MOMENTUM, description="sgd, momentum or adam.")
    lr: float = Field(0.1, gt=0, description="Learning rate.")
    momentum: float = Field(0.9, ge=0, lt=1, description="Momentum coefficient (momentum).")
    beta1: float = Field(0.9, ge=0, lt=1, description="Adam's first-moment decay.")
    beta2: float = Field(0.999, ge=0, lt=1, description="Adam's second-moment decay.")
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
    push_wait_s: float = Field(
        30.0, gt=0, description="sync: longest a shard holds a push reply waiting for the step."
    )
    checkpoint_every: int = Field(
        50, ge=0, description="Shards checkpoint every this many versions (0: only on stop)."
    )
    wire_dtype: WireDtype = Field(
        WireDtype.FLOAT32,
        description="Gradients and parameters on the wire: float32, float16 or bfloat16 (half "
        "the bytes; shards still sum and update in float32).",
    )

    @model_validator(mode="after")
    def _check_job(self) -> Self:
        if self.mode is Mode.ASYNC and self.spares:
            raise ValueError("PSC_SPARES: spare replicas only apply to sync mode; set it to 0")
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
                    raise ValueError(f"{variable}: applies to async mode only (PSC_MODE=async)")
        if self.mode is Mode.ASYNC and self.warmup_steps >= self.steps:
            raise ValueError(
                f"PSC_WARMUP_STEPS: {self.warmup_steps} warmup updates leave none of the "
                f"{self.steps} PSC_STEPS to the other replicas; make it smaller than PSC_STEPS"
            )
        parse_hidden(self.hidden)
        return self

    @property
    def hidden_sizes(self) -> tuple[int, ...]:
        return parse_hidden(self.hidden)

    @property
    def world(self) -> int:
        """Worker replicas that run: N + k."""
        return self.workers + self.spares


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


def parse_hidden(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise ValueError(f"PSC_HIDDEN: {text!r} is not comma-separated integers") from None
    if any(size < 1 for size in sizes):
        raise ValueError(f"PSC_HIDDEN: widths must be positive, got {text!r}")
    return sizes


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


class WorkerSettings(ServiceSettings):
    """One worker replica."""

    coordinator_url: str = Field(
        "http://127.0.0.1:7000", description="Where the coordinator listens."
    )
    worker_id: str | None = Field(
        None, description="Stable name of this worker; default hostname-pid."
    )
    rank: int | None = Field(
        None, ge=0, description="Rank to ask the coordinator for (unset: the lowest free one)."
    )
    backend: Backend = Field(Backend.AUTO, description="Array backend: auto, numpy or cupy.")
    delay: DelayKind = Field(
        DelayKind.NONE, description="Straggler simulation: none, fixed, exponential, long_tail."
    )
    delay_s: float = Field(0.0, ge=0, description="Base of the simulated per-step delay, seconds.")
    delay_factor: float = Field(
        1.0, ge=0, description="This worker's slowdown: its delays are multiplied by it."
    )
    heartbeat_interval_s: float = Field(
        0.5, gt=0, description="How often the worker reports to the coordinator."
    )
    request_timeout_s: float = Field(
        60.0, gt=0, description="Timeout of one pull or push (covers a sync step's wait)."
    )
    register_timeout_s: float = Field(
        120.0, gt=0, description="Give up if the cluster is not ready within this time."
    )

    @model_validator(mode="after")
    def _check_timeouts(self) -> Self:
        if self.request_timeout_s <= PULL_LONG_POLL_S:
            raise ValueError(
                f"PSC_REQUEST_TIMEOUT_S: {self.request_timeout_s} s would cut short the "
                f"{PULL_LONG_POLL_S} s long-poll of a pull; make it longer"
            )
        return self

    def check_job(self, job: JobConfig) -> None:
        """Refuse a job this worker's timeouts contradict (call it once registered).

        In sync mode a shard holds a push's reply up to ``push_wait_s`` for the step to complete;
        a request timeout shorter than that turns every slow step into a timeout and a retry.
        """
        if job.mode is Mode.SYNC and self.request_timeout_s <= job.push_wait_s:
            raise ValueError(
                f"PSC_REQUEST_TIMEOUT_S: {self.request_timeout_s} s is not longer than the "
                f"{job.push_wait_s} s a shard may hold a sync push (the job's PSC_PUSH_WAIT_S)"
            )


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
    print("\n".join(lines), file=sys.stderr)
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
