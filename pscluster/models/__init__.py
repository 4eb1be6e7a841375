"""Models the cluster can train, and ``build_model`` to pick one from a settings string."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence

from pscluster.models.base import Array, Model
from pscluster.models.mlp import MLP
from pscluster.models.softmax import SoftmaxRegression

__all__ = [
    "BUILTIN_MODELS",
    "MLP",
    "Array",
    "Model",
    "SoftmaxRegression",
    "build_model",
    "resolve_model",
]


def _softmax(n_features: int, n_classes: int, hidden: Sequence[int]) -> Model:
    # Softmax regression has no hidden layers; the setting is ignored rather than refused so one
    # job configuration can switch between models by changing the spec alone.
    return SoftmaxRegression(n_features, n_classes)


def _mlp(n_features: int, n_classes: int, hidden: Sequence[int]) -> Model:
    return MLP(n_features, n_classes, hidden)


BUILTIN_MODELS: dict[str, Callable[[int, int, Sequence[int]], Model]] = {
    "softmax": _softmax,
    "mlp": _mlp,
}


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
        return builtin
    if ":" not in spec:
        raise ValueError(
            f"unknown model {spec!r}; built-in models are {', '.join(BUILTIN_MODELS)}, "
            "or give a user model as 'package.module:Name'"
        )
    return _load_user_factory(spec)


def build_model(spec: str, n_features: int, n_classes: int, hidden: Sequence[int]) -> Model:
    """The model named by ``spec``: "softmax", "mlp", or a user model "package.module:Name".

    A user ``Name`` is a class or factory called as ``Name(n_features=..., n_classes=...,
    hidden=...)`` whose result implements ``pscluster.models.Model``.
    """
    model = resolve_model(spec)(n_features=n_features, n_classes=n_classes, hidden=tuple(hidden))
    # A structural check only (methods exist), but it turns a typo'd class into an error at
    # start-up instead of an AttributeError in the middle of training.
    if not isinstance(model, Model):
        raise TypeError(
            f"model spec {spec!r} built a {type(model).__name__}, which lacks the methods of "
            "pscluster.models.Model (parameter_shapes, init_parameters, loss_and_gradients, "
            "evaluate)"
        )
    return model
