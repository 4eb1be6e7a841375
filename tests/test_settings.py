"""Settings: bad values stop every service at start (exit 2, the variable named), the README's
table and ``--help`` come from the settings objects."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from launcher.cli import SERVICES, main
from pscluster import settings_doc
from pscluster.settings import (
    ENV_PREFIX,
    PULL_LONG_POLL_S,
    CoordinatorSettings,
    JobConfig,
    ShardSettings,
    WorkerSettings,
    load_settings,
    unknown_variables,
)

ROOT = Path(__file__).resolve().parent.parent
PSCLUSTER = Path(sys.executable).with_name("pscluster")
PYTHON = [sys.executable, "-m"]
CLI = [str(PSCLUSTER)] if PSCLUSTER.exists() else [*PYTHON, "launcher.cli"]

# (command, bad environment, the variable the error must name)
BAD_STARTS = [
    ([*PYTHON, "coordinator"], {"PSC_MODE": "bogus"}, "PSC_MODE"),
    ([*PYTHON, "coordinator"], {"PSC_WORKERS": "-1"}, "PSC_WORKERS"),
    ([*PYTHON, "coordinator"], {"PSC_MODE": "async", "PSC_SPARES": "1"}, "PSC_SPARES"),
    (
        [*PYTHON, "coordinator"],
        {"PSC_HEARTBEAT_LEASE_S": "0.1", "PSC_POLL_INTERVAL_S": "0.5"},
        "PSC_HEARTBEAT_LEASE_S",
    ),
    ([*PYTHON, "ps_server"], {"PSC_SHARD_INDEX": "-1"}, "PSC_SHARD_INDEX"),
    ([*PYTHON, "worker"], {"PSC_DELAY": "sometimes"}, "PSC_DELAY"),
    ([*CLI, "coordinator"], {"PSC_MODE": "bogus"}, "PSC_MODE"),
    ([*CLI, "ps"], {"PSC_PORT": "70000"}, "PSC_PORT"),
    ([*CLI, "worker"], {"PSC_REQUEST_TIMEOUT_S": "5"}, "PSC_REQUEST_TIMEOUT_S"),
    ([*CLI, "worker", "--request-timeout-s", "1"], {}, "PSC_REQUEST_TIMEOUT_S"),
    ([*CLI, "up", "--mode", "async", "--spares", "1"], {}, "PSC_SPARES"),
]


def clean_env(**extra: str) -> dict[str, str]:
    """The test's environment without any PSC_* of the caller's, and a token (one error each)."""
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith(ENV_PREFIX)}
    return {**env, "PSC_TOKEN": "test-token", "PSC_PORT": "0", **extra}


def test_bad_settings_stop_every_entry_point_with_exit_2_and_the_variable_named() -> None:
    # All at once: each is a fresh interpreter, so in parallel they take the time of one or two.
    runs = [
        (
            command,
            variable,
            subprocess.Popen(
                command,
                env=clean_env(**env),
                cwd=ROOT,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                stdin=subprocess.DEVNULL,
                text=True,
            ),
        )
        for command, env, variable in BAD_STARTS
    ]
    failures = []
    try:
        for command, variable, process in runs:
            _, stderr = process.communicate(timeout=60)
            shown = " ".join(command[-3:])
            if process.returncode != 2 or variable not in stderr or "error" not in stderr:
                failures.append(f"{shown}: exit {process.returncode}, stderr {stderr!r}")
            if "listening on" in stderr:
                failures.append(f"{shown}: started listening before refusing its settings")
    finally:
        for _, _, process in runs:
            if process.poll() is None:
                process.kill()
                process.wait()
    # A refusal is immediate (no retries, no network): each process exits within communicate's
    # bound, before it listens. No wall-time assertion: this machine is shared and noisy.
    assert not failures, "\n".join(failures)


def clear_settings_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No PSC_* variable but a token: each test sets exactly the settings it is about."""
    for name in list(os.environ):
        if name.upper().startswith(ENV_PREFIX):
            monkeypatch.delenv(name)
    monkeypatch.setenv("PSC_TOKEN", "t")


def test_error_message_names_the_variable_and_the_value(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    clear_settings_env(monkeypatch)
    monkeypatch.setenv("PSC_WORKERS", "-1")
    monkeypatch.setenv("PSC_MAX_STALENESS", "soon")
    with pytest.raises(SystemExit) as exit_info:
        load_settings(CoordinatorSettings)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "PSC_WORKERS: Input should be greater than or equal to 1 (got '-1')" in err
    # An optional field's error names the variable, not the union member pydantic tried.
    assert "PSC_MAX_STALENESS: " in err and "PSC_MAX_STALENESS.INT" not in err


def test_empty_variable_means_default_and_unknown_ones_are_reported(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    clear_settings_env(monkeypatch)
    monkeypatch.setenv("PSC_MAX_STALENESS", "")  # as compose passes ${PSC_MAX_STALENESS:-}
    monkeypatch.setenv("PSC_STEPS", "")
    monkeypatch.setenv("PSC_WORKRS", "8")  # a typo
    settings = load_settings(CoordinatorSettings)
    assert settings.max_staleness is None and settings.steps == 300
    assert "PSC_WORKRS is not a setting of CoordinatorSettings" in capsys.readouterr().err
    assert unknown_variables(WorkerSettings, {"PSC_DELAY": "x", "PSC_SHARDS": "2"}) == [
        "PSC_SHARDS"
    ]


def test_contradictory_timeouts_are_refused() -> None:
    ok = {"insecure": True}
    with pytest.raises(ValueError, match="PSC_REQUEST_TIMEOUT_S"):
        WorkerSettings(**ok, request_timeout_s=PULL_LONG_POLL_S)
    worker = WorkerSettings(**ok, request_timeout_s=40)
    worker.check_job(JobConfig(push_wait_s=30))
    with pytest.raises(ValueError, match="PSC_PUSH_WAIT_S"):
        worker.check_job(JobConfig(push_wait_s=40))
    worker.check_job(JobConfig(mode="async", push_wait_s=40))  # async holds no push
    with pytest.raises(ValueError, match="PSC_HEARTBEAT_LEASE_S"):
        CoordinatorSettings(**ok, heartbeat_lease_s=0.2, poll_interval_s=0.2)
    with pytest.raises(ValueError, match="PSC_WARMUP_STEPS"):
        JobConfig(mode="async", warmup_steps=100, steps=100)


def test_readme_table_is_generated_from_the_settings() -> None:
    readme = (ROOT / "README.md").read_text()
    generated = settings_doc.settings_tables()
    assert settings_doc.readme_block(readme) == generated, (
        "README.md's settings tables are out of date: "
        "run python -m pscluster.settings_doc --write README.md"
    )
    # Every field of every service is in the tables, with its variable and flag.
    for cls in SERVICES.values():
        for name in cls.model_fields:
            assert f"`{ENV_PREFIX}{name.upper()}` `--{name.replace('_', '-')}`" in generated


def test_settings_doc_check_and_write(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\n## Settings\n\n{settings_doc.BEGIN}\nold\n{settings_doc.END}\n")
    assert settings_doc.main(["--check", str(readme)]) == 1
    assert settings_doc.main(["--write", str(readme)]) == 0
    assert settings_doc.main(["--check", str(readme)]) == 0
    text = readme.read_text()
    assert text.startswith("# x\n\n## Settings\n\n") and text.endswith(f"{settings_doc.END}\n")


@pytest.mark.parametrize("service", sorted(SERVICES))
def test_help_lists_every_setting(service: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([service, "--help"])
    assert exit_info.value.code == 0
    help_text = " ".join(capsys.readouterr().out.split())  # undo argparse's line wrapping
    for name, info in SERVICES[service].model_fields.items():
        assert f"--{name.replace('_', '-')}" in help_text
        assert f"env {ENV_PREFIX}{name.upper()}," in help_text
        assert " ".join((info.description or "").split()) in help_text


@pytest.mark.parametrize(
    ("name", "index"), [("pscluster-ps-0", 0), ("pscluster-ps-3", 3), ("ps-12", 12)]
)
def test_shard_index_comes_from_a_statefulset_pod_name(
    name: str, index: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Kubernetes passes metadata.name as PSC_SHARD_NAME (downward API); its ordinal is the index.
    monkeypatch.setenv("PSC_SHARD_NAME", name)
    assert ShardSettings(insecure=True).shard_index == index
    # The same index given too agrees; an empty PSC_SHARD_INDEX means unset.
    monkeypatch.setenv("PSC_SHARD_INDEX", str(index))
    assert ShardSettings(insecure=True).shard_index == index
    monkeypatch.setenv("PSC_SHARD_INDEX", "")
    assert ShardSettings(insecure=True).shard_index == index


def test_shard_name_without_an_ordinal_or_disagreeing_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("pscluster-ps", "pscluster-ps-", "ps-x", "PS-1"):
        with pytest.raises(ValueError, match=r"PSC_SHARD_NAME: .* does not end in '-<ordinal>'"):
            ShardSettings(insecure=True, shard_name=name)
    with pytest.raises(ValueError, match="PSC_SHARD_INDEX: 2 disagrees with PSC_SHARD_NAME"):
        ShardSettings(insecure=True, shard_name="pscluster-ps-3", shard_index=2)
    # Without a name, the index is taken as given (compose and the launcher set it).
    assert ShardSettings(insecure=True, shard_index=5).shard_index == 5
