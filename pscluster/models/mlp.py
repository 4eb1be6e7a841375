"""A multi-layer perceptron with one or two ReLU hidden layers and hand-written backprop."""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence

import numpy as np

from pscluster.models.base import (
    Array,
    check_batch,
    he_normal,
    loss_and_accuracy,
    softmax_cross_entropy,
)

MAX_HIDDEN_LAYERS = 2


class MLP:
    """x -> [Linear -> ReLU] x len(hidden) -> Linear -> logits.

    Layer i (1-based) has weight "w{i}" [fan_in, fan_out] and bias "b{i}" [fan_out].
    """

    def __init__(self, n_features: int, n_classes: int, hidden: Sequence[int]) -> None:
        hidden = tuple(int(h) for h in hidden)
        if not 1 <= len(hidden) <= MAX_HIDDEN_LAYERS:
            raise ValueError(
                f"MLP takes 1 to {MAX_HIDDEN_LAYERS} hidden layer widths, got {len(hidden)}: "
                f"{hidden}"
            )
        if any(h <= 0 for h in hidden):
            raise ValueError(f"hidden layer widths must be positive, got {hidden}")
        if n_features <= 0 or n_classes <= 1:
            raise ValueError(
                f"need n_features >= 1 and n_classes >= 2, got {n_features} and {n_classes}"
            )
        self.n_features = n_features
        self.n_classes = n_classes
        self.hidden = hidden
        widths = (n_features, *hidden, n_classes)
        self._layer_shapes = list(itertools.pairwise(widths))

    def parameter_shapes(self) -> dict[str, tuple[int, ...]]:
        shapes: dict[str, tuple[int, ...]] = {}
        for i, (fan_in, fan_out) in enumerate(self._layer_shapes, start=1):
            shapes[f"w{i}"] = (fan_in, fan_out)
            shapes[f"b{i}"] = (fan_out,)
        return shapes

    def init_parameters(self, seed: int) -> dict[str, np.ndarray]:
        params: dict[str, np.ndarray] = {}
        for i, shape in enumerate(self._layer_shapes, start=1):
            params[f"w{i}"] = he_normal(seed, f"w{i}", shape)
            params[f"b{i}"] = np.zeros(shape[1], dtype=np.float32)
        return params

    def _forward(self, params: Mapping[str, Array], x: Array) -> tuple[Array, list[Array]]:
        """Logits and the input of every layer (the activations backprop needs)."""
        inputs = [x]
        h = x
        n_layers = len(self._layer_shapes)
        for i in range(1, n_layers + 1):
            z = h @ params[f"w{i}"] + params[f"b{i}"]
            if i == n_layers:
                return z, inputs
            # ReLU via multiplication keeps the dtype and works the same on NumPy and CuPy.
            h = z * (z > 0)
            inputs.append(h)
        raise AssertionError("unreachable: an MLP has at least two layers")

    def loss_and_gradients(
        self, params: Mapping[str, Array], x: Array, y: Array
    ) -> tuple[float, dict[str, Array]]:
        check_batch(x, y, self.n_features)
        logits, inputs = self._forward(params, x)
        loss, delta = softmax_cross_entropy(logits, y)
        grads: dict[str, Array] = {}
        for i in range(len(self._layer_shapes), 0, -1):
            w, b, h = params[f"w{i}"], params[f"b{i}"], inputs[i - 1]
            # Gradients take the parameters' dtype (float32 in the cluster), even if x was wider.
            grads[f"w{i}"] = (h.T @ delta).astype(w.dtype, copy=False)
            grads[f"b{i}"] = delta.sum(axis=0).astype(b.dtype, copy=False)
            if i > 1:
                # h = relu(z) and h > 0 exactly where z > 0, so the stored activation is the mask.
                delta = (delta @ w.T) * (h > 0)
        # Same order as parameter_shapes, so callers may rely on iteration order.
        return float(loss), {name: grads[name] for name in self.parameter_shapes()}

    def evaluate(self, params: Mapping[str, Array], x: Array, y: Array) -> tuple[float, float]:
        check_batch(x, y, self.n_features)
        logits, _ = self._forward(params, x)
        return loss_and_accuracy(logits, y)
