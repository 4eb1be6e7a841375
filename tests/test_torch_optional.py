"""The base install is torch-free: every NumPy path imports and runs with torch unimportable."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run_without_torch(code: str) -> subprocess.CompletedProcess[str]:
    """``code`` in a fresh interpreter where ``import torch`` raises ImportError."""
    # None in sys.modules makes every later import of the name raise ImportError, as if the
    # package were not installed (the import system's own documented way to block a module).
    prelude = "import sys\nsys.modules['torch'] = None\n"
    return subprocess.run(
        [sys.executable, "-c", prelude + textwrap.dedent(code)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )


def test_numpy_paths_import_and_train_without_torch() -> None:
    done = run_without_torch(
        """
        import numpy as np
        import coordinator.app, ps_server.app, worker.app, launcher.up, bench.training
        from ps_server.optimizers import Adam, apply
        from pscluster.models import build_model
        from pscluster.settings import AdamForm

        model = build_model("mlp", 64, 10, (16,))
        params = model.init_parameters(0)
        rng = np.random.default_rng(0)
        x = rng.standard_normal((8, 64)).astype(np.float32)
        loss, grads = model.loss_and_gradients(params, x, np.arange(8) % 10)
        before = params["w1"].copy()
        apply(Adam(params, lr=0.01, form=AdamForm.TORCH), params, grads, 1.0)
        print(round(loss, 3), float(np.abs(params["w1"] - before).max()) > 0)
        # A torch model is refused at start, saying what to install.
        from pscluster.settings import CoordinatorSettings
        try:
            CoordinatorSettings(model="torch_cnn", insecure=True)
        except ValueError as exc:
            print("refused" if "pip install" in str(exc) else exc)
        """
    )
    assert done.returncode == 0, done.stderr
    loss, moved, refused = done.stdout.split()
    assert 0.5 < float(loss) < 10 and moved == "True" and refused == "refused"
