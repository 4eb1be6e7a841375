"""A user's ``torch.nn.Module`` as a ``Model``: parameters are its ``named_parameters()``,
gradients come from autograd.

The module is only the computation: the parameters it runs with are the ones the cluster hands
it (a worker's pulled arrays, the coordinator's evaluated ones), passed in with
``torch.func.functional_call``. On the CPU they are ``torch.from_numpy`` views of those arrays and
the gradients go back as NumPy views of each parameter's ``.grad``: nothing is copied on the way
in or out. On CUDA each crosses PCIe once per step, as CuPy's arrays do.

Imported only where a factory returned a torch module (``build_model``) or a built-in torch model
is asked for: the base install, and the shards always, never import torch.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
from torch.func import functional_call

from pscluster.models.base import Array, check_batch

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
# What a user's factory returns: the module, or the module and its loss.
Built = Any


def torch_device(backend: str, cuda_available: bool) -> str:
    """The torch device a worker's backend setting means: auto is CUDA when torch sees a GPU and
    the CPU otherwise; numpy is the CPU; cupy (a GPU asked for) is CUDA or an error."""
    if backend == "numpy":
        return "cpu"
    if cuda_available:
        return "cuda"
    if backend == "auto":
        return "cpu"
    raise RuntimeError(
        f"backend {backend!r} asks for a GPU but torch.cuda.is_available() is false; "
        "use backend 'numpy' or 'auto'"
    )


def split_built(built: Built) -> tuple[torch.nn.Module, LossFn] | None:
    """(module, loss) from what a factory returned, or None when it is no torch model. The
    default loss is cross-entropy on the logits, averaged over the batch."""
    if isinstance(built, torch.nn.Module):
        return built, torch.nn.functional.cross_entropy
    if (
        isinstance(built, tuple)
        and len(built) == 2
        and isinstance(built[0], torch.nn.Module)
        and callable(built[1])
    ):
        return built[0], built[1]
    return None


def check_module(module: torch.nn.Module, spec: str) -> None:
    """Refuse, at start-up, a module the cluster cannot train as it would on one process."""
    buffers = [name for name, _ in module.named_buffers()]
    if buffers:
        # Running statistics are state that changes in the forward pass on each worker; they
        # are not gradients, so the shards cannot average them and each worker's would drift.
        raise ValueError(
            f"model {spec!r} has buffers ({', '.join(buffers[:4])}): running statistics such "
            "as BatchNorm's are not sharded or averaged here; use a norm without them "
            "(GroupNorm, LayerNorm, or BatchNorm(track_running_stats=False))"
        )
    wrong = [n for n, p in module.named_parameters() if p.dtype != torch.float32]
    if wrong:
        raise ValueError(f"model {spec!r}: parameters {wrong[:4]} are not float32")
    if not list(module.parameters()):
        raise ValueError(f"model {spec!r} has no parameters")


class TorchModel:
    """``Model`` over a torch module built by ``rebuild`` (the user's factory, same arguments)."""

    def __init__(
        self,
        spec: str,
        built: tuple[torch.nn.Module, LossFn],
        rebuild: Callable[[], Built],
        n_features: int,
        *,
        device: str = "cpu",
    ) -> None:
        module, self.loss_fn = built
        check_module(module, spec)
        self.spec = spec
        self.n_features = n_features
        self.device = torch.device(device)
        self.module = module.to(self.device)
        self._rebuild = rebuild
        self._shapes = {n: tuple(p.shape) for n, p in module.named_parameters()}

    def parameter_shapes(self) -> dict[str, tuple[int, ...]]:
        return dict(self._shapes)

    def init_parameters(self, seed: int) -> dict[str, np.ndarray]:
        """The module's own initialisation, run under ``torch.manual_seed(seed)`` on the CPU:
        the same values in every process, whatever else drew from torch's generator before."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            fresh = split_built(self._rebuild())
        if fresh is None:
            raise TypeError(f"model {self.spec!r}: the factory no longer builds a torch module")
        return {
            name: p.detach().cpu().numpy().astype(np.float32, copy=True)
            for name, p in fresh[0].named_parameters()
        }

    def _tensor(self, a: np.ndarray) -> torch.Tensor:
        # A view of the NumPy array on the CPU; one host-to-device copy on CUDA. Torch tensors
        # are always writable: a read-only array (a view of received bytes, a dataset mapped
        # from its file) is copied once. The worker's and coordinator's parameters are not.
        if not a.flags.writeable:
            a = np.array(a)
        return torch.from_numpy(np.ascontiguousarray(a)).to(self.device)

    def _inputs(self, x: Array, y: Array) -> tuple[torch.Tensor, torch.Tensor]:
        check_batch(x, y, self.n_features)
        features = self._tensor(np.asarray(x, dtype=np.float32))
        return features, self._tensor(np.asarray(y).astype(np.int64, copy=False))

    def _leaves(self, params: Mapping[str, Array], grad: bool) -> dict[str, torch.Tensor]:
        return {name: self._tensor(params[name]).requires_grad_(grad) for name in self._shapes}

    def loss_and_gradients(
        self, params: Mapping[str, Array], x: Array, y: Array
    ) -> tuple[float, dict[str, Array]]:
        features, labels = self._inputs(x, y)
        leaves = self._leaves(params, grad=True)
        self.module.train()
        loss = self.loss_fn(functional_call(self.module, leaves, (features,)), labels)
        torch.autograd.backward(loss)
        grads: dict[str, Array] = {}
        for name, leaf in leaves.items():
            g = leaf.grad
            # A parameter the forward pass did not use has no gradient: zero, as on one process.
            g = torch.zeros_like(leaf) if g is None else g
            # On the CPU a view of .grad (dense, as the parameter: autograd's layout contract).
            grads[name] = g.detach().contiguous().cpu().numpy()
        return float(loss.detach()), grads

    def evaluate(self, params: Mapping[str, Array], x: Array, y: Array) -> tuple[float, float]:
        features, labels = self._inputs(x, y)
        self.module.eval()
        with torch.no_grad():
            out = functional_call(self.module, self._leaves(params, grad=False), (features,))
            loss = self.loss_fn(out, labels)
            correct = int((out.argmax(dim=1) == labels).sum())
        return float(loss), correct / len(labels)


def set_threads(threads: int) -> None:
    """torch's intra-op CPU threads for this process (``torch.set_num_threads``)."""
    torch.set_num_threads(threads)


def wrap(
    spec: str,
    built: Built,
    rebuild: Callable[[], Built],
    n_features: int,
    *,
    backend: str,
    threads: int | None,
) -> TorchModel | None:
    """A ``TorchModel`` of what a factory built, or None when it built no torch model."""
    split = split_built(built)
    if split is None:
        return None
    if threads is not None:
        set_threads(threads)
    device = torch_device(backend, torch.cuda.is_available())
    return TorchModel(spec, split, rebuild, n_features, device=device)
