"""Defaults per mode (async trains with less momentum and N times the steps), the sync
deadline's settings, and the warning for settings measured to diverge."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from pscluster.settings import CoordinatorSettings, JobConfig, Mode
from pscluster.settings.job import ASYNC_MOMENTUM, divergence_warnings


def test_sync_defaults_are_unchanged() -> None:
    job = JobConfig()
    assert (job.mode, job.steps, job.momentum, job.lr) == (Mode.SYNC, 300, 0.9, 0.1)
    assert job.deadline_value is None
    assert job.min_gradients_value == 2  # ceil(4 / 2)


@pytest.mark.parametrize("mode", ["async", "ssp"])
def test_async_and_ssp_defaults_scale_with_the_workers(mode: str) -> None:
    job = JobConfig(mode=mode, workers=8)
    assert job.steps == 8 * 300
    assert job.momentum == ASYNC_MOMENTUM == 0.7
    assert divergence_warnings(job) == []


def test_explicit_values_win_over_the_mode_defaults() -> None:
    job = JobConfig(mode="async", steps=50, momentum=0.3)
    assert (job.steps, job.momentum) == (50, 0.3)


def test_the_environment_gets_the_same_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PSC_MODE", "async")
    monkeypatch.setenv("PSC_WORKERS", "3")
    monkeypatch.setenv("PSC_MOMENTUM", "")  # compose passes unset variables as ""
    job = CoordinatorSettings(insecure=True).job()
    assert (job.steps, job.momentum) == (900, 0.7)
    # what a shard and a worker receive is the resolved job, unchanged
    assert JobConfig.model_validate(job.model_dump(mode="json")) == job


def test_explicit_diverging_async_momentum_warns_naming_the_setting() -> None:
    (warning,) = divergence_warnings(JobConfig(mode="async", momentum=0.9))
    assert "PSC_MOMENTUM=0.9" in warning and "PSC_LR=0.1" in warning
    assert divergence_warnings(JobConfig(mode="async", momentum=0.9, lr=0.05)) == []
    assert divergence_warnings(JobConfig(mode="sync", momentum=0.9)) == []
    assert divergence_warnings(JobConfig(mode="async", momentum=0.95, lr=0.2)) != []


def test_deadline_settings() -> None:
    assert JobConfig(deadline="auto").deadline_value == "auto"
    assert JobConfig(deadline="0.05", min_gradients=3).deadline_value == 0.05
    assert JobConfig(workers=5).min_gradients_value == 3
    with pytest.raises(ValidationError, match="PSC_DEADLINE"):
        JobConfig(deadline="soon")
    with pytest.raises(ValidationError, match="PSC_DEADLINE: applies to sync"):
        JobConfig(mode="async", deadline="auto")
    with pytest.raises(ValidationError, match="PSC_SPARES"):
        JobConfig(mode="ssp", spares=1)
    with pytest.raises(ValidationError, match="PSC_WARMUP_STEPS"):
        JobConfig(mode="ssp", warmup_steps=10)
    # stale-gradient control applies to ssp as to async
    assert JobConfig(mode="ssp", max_staleness=4, staleness_policy="inverse").max_staleness == 4
    with pytest.raises(ValidationError, match="PSC_MIN_GRADIENTS: applies to sync"):
        JobConfig(mode="async", min_gradients=2)
