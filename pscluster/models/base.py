"""The model interface every service relies on, and the math the built-in models share.

A model is stateless: it knows its parameter shapes and how to compute loss and gradients from
parameters it is handed. Parameters live on the shards; a worker pulls them, calls
``loss_and_gradients`` and pushes the result. All math uses the array module of the inputs, so the
same model runs on NumPy (CPU) and CuPy (GPU) arrays.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping
from typing import Any, Protocol, TypeAlias, runtime_checkable

import numpy as np

from pscluster.backend import array_module

# A NumPy or CuPy array. Typed loosely: CuPy is optional and has no stubs to name here.
Array: TypeAlias = Any


@runtime_checkable
class Model(Protocol):
    """What the cluster needs from a model."""

    def parameter_shapes(self) -> dict[str, tuple[int, ...]]:
        """Name -> shape of every parameter, in a stable order (the shard map is built from it)."""
        ...

    def init_parameters(self, seed: int) -> dict[str, np.ndarray]:
        """Fresh float32 NumPy parameters, identical in every process for the same seed."""
        ...

    def loss_and_gradients(
        self, params: Mapping[str, Array], x: Array, y: Array
    ) -> tuple[float, dict[str, Array]]:
        """Mean cross-entropy over the batch and its gradient for each parameter (same shapes)."""
        ...

    def evaluate(self, params: Mapping[str, Array], x: Array, y: Array) -> tuple[float, float]:
        """(mean cross-entropy, accuracy in [0, 1]) of the parameters on (x, y)."""
        ...


def parameter_rng(seed: int, name: str) -> np.random.Generator:
    """The generator that initialises one parameter.

    One stream per (seed, name) rather than one stream for the whole model: a shard that owns only
    some parameters draws exactly the values any other process would, whatever the order or the
    subset it initialises. crc32 because Python's ``hash`` of a str changes between processes.
    """
    return np.random.default_rng([seed, zlib.crc32(name.encode())])


def he_normal(seed: int, name: str, shape: tuple[int, int]) -> np.ndarray:
    """He initialisation (std sqrt(2 / fan_in)) for a [fan_in, fan_out] weight, float32."""
    std = np.sqrt(2.0 / shape[0])
    weights: np.ndarray = (parameter_rng(seed, name).standard_normal(shape) * std).astype(
        np.float32
    )
    return weights


def _labels_like(logits: Array, y: Array) -> Array:
    # Labels may arrive as host arrays next to device logits, or as uint8; index with int64 on
    # the logits' own device.
    return array_module(logits).asarray(y).astype("int64", copy=False)


def log_softmax(logits: Array) -> Array:
    """Row-wise log-softmax, shifted by the row max so exp never overflows."""
    xp = array_module(logits)
    shifted = logits - logits.max(axis=1, keepdims=True)
    return shifted - xp.log(xp.exp(shifted).sum(axis=1, keepdims=True))


def softmax_cross_entropy(logits: Array, y: Array) -> tuple[Array, Array]:
    """Mean cross-entropy of integer labels ``y`` under ``logits`` [B, C], and d loss / d logits.

    The loss is returned as a 0-d array on the logits' device: converting it to a Python float
    forces a device sync, which the caller does once, not per layer.
    """
    xp = array_module(logits)
    labels = _labels_like(logits, y)
    batch = logits.shape[0]
    rows = xp.arange(batch)
    logp = log_softmax(logits)
    loss = -logp[rows, labels].mean()
    # d/dz of -log softmax(z)_y is softmax(z) - onehot(y); the mean divides by the batch.
    dlogits = xp.exp(logp)
    dlogits[rows, labels] -= 1
    dlogits /= batch
    return loss, dlogits


def loss_and_accuracy(logits: Array, y: Array) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) as Python floats, for ``Model.evaluate``."""
    labels = _labels_like(logits, y)
    rows = array_module(logits).arange(logits.shape[0])
    loss = -log_softmax(logits)[rows, labels].mean()
    # Count, then divide on the host: the dtype of mean() over a bool array is not the same in
    # NumPy and CuPy, and one integer crossing from the device is all this needs.
    correct = int((logits.argmax(axis=1) == labels).sum())
    return float(loss), correct / logits.shape[0]


def check_batch(x: Array, y: Array, n_features: int) -> None:
    """Refuse a batch whose shapes cannot belong to this model, with a message that says why."""
    if x.ndim != 2 or x.shape[1] != n_features:
        raise ValueError(f"x must have shape [batch, {n_features}], got {tuple(x.shape)}")
    if y.shape != (x.shape[0],):
        raise ValueError(f"y must have shape [{x.shape[0]}] to match x, got {tuple(y.shape)}")
    if x.shape[0] == 0:
        raise ValueError("empty batch")
