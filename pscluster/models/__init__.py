"""Models the cluster can train, and ``build_model`` to pick one from a settings string."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Callable, Sequence

from pscluster.models.base import Array, Model
from pscluster.models.fm import FactorizationMachine, build_fm
from pscluster.models.mlp import MLP
from pscluster.models.softmax import SoftmaxRegression

__all__ = [
    "BUILTIN_MODELS",
    "MLP",
    "Array",
    "FactorizationMachine",
    "Model",
    "SoftmaxRegression",
    "build_model",
    "is_torch",
    "resolve_model",
]


def _softmax(n_features: int, n_classes: int, hidden: Sequence[int]) -> Model:
    # Softmax regression has no hidden layers; the setting is ignored rather than refused so one
    # job configuration can switch between models by changing the spec alone.
    return SoftmaxRegression(n_features, n_classes)


def _mlp(n_features: int, n_classes: int, hidden: Sequence[int]) -> Model:
    return MLP(n_features, n_classes, hidden)


def _torch_cnn(n_features: int, n_classes: int, hidden: Sequence[int]) -> object:
    # Imported here: the built-in names resolve (and the settings validate) without torch.
    from pscluster.models.torch_cnn import build

    return build(n_features, n_classes, hidden)


BUILTIN_MODELS: dict[str, Callable[..., object]] = {
    "softmax": _softmax,
    "mlp": _mlp,
    "torch_cnn": _torch_cnn,
    "fm": build_fm,
}
# Built-in models that need the torch extra.
TORCH_MODELS = frozenset({"torch_cnn"})


def _load_user_factory(spec: str) -> Callable[..., object]:
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ValueError(f"model spec {spec!r} must look like 'package.module:Name'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"model spec {spec!r}: cannot import module {module_name!r}") from exc
    factory: object = getattr(module, attr, None)
    if not callable(factory):
        raise ValueError(f"model spec {spec!r}: {module_name} has no class or function {attr!r}")
    return factory


def resolve_model(spec: str) -> Callable[..., object]:
    """The factory that ``spec`` names, or a ``ValueError`` that says what is wrong with it.

    Cheap (no model is built), so a job's model name is checked before any service starts.
    """
    builtin = BUILTIN_MODELS.get(spec)
    if builtin is not None:
        if spec in TORCH_MODELS and importlib.util.find_spec("torch") is None:
            raise ValueError(
                f"model {spec!r} needs PyTorch: pip install -c constraints.txt 'pscluster[torch]'"
            )
        return builtin
    if ":" not in spec:
        raise ValueError(
            f"unknown model {spec!r}; built-in models are {', '.join(BUILTIN_MODELS)}, "
            "or give a user model as 'package.module:Name'"
        )
    return _load_user_factory(spec)


def is_torch(model: Model) -> bool:
    """Whether ``model`` is a PyTorch module under the adapter (it picks its own device)."""
    adapter = sys.modules.get("pscluster.models.torch_adapter")
    return adapter is not None and isinstance(model, adapter.TorchModel)


def build_model(
    spec: str,
    n_features: int,
    n_classes: int,
    hidden: Sequence[int],
    *,
    backend: str = "numpy",
    torch_threads: int | None = None,
) -> Model:
    """The model named by ``spec``: "softmax", "mlp", "torch_cnn", or a user model
    "package.module:Name".

    A user ``Name`` is a class or factory called as ``Name(n_features=..., n_classes=...,
    hidden=...)``. It returns a ``pscluster.models.Model`` (NumPy, hand-written gradients), or a
    ``torch.nn.Module``, or ``(module, loss_fn)``: trained with PyTorch's autograd
    (``torch_adapter``) on the device ``backend`` names, with ``torch_threads`` CPU threads.
    """
    factory = resolve_model(spec)
    kwargs = {"n_features": n_features, "n_classes": n_classes, "hidden": tuple(hidden)}
    model = factory(**kwargs)
    # A structural check only (methods exist), but it turns a typo'd class into an error at
    # start-up instead of an AttributeError in the middle of training.
    if isinstance(model, Model):
        return model
    # A torch module can only exist once torch is imported: a NumPy job never imports it.
    if "torch" in sys.modules:
        from pscluster.models.torch_adapter import wrap

        wrapped = wrap(
            spec,
            model,
            lambda: factory(**kwargs),
            n_features,
            backend=backend,
            threads=torch_threads,
        )
        if wrapped is not None:
            return wrapped
    raise TypeError(
        f"model spec {spec!r} built a {type(model).__name__}, which is no torch.nn.Module and "
        "lacks the methods of pscluster.models.Model (parameter_shapes, init_parameters, "
        "loss_and_gradients, evaluate)"
    )
