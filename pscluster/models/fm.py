"""A factorization machine (Rendle 2010) over categorical ids, for click prediction.

``logit = bias + sum_f w(x_f) + sum_{f<g} <v(x_f), v(x_g)>``: the linear weights ``w`` and the
factors ``v`` are rows of two embedding tables ("linear", dim 1; "factors", dim k), the bias a
dense parameter. Input ``x`` is int64 [batch, fields] ids; labels are 0/1. Hand-written
gradients, like the other built-in models: a row's gradient is the sum over the batch's
occurrences of its id.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from pscluster.models.base import Model
from pscluster.models.sparse import ZEROS, NormalInit, Rows, TableSpec, unique_ids

FACTORS = 8
FACTOR_INIT_STD = 0.05


def _segment_sum(positions: np.ndarray, weights: np.ndarray, n: int) -> np.ndarray:
    """Sum of ``weights`` [m] (or [m, d]) into ``n`` rows by ``positions`` [m], float32."""
    if weights.ndim == 1:
        return np.bincount(positions, weights=weights, minlength=n).astype(np.float32)
    out = np.empty((n, weights.shape[1]), dtype=np.float32)
    for j in range(weights.shape[1]):
        out[:, j] = np.bincount(positions, weights=weights[:, j], minlength=n)
    return out


class FactorizationMachine:
    """Binary classifier: tables "linear" [id, 1] and "factors" [id, k]; dense "bias" [1]."""

    def __init__(self, n_fields: int, factors: int = FACTORS, capacity: int | None = None) -> None:
        if n_fields < 1 or factors < 1:
            raise ValueError(f"need n_fields >= 1 and factors >= 1, got {n_fields}, {factors}")
        self.n_fields = n_fields
        self.factors = factors
        self.capacity = capacity

    # --- what the cluster needs -------------------------------------------------------------

    def parameter_shapes(self) -> dict[str, tuple[int, ...]]:
        return {"bias": (1,)}

    def init_parameters(self, seed: int) -> dict[str, np.ndarray]:
        return {"bias": np.zeros(1, dtype=np.float32)}

    def tables(self) -> dict[str, TableSpec]:
        return {
            "linear": TableSpec("linear", 1, ZEROS, self.capacity),
            "factors": TableSpec(
                "factors", self.factors, NormalInit(FACTOR_INIT_STD), self.capacity
            ),
        }

    def batch_ids(self, x: Any) -> dict[str, np.ndarray]:
        ids = unique_ids(x)
        return {"linear": ids, "factors": ids}

    # --- math ---------------------------------------------------------------------------------

    def _check(self, x: Any) -> np.ndarray:
        ids: np.ndarray = np.asarray(x)
        if ids.ndim != 2 or ids.shape[1] != self.n_fields or ids.shape[0] == 0:
            raise ValueError(f"x must be int ids of shape [batch>0, {self.n_fields}]: {ids.shape}")
        return ids

    def _forward(
        self, params: Mapping[str, Any], x: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(logits [B], positions of x in each table's rows, factors [B, F, k], their sum)."""
        linear, factors = params["linear"], params["factors"]
        assert isinstance(linear, Rows) and isinstance(factors, Rows)
        pos_w, pos_v = linear.positions(x), factors.positions(x)
        w = linear.values[pos_w, 0].astype(np.float64)  # [B, F]
        v = factors.values[pos_v].astype(np.float64)  # [B, F, k]
        total = v.sum(axis=1)  # [B, k]
        pairs = 0.5 * ((total * total).sum(axis=1) - (v * v).sum(axis=(1, 2)))
        logits = float(params["bias"][0]) + w.sum(axis=1) + pairs
        return logits, pos_w, pos_v, v, total

    def predict(self, params: Mapping[str, Any], x: Any) -> np.ndarray:
        logits = self._forward(params, self._check(x))[0]
        probabilities: np.ndarray = 1.0 / (1.0 + np.exp(-logits))
        return probabilities

    def loss_and_gradients(
        self, params: Mapping[str, Any], x: Any, y: Any
    ) -> tuple[float, dict[str, Any]]:
        x = self._check(x)
        y = np.asarray(y, dtype=np.float64)
        logits, pos_w, pos_v, v, total = self._forward(params, x)
        loss = _log_loss(logits, y)
        # d mean log-loss / d logit
        delta = (1.0 / (1.0 + np.exp(-logits)) - y) / len(y)
        linear, factors = params["linear"], params["factors"]
        n_fields = x.shape[1]
        grad_w = _segment_sum(pos_w.reshape(-1), np.repeat(delta, n_fields), len(linear.ids))
        # d pairs / d v_f = sum v - v_f
        dv = (total[:, None, :] - v) * delta[:, None, None]
        grad_v = _segment_sum(pos_v.reshape(-1), dv.reshape(-1, self.factors), len(factors.ids))
        grads: dict[str, Any] = {
            "bias": np.array([delta.sum()], dtype=np.float32),
            "linear": Rows(linear.ids, grad_w.reshape(-1, 1)),
            "factors": Rows(factors.ids, grad_v),
        }
        return loss, grads

    def evaluate(self, params: Mapping[str, Any], x: Any, y: Any) -> tuple[float, float]:
        """(mean log-loss, accuracy at threshold 0.5)."""
        x = self._check(x)
        y = np.asarray(y, dtype=np.float64)
        logits = self._forward(params, x)[0]
        return _log_loss(logits, y), float(((logits > 0) == (y > 0.5)).mean())


def _log_loss(logits: np.ndarray, y: np.ndarray) -> float:
    # log(1 + e^z) - y z, computed stably for large |z|.
    return float((np.logaddexp(0.0, logits) - y * logits).mean())


def build_fm(n_features: int, n_classes: int, hidden: Sequence[int] = ()) -> Model:
    """The ``fm`` built-in: one field per feature column, ``FACTORS`` factors per id (``hidden``
    is for the mlp and ignored here, so one job spec can switch models)."""
    if n_classes != 2:
        raise ValueError(f"fm is a binary classifier; the dataset has {n_classes} classes")
    return FactorizationMachine(n_features)
