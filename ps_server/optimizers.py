"""Server-side optimizers. Their state lives on the shard beside the parameters it updates.

Updates are in place: a shard's parameters are allocated once, and the encoded copy that pulls
are served from is made separately, once per version.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

import numpy as np

from pscluster.settings import OptimizerName

Arrays = Mapping[str, np.ndarray]


class Optimizer(Protocol):
    def apply(self, params: Arrays, grads: Arrays, scale: float) -> None:
        """params <- update(params, scale * grads). ``grads`` may be overwritten (scratch)."""
        ...

    def state(self) -> dict[str, np.ndarray]:
        """Everything needed to resume exactly: for checkpoints and state hashes."""
        ...

    def load_state(self, state: Mapping[str, np.ndarray]) -> None: ...


class SGD:
    """Plain SGD, or heavy-ball momentum: v <- mu v + g; p <- p - lr v."""

    def __init__(self, params: Arrays, lr: float, momentum: float = 0.0) -> None:
        self.lr = lr
        self.momentum = momentum
        self._velocity = {name: np.zeros_like(p) for name, p in params.items()} if momentum else {}

    def apply(self, params: Arrays, grads: Arrays, scale: float) -> None:
        for name, p in params.items():
            g = grads[name]
            if self.momentum:
                v = self._velocity[name]
                v *= self.momentum
                v += g * np.float32(scale) if scale != 1.0 else g
                # p -= lr * v without a temporary as large as p: scale g in place (it is scratch).
                np.multiply(v, np.float32(self.lr), out=g)
            else:
                np.multiply(g, np.float32(self.lr * scale), out=g)
            p -= g

    def state(self) -> dict[str, np.ndarray]:
        return {f"velocity/{name}": v for name, v in self._velocity.items()}

    def load_state(self, state: Mapping[str, np.ndarray]) -> None:
        for name, v in self._velocity.items():
            np.copyto(v, state[f"velocity/{name}"])


class Adam:
    """Adam (Kingma and Ba 2015) with bias correction; its step count is its own."""

    def __init__(
        self, params: Arrays, lr: float, beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8
    ) -> None:
        self.lr, self.beta1, self.beta2, self.eps = lr, beta1, beta2, eps
        self._m = {name: np.zeros_like(p) for name, p in params.items()}
        self._v = {name: np.zeros_like(p) for name, p in params.items()}
        self._t = np.zeros((), dtype=np.int64)

    def apply(self, params: Arrays, grads: Arrays, scale: float) -> None:
        self._t += 1
        t = int(self._t)
        step = self.lr * np.sqrt(1 - self.beta2**t) / (1 - self.beta1**t)
        for name, p in params.items():
            g = grads[name]
            if scale != 1.0:
                g *= np.float32(scale)
            m, v = self._m[name], self._v[name]
            # In place, no temporaries as large as p: b m + (1 - b) g == b (m - g) + g.
            m -= g
            m *= self.beta1
            m += g
            np.square(g, out=g)  # g is scratch from here on
            v -= g
            v *= self.beta2
            v += g
            np.sqrt(v, out=g)
            g += np.float32(self.eps)
            np.divide(m, g, out=g)
            g *= np.float32(step)
            p -= g

    def state(self) -> dict[str, np.ndarray]:
        return {
            "t": self._t,
            **{f"m/{name}": m for name, m in self._m.items()},
            **{f"v/{name}": v for name, v in self._v.items()},
        }

    def load_state(self, state: Mapping[str, np.ndarray]) -> None:
        self._t[...] = state["t"]
        for name in self._m:
            np.copyto(self._m[name], state[f"m/{name}"])
            np.copyto(self._v[name], state[f"v/{name}"])


def build_optimizer(
    name: OptimizerName, params: Arrays, *, lr: float, momentum: float, beta1: float, beta2: float
) -> Optimizer:
    if name is OptimizerName.SGD:
        return SGD(params, lr)
    if name is OptimizerName.MOMENTUM:
        return SGD(params, lr, momentum)
    return Adam(params, lr, beta1, beta2)
