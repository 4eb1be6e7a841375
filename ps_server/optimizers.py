"""Server-side optimizers. Their state lives on the shard beside the parameters it updates.

Updates are in place and elementwise: a shard's parameters are allocated once, and an update runs
block by block (``apply``), so that the copy of the new parameters into the reply snapshot, and
the step's last gradient added to the sum, ride in the same pass over memory.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

import numpy as np

from ps_server.kernels import flat, for_each_block
from pscluster.settings import AdamForm, OptimizerName

Arrays = Mapping[str, np.ndarray]


class Optimizer(Protocol):
    def begin_step(self) -> None:
        """Once per update, before its blocks (Adam counts its steps here)."""
        ...

    def update_block(
        self,
        name: str,
        span: slice,
        p: np.ndarray,
        g: np.ndarray,
        scale: float,
        out: np.ndarray | None = None,
    ) -> None:
        """out <- update(p, scale * g) for one block (``out`` None: p, in place). ``p``, ``g``
        and ``out`` are the block's elements of parameter ``name``: ``span`` of its flat
        elements, where the block of the optimizer's own state lies too. ``g`` is scratch."""
        ...

    def state(self) -> dict[str, np.ndarray]:
        """Everything needed to resume exactly: for checkpoints and state hashes."""
        ...

    def load_state(self, state: Mapping[str, np.ndarray]) -> None: ...


def apply(
    optimizer: Optimizer,
    params: Arrays,
    grads: Arrays,
    scale: float,
    *,
    fold: Arrays | None = None,
    fold_adds: bool = True,
    out: Arrays | None = None,
    snapshot: Arrays | None = None,
) -> None:
    """One update of all ``params`` from ``grads`` (scratch: overwritten), block by block and
    split across cores (see ``kernels``), with more passes folded into the same one:

    - ``fold``: a gradient added into ``grads`` first (``fold_adds``), or copied into it (the
      arrays it holds; 16-bit ones are upcast): a sync step's last push, an async push;
    - ``out``: where the new parameters go, instead of over ``params`` (a shard writes them
      straight into the new version's reply frame: no copy to make one);
    - ``snapshot``: each block of the new parameters also copied there, converted to its
      dtype, while still in cache: a 16-bit reply frame.
    """
    optimizer.begin_step()
    sizes = {name: p.size for name, p in params.items()}

    def block(name: str, span: slice) -> None:
        g = flat(grads[name])[span]
        if fold is not None and name in fold:
            incoming = flat(fold[name])[span]
            if fold_adds:
                np.add(g, incoming, out=g)
            else:
                np.copyto(g, incoming)
        p = flat(params[name])[span]
        new = p if out is None else flat(out[name])[span]
        optimizer.update_block(name, span, p, g, scale, new)
        if snapshot is not None:
            np.copyto(flat(snapshot[name])[span], new, casting="same_kind")

    for_each_block(sizes, block)


class SGD:
    """Plain SGD, or heavy-ball momentum: v <- mu v + g; p <- p - lr v."""

    def __init__(self, params: Arrays, lr: float, momentum: float = 0.0) -> None:
        self.lr = lr
        self.momentum = momentum
        self._velocity = {name: np.zeros_like(p) for name, p in params.items()} if momentum else {}

    def begin_step(self) -> None:
        pass

    def update_block(
        self,
        name: str,
        span: slice,
        p: np.ndarray,
        g: np.ndarray,
        scale: float,
        out: np.ndarray | None = None,
    ) -> None:
        if self.momentum:
            if scale != 1.0:
                g *= np.float32(scale)
            v = flat(self._velocity[name])[span]
            v *= np.float32(self.momentum)
            v += g
            # p -= lr * v without a temporary: g is scratch.
            np.multiply(v, np.float32(self.lr), out=g)
        else:
            g *= np.float32(self.lr * scale)
        np.subtract(p, g, out=p if out is None else out)

    def state(self) -> dict[str, np.ndarray]:
        return {f"velocity/{name}": v for name, v in self._velocity.items()}

    def load_state(self, state: Mapping[str, np.ndarray]) -> None:
        for name, v in self._velocity.items():
            np.copyto(v, state[f"velocity/{name}"])


class Adam:
    """Adam (Kingma and Ba 2015) with bias correction; its step count is its own.

    With c1 = 1 - beta1^t and c2 = 1 - beta2^t, ``form`` says where the corrections go:
    - torch (textbook, ``torch.optim.Adam``): p -= lr (m / c1) / (sqrt(v) / sqrt(c2) + eps);
    - keras (the eps-hat form of section 2): p -= lr sqrt(c2) / c1 m / (sqrt(v) + eps).
    They differ where sqrt(v) is not large against eps: early steps and small gradients.
    """

    def __init__(
        self,
        params: Arrays,
        lr: float,
        beta1: float = 0.9,
        beta2: float = 0.999,
        eps: float = 1e-8,
        form: AdamForm = AdamForm.TORCH,
    ) -> None:
        self.lr, self.beta1, self.beta2, self.eps, self.form = lr, beta1, beta2, eps, form
        self._m = {name: np.zeros_like(p) for name, p in params.items()}
        self._v = {name: np.zeros_like(p) for name, p in params.items()}
        self._t = np.zeros((), dtype=np.int64)
        self._step = np.float32(0.0)
        self._root_c2 = np.float32(1.0)  # torch form: sqrt(v) is divided by sqrt(c2)

    def begin_step(self) -> None:
        self._t += 1
        t = int(self._t)
        c1, c2 = 1 - self.beta1**t, 1 - self.beta2**t
        if self.form is AdamForm.KERAS:
            self._step = np.float32(self.lr * np.sqrt(c2) / c1)
        else:
            self._step = np.float32(self.lr / c1)
            self._root_c2 = np.float32(np.sqrt(c2))

    def update_block(
        self,
        name: str,
        span: slice,
        p: np.ndarray,
        g: np.ndarray,
        scale: float,
        out: np.ndarray | None = None,
    ) -> None:
        if scale != 1.0:
            g *= np.float32(scale)
        m, v = flat(self._m[name])[span], flat(self._v[name])[span]
        # In place, no temporaries: b m + (1 - b) g == b (m - g) + g.
        m -= g
        m *= np.float32(self.beta1)
        m += g
        # b2 v + (1 - b2) g^2 with 1 - b2 rounded to float32 itself: 1 - float32(0.999) is off
        # by 1.3e-5 relative, which a v -= g^2; v *= b2; v += g^2 pass would carry into every
        # step (torch.optim.Adam rounds 1 - b2, as here).
        np.square(g, out=g)  # g is scratch from here on
        g *= np.float32(1 - self.beta2)
        v *= np.float32(self.beta2)
        v += g
        np.sqrt(v, out=g)
        if self.form is AdamForm.TORCH:
            g /= self._root_c2
        g += np.float32(self.eps)
        np.divide(m, g, out=g)
        g *= self._step
        np.subtract(p, g, out=p if out is None else out)

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
    name: OptimizerName,
    params: Arrays,
    *,
    lr: float,
    momentum: float,
    beta1: float,
    beta2: float,
    adam_form: AdamForm = AdamForm.TORCH,
) -> Optimizer:
    if name is OptimizerName.SGD:
        return SGD(params, lr)
    if name is OptimizerName.MOMENTUM:
        return SGD(params, lr, momentum)
    return Adam(params, lr, beta1, beta2, form=adam_form)
