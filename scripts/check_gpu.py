"""Check the GPU path on a machine with a CUDA device, in one short run (well under a minute).

    python scripts/check_gpu.py                 # everything, the cluster run included
    python scripts/check_gpu.py --no-cluster    # the in-process checks only
    python scripts/check_gpu.py --backend numpy # the same checks NumPy against NumPy (no GPU)

What it checks, NumPy as the reference each time:

1. CuPy imports and sees a device; ``get_xp("auto")`` picks CuPy.
2. The worker's own compute step (``Trainer._compute``) gives the same loss and gradients on
   CuPy as on NumPy within float32 tolerance, for each model and each wire dtype (the float16
   cast happens on the device and must round as the host does).
3. 100 SGD steps in one process, same batches, end at the same parameters on both backends
   within tolerance, and at the same held-out accuracy within a point.
4. ``pscluster up --backend cupy`` trains the default job to the accuracy of ``--backend numpy``
   within two points.

Exit status: 0 when everything agrees, 1 on a mismatch, 2 when CuPy or a CUDA device is missing
(with a message that says which).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any, NoReturn

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import pscluster_up  # noqa: E402
from pscluster import backend  # noqa: E402
from pscluster.datasets import load_dataset  # noqa: E402
from pscluster.models import build_model  # noqa: E402
from pscluster.sampling import batch_indices  # noqa: E402
from worker.training import Trainer  # noqa: E402

# float32 on two different BLAS libraries: sums in another order, fused multiply-adds.
GRAD_RTOL, GRAD_ATOL = 1e-4, 1e-6
TRAIN_RTOL, TRAIN_ATOL = 2e-3, 2e-4


class Mismatch(Exception):
    pass


def missing(reason: str) -> NoReturn:
    print(f"check_gpu: {reason}", file=sys.stderr)
    sys.exit(2)


def device_module(name: str) -> ModuleType:
    """CuPy with a usable device (or NumPy for --backend numpy); exit 2 with the reason if not."""
    if name == "numpy":
        return np
    try:
        import cupy
    except ImportError as exc:
        missing(f"CuPy is not installed ({exc}); pip install 'pscluster[gpu]'")
    try:
        count = int(cupy.cuda.runtime.getDeviceCount())
    except Exception as exc:  # the driver or runtime is missing: CuPy raises its own errors
        missing(f"CuPy cannot reach a CUDA driver or device: {exc}")
    if count < 1:
        missing("CuPy sees no CUDA device")
    if backend.get_xp("auto") is not cupy:
        missing("backend 'auto' did not pick CuPy although a device is present")
    props = cupy.cuda.runtime.getDeviceProperties(0)
    name = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
    print(f"device 0: {name}, CuPy {cupy.__version__}, {count} device(s)")
    return cupy


def compute(
    xp: ModuleType, model: Any, params: dict[str, np.ndarray], wire: str, x: Any, y: Any
) -> tuple[float, dict[str, np.ndarray]]:
    """The worker's own compute step, on backend ``xp``."""
    worker = SimpleNamespace(
        xp=xp, model=model, full=params, job=SimpleNamespace(wire_dtype=SimpleNamespace(value=wire))
    )
    # A stand-in for the Trainer with only the attributes _compute reads: the check runs the
    # worker's own step without a cluster to connect to.
    return Trainer._compute(worker, x, y)  # type: ignore[arg-type]


def sync(xp: ModuleType) -> None:
    if xp is not np:
        xp.cuda.Stream.null.synchronize()


def check_gradients(xp: ModuleType) -> None:
    data = load_dataset("digits", 0)
    synthetic = load_dataset("synthetic", 0, synthetic_samples=2048, synthetic_features=256)
    cases = [
        ("softmax", data, ()),
        ("mlp", data, (64,)),
        ("mlp", synthetic, (512, 256)),
    ]
    for spec, dataset, hidden in cases:
        model = build_model(spec, dataset.n_features, dataset.n_classes, hidden)
        params = model.init_parameters(1)
        x, y = dataset.x_train[:256], dataset.y_train[:256]
        for wire in ("float32", "float16", "bfloat16"):
            loss_ref, grads_ref = compute(np, model, params, wire, x, y)
            loss, grads = compute(xp, model, params, wire, x, y)
            if not np.isclose(loss, loss_ref, rtol=GRAD_RTOL):
                raise Mismatch(f"{spec} {hidden} {wire}: loss {loss} != {loss_ref}")
            for name, ref in grads_ref.items():
                got = grads[name]
                if got.dtype != ref.dtype or not isinstance(got, np.ndarray):
                    raise Mismatch(f"{spec} {name} {wire}: {type(got)} {got.dtype} != {ref.dtype}")
                # 16-bit: the values may fall on either side of a rounding boundary.
                ulp = {"float32": 0.0, "float16": 2.0**-10, "bfloat16": 2.0**-7}[wire]
                np.testing.assert_allclose(
                    got.astype(np.float32),
                    ref.astype(np.float32),
                    rtol=GRAD_RTOL + ulp,
                    atol=GRAD_ATOL,
                    err_msg=f"{spec} {hidden} gradient {name}, wire {wire}",
                )
        timings = {}
        for label, module in (("numpy", np), ("device", xp)):
            compute(module, model, params, "float32", x, y)  # warm up (kernels, pools)
            sync(module)
            started = time.perf_counter()
            for _ in range(20):
                compute(module, model, params, "float32", x, y)
            sync(module)
            timings[label] = (time.perf_counter() - started) / 20 * 1e3
        print(
            f"  {spec:7s} hidden={hidden!s:10s} gradients agree; compute per step "
            f"numpy {timings['numpy']:.2f} ms, device {timings['device']:.2f} ms"
        )


def train(xp: ModuleType, steps: int = 100) -> tuple[dict[str, np.ndarray], float]:
    """Plain SGD in one process on the worker's compute step; same batches on every backend."""
    data = load_dataset("digits", 0)
    model = build_model("mlp", data.n_features, data.n_classes, (64,))
    params = model.init_parameters(0)
    for step in range(steps):
        idx = batch_indices(
            len(data.y_train), 32, seed=0, rank=0, world=1, step=step, mode="sample"
        )
        _, grads = compute(xp, model, params, "float32", data.x_train[idx], data.y_train[idx])
        for name, g in grads.items():
            params[name] -= np.float32(0.1) * g
    _, accuracy = model.evaluate(params, data.x_test, data.y_test)
    return params, accuracy


def check_training(xp: ModuleType) -> None:
    ref, acc_ref = train(np)
    got, acc = train(xp)
    for name in ref:
        np.testing.assert_allclose(
            got[name],
            ref[name],
            rtol=TRAIN_RTOL,
            atol=TRAIN_ATOL,
            err_msg=f"after 100 steps: {name}",
        )
    if abs(acc - acc_ref) > 0.01:
        raise Mismatch(f"held-out accuracy after 100 steps: {acc:.4f} vs numpy {acc_ref:.4f}")
    print(f"  100 SGD steps agree; held-out accuracy {acc:.4f} (numpy {acc_ref:.4f})")


def cluster_accuracy(backend_name: str) -> float:
    flags = [
        *("--backend", backend_name, "--model", "mlp", "--dataset", "digits"),
        *("--workers", "2", "--spares", "0"),
    ]
    with tempfile.TemporaryDirectory(prefix="check-gpu-") as tmp:
        try:
            summary = pscluster_up(flags, Path(tmp) / "run", timeout_s=300)
        except RuntimeError as exc:
            raise Mismatch(f"pscluster up --backend {backend_name} failed: {exc}") from exc
    return float(summary["accuracy"])


def check_cluster(backend_name: str) -> None:
    acc_ref = cluster_accuracy("numpy")
    acc = cluster_accuracy(backend_name)
    if abs(acc - acc_ref) > 0.02:
        raise Mismatch(f"pscluster up: accuracy {acc:.4f} on {backend_name}, {acc_ref:.4f} numpy")
    print(f"  pscluster up --backend {backend_name}: accuracy {acc:.4f} (numpy {acc_ref:.4f})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", choices=("cupy", "numpy"), default="cupy")
    parser.add_argument("--no-cluster", action="store_true", help="skip the pscluster up runs")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    xp = device_module(args.backend)
    try:
        print("gradients, per model and wire dtype:")
        check_gradients(xp)
        print("training:")
        check_training(xp)
        if not args.no_cluster:
            check_cluster(args.backend)
    except (Mismatch, AssertionError) as exc:
        print(f"check_gpu: MISMATCH: {exc}", file=sys.stderr)
        return 1
    print(f"check_gpu: {args.backend} agrees with numpy ({time.perf_counter() - started:.1f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
