"""Server-side optimizers against their textbook formulas."""

from __future__ import annotations

import numpy as np

from ps_server.optimizers import SGD, Adam, apply


def arrays(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "w": rng.standard_normal((4, 3)).astype(np.float32),
        "b": rng.standard_normal(3).astype(np.float32),
    }


def test_sgd_is_p_minus_lr_scale_g() -> None:
    params, grads = arrays(0), arrays(1)
    expected = {k: params[k] - 0.1 * 0.5 * grads[k] for k in params}
    apply(SGD(params, lr=0.1), params, {k: g.copy() for k, g in grads.items()}, 0.5)
    for k in params:
        np.testing.assert_allclose(params[k], expected[k], rtol=1e-6)


def test_momentum_two_steps() -> None:
    params, g1, g2 = arrays(0), arrays(1), arrays(2)
    start = {k: p.copy() for k, p in params.items()}
    opt = SGD(params, lr=0.1, momentum=0.9)
    apply(opt, params, {k: g.copy() for k, g in g1.items()}, 1.0)
    apply(opt, params, {k: g.copy() for k, g in g2.items()}, 1.0)
    for k in params:
        v1 = g1[k]
        v2 = 0.9 * v1 + g2[k]
        np.testing.assert_allclose(params[k], start[k] - 0.1 * v1 - 0.1 * v2, rtol=1e-5)
    # The state is everything needed to resume.
    assert set(opt.state()) == {"velocity/w", "velocity/b"}


def test_adam_matches_reference() -> None:
    params, start = arrays(0), arrays(0)
    opt = Adam(params, lr=0.01)
    m = {k: np.zeros_like(p) for k, p in start.items()}
    v = {k: np.zeros_like(p) for k, p in start.items()}
    ref = {k: p.astype(np.float64) for k, p in start.items()}
    for t in range(1, 4):
        g = arrays(10 + t)
        apply(opt, params, {k: x.copy() for k, x in g.items()}, 0.5)
        for k in ref:
            gk = 0.5 * g[k].astype(np.float64)
            m[k] = 0.9 * m[k] + 0.1 * gk
            v[k] = 0.999 * v[k] + 0.001 * gk**2
            mhat, vhat = m[k] / (1 - 0.9**t), v[k] / (1 - 0.999**t)
            ref[k] -= 0.01 * mhat / (np.sqrt(vhat) + 1e-8)
    for k in ref:
        np.testing.assert_allclose(params[k], ref[k], rtol=1e-4, atol=1e-6)
    restored = Adam(arrays(5), lr=0.01)
    restored.load_state(opt.state())
    assert int(restored.state()["t"]) == 3
