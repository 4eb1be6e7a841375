"""Services as real subprocesses for tests: start one, wait for its ready file, ask it things."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

TOKEN = "subprocess-test-token"


def start(
    module: str, tmp: Path, name: str, *, prelude: str = "", **env: str
) -> tuple[subprocess.Popen, str]:
    """``python -m module``; with a ``prelude``, that code runs first in the same interpreter."""
    ready = tmp / f"{name}.url"
    command = [sys.executable, "-m", module]
    if prelude:
        run = f"import runpy; runpy.run_module({module!r}, run_name='__main__', alter_sys=True)"
        command = [sys.executable, "-c", f"{prelude}\n{run}"]
    full_env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("PSC_")},
        "PSC_TOKEN": TOKEN,
        "PSC_PORT": "0",
        "PSC_READY_FILE": str(ready),
        **env,
    }
    with open(tmp / f"{name}.log", "wb") as log:
        process = subprocess.Popen(
            command,
            env=full_env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    deadline = time.monotonic() + 30
    while not ready.exists():
        assert process.poll() is None, (tmp / f"{name}.log").read_text()
        assert time.monotonic() < deadline, f"{name} not ready"
        time.sleep(0.02)
    return process, ready.read_text().strip()


def get(url: str) -> dict:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {TOKEN}"})
    with urllib.request.urlopen(request, timeout=5) as resp:
        return json.loads(resp.read())
