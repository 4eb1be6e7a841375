"""Server-side optimizers against their textbook formulas."""

from __future__ import annotations

import numpy as np
import torch

from ps_server.optimizers import SGD, Adam, apply
from pscluster.settings import AdamForm


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


def small_gradients(t: int) -> dict[str, np.ndarray]:
    # Gradients near eps (1e-8): where the two forms of Adam part ways, so each test below
    # would fail against the other form's reference.
    return {k: g * np.float32(1e-7) for k, g in arrays(20 + t).items()}


def run_adam(form: AdamForm, steps: int) -> dict[str, np.ndarray]:
    params = arrays(0)
    opt = Adam(params, lr=0.01, beta1=0.8, beta2=0.99, form=form)
    for t in range(1, steps + 1):
        apply(opt, params, {k: g.copy() for k, g in small_gradients(t).items()}, 1.0)
    return params


def largest_relative_error(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> float:
    return max(float(np.abs(a[k] - b[k]).max() / np.abs(b[k]).max()) for k in a)


def test_adam_torch_form_matches_torch_optim_adam() -> None:
    start = arrays(0)
    tensors = {k: torch.tensor(p, requires_grad=True) for k, p in start.items()}
    reference = torch.optim.Adam(list(tensors.values()), lr=0.01, betas=(0.8, 0.99), eps=1e-8)
    for t in range(1, 7):
        for k, g in small_gradients(t).items():
            tensors[k].grad = torch.tensor(g)
        reference.step()
    expected = {k: p.detach().numpy() for k, p in tensors.items()}
    ours = run_adam(AdamForm.TORCH, 6)
    assert largest_relative_error(ours, expected) < 1e-6
    # The parameters moved by far more than that: the comparison means something.
    assert largest_relative_error(start, expected) > 1e-3
    assert largest_relative_error(run_adam(AdamForm.KERAS, 6), expected) > 1e-3


def test_adam_keras_form_matches_its_formula() -> None:
    beta1, beta2, eps, lr = 0.8, 0.99, 1e-8, 0.01
    ref = {k: p.astype(np.float64) for k, p in arrays(0).items()}
    m = {k: np.zeros_like(p) for k, p in ref.items()}
    v = {k: np.zeros_like(p) for k, p in ref.items()}
    for t in range(1, 7):
        for k, g32 in small_gradients(t).items():
            g = g32.astype(np.float64)
            m[k] = beta1 * m[k] + (1 - beta1) * g
            v[k] = beta2 * v[k] + (1 - beta2) * g**2
            c1, c2 = 1 - beta1**t, 1 - beta2**t
            # The eps-hat form: lr sqrt(c2) / c1 * m / (sqrt(v) + eps).
            ref[k] -= lr * np.sqrt(c2) / c1 * m[k] / (np.sqrt(v[k]) + eps)
    ours = run_adam(AdamForm.KERAS, 6)
    assert largest_relative_error(ours, ref) < 1e-6
    assert largest_relative_error(run_adam(AdamForm.TORCH, 6), ref) > 1e-3


def test_adam_torch_form_keeps_to_torch_over_many_ordinary_steps() -> None:
    # The default betas and gradients of order one, scaled by 1/N as a sync step does: here a
    # second moment built as v - g^2, * b2, + g^2 (1 - float32(0.999), off by 1.3e-5) drifted
    # from torch.optim.Adam by 2e-5 of the distance moved; rounding 1 - b2 itself does not.
    rng = np.random.default_rng(0)
    start = (rng.standard_normal((50, 20)) * 1e-3).astype(np.float32)
    params = {"w": start.copy()}
    ours = Adam(params, lr=0.01)
    tensor = torch.tensor(start, requires_grad=True)
    reference = torch.optim.Adam([tensor], lr=0.01)
    for _ in range(20):
        g = rng.standard_normal((50, 20)).astype(np.float32)
        apply(ours, params, {"w": g * np.float32(3)}, 1 / 3)
        tensor.grad = torch.tensor(g)
        reference.step()
    expected = tensor.detach().numpy()
    moved = float(np.abs(expected - start).max())
    assert moved > 0.1
    assert float(np.abs(params["w"] - expected).max()) < 1e-6 * moved
