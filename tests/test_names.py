"""Model and dataset names are resolved before anything starts: ``pscluster up`` exits 2 with the
message on the terminal, and a coordinator started alone exits 2 with one log line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pscluster.models import resolve_model
from pscluster.settings import CoordinatorSettings

BAD_NAMES = [
    ("--model", "PSC_MODEL", "resnet", "unknown model 'resnet'"),
    ("--model", "PSC_MODEL", "no_such_module:Net", "cannot import module 'no_such_module'"),
    ("--model", "PSC_MODEL", "pscluster.models:Nope", "has no class or function 'Nope'"),
    ("--dataset", "PSC_DATASET", "mnist", "unknown dataset 'mnist'"),
]


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("PSC_")}


def test_resolve_model_names_the_builtins_and_user_specs() -> None:
    assert resolve_model("mlp") is not resolve_model("softmax")
    assert callable(resolve_model("pscluster.models:MLP"))
    with pytest.raises(ValueError, match="built-in models are softmax, mlp"):
        resolve_model("mlpp")


@pytest.mark.parametrize(("flag", "variable", "value", "message"), BAD_NAMES)
def test_pscluster_up_refuses_a_bad_name_before_starting(
    tmp_path: Path, flag: str, variable: str, value: str, message: str
) -> None:
    run_dir = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "launcher", "up", flag, value, "--run-dir", str(run_dir)],
        capture_output=True,
        text=True,
        timeout=60,
        env=clean_env(),
    )
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr and variable in proc.stderr
    # Nothing started: the launcher makes its run folder (and the services' logs) only later.
    assert not run_dir.exists()
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize(("flag", "variable", "value", "message"), BAD_NAMES[::3])
def test_a_coordinator_alone_exits_with_one_clear_line(
    flag: str, variable: str, value: str, message: str
) -> None:
    env = {**clean_env(), variable: value, "PSC_TOKEN": "t", "PSC_PORT": "0"}
    proc = subprocess.run(
        [sys.executable, "-m", "coordinator"], capture_output=True, text=True, timeout=60, env=env
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert variable in lines[0] and message in lines[0]


def test_settings_refuse_bad_names_and_keep_good_ones() -> None:
    good = CoordinatorSettings(model="softmax", dataset="synthetic", token="t")
    assert (good.model, good.dataset) == ("softmax", "synthetic")
    for field, value in (("model", "resnet"), ("dataset", "mnist")):
        with pytest.raises(ValueError, match=value):
            CoordinatorSettings(**{field: value, "token": "t"})
