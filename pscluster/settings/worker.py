"""One worker replica's settings."""

from __future__ import annotations

from typing import Self

from pydantic import Field, model_validator

from pscluster.settings.choices import Backend, DelayKind, Mode
from pscluster.settings.job import JobConfig
from pscluster.settings.service import ServiceSettings
from pscluster.settings.timeouts import PULL_LONG_POLL_S


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
    backend: Backend = Field(
        Backend.AUTO,
        description="Array backend: auto, numpy or cupy. A PyTorch model: auto is CUDA when "
        "torch.cuda.is_available(), else the CPU; numpy the CPU; cupy CUDA.",
    )
    torch_threads: int = Field(
        1,
        ge=1,
        description="A PyTorch model's CPU threads in this worker (torch.set_num_threads): 1 "
        "never oversubscribes a host running several workers; pscluster up sets cores / (N + k).",
    )
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

        In sync mode a shard holds a push's reply up to ``push_wait_s`` for the step to complete
        (in ssp mode, for the slowest worker to catch up);
        a request timeout shorter than that turns every slow step into a timeout and a retry.
        """
        if job.mode is not Mode.ASYNC and self.request_timeout_s <= job.push_wait_s:
            raise ValueError(
                f"PSC_REQUEST_TIMEOUT_S: {self.request_timeout_s} s is not longer than the "
                f"{job.push_wait_s} s a shard may hold a sync push (the job's PSC_PUSH_WAIT_S)"
            )
