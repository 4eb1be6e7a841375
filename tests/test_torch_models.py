"""PyTorch models under the adapter: gradients from autograd, parameters as views, seeded
initialisation, refusals, devices."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from launcher.up import torch_threads
from pscluster.datasets import load_dataset
from pscluster.models import build_model, is_torch
from pscluster.models.torch_adapter import TorchModel, torch_device


def tiny_net(n_features: int, n_classes: int, hidden: tuple[int, ...]) -> nn.Module:
    return nn.Sequential(
        nn.Linear(n_features, hidden[0]), nn.Tanh(), nn.Linear(hidden[0], n_classes)
    )


def smoothed(n_features: int, n_classes: int, hidden: tuple[int, ...]) -> tuple[nn.Module, object]:
    """A factory that brings its own loss: label smoothing."""
    return tiny_net(n_features, n_classes, hidden), nn.CrossEntropyLoss(label_smoothing=0.2)


def with_batchnorm(n_features: int, n_classes: int, hidden: tuple[int, ...]) -> nn.Module:
    return nn.Sequential(nn.Linear(n_features, 8), nn.BatchNorm1d(8), nn.Linear(8, n_classes))


def not_a_model(n_features: int, n_classes: int, hidden: tuple[int, ...]) -> object:
    return nn.Linear  # a class, not a module


def batch(n: int = 16) -> tuple[np.ndarray, np.ndarray]:
    data = load_dataset("digits", 0)
    # Fancy indexing, as the worker gathers a batch: writable copies (the dataset is read-only).
    return data.x_train[np.arange(n)], data.y_train[np.arange(n)]


def test_gradients_are_autograds_on_the_same_module() -> None:
    model = build_model(f"{__name__}:tiny_net", 64, 10, (12,))
    assert isinstance(model, TorchModel) and is_torch(model)
    params = model.init_parameters(4)
    x, y = batch()
    loss, grads = model.loss_and_gradients(params, x, y)
    # The reference: the module itself with these values loaded, and loss.backward().
    torch.manual_seed(4)
    reference = tiny_net(64, 10, (12,))
    expected_loss = nn.functional.cross_entropy(reference(torch.from_numpy(x)), torch.from_numpy(y))
    expected_loss.backward()
    assert loss == pytest.approx(float(expected_loss.detach()), rel=1e-6)
    assert list(grads) == [name for name, _ in reference.named_parameters()]
    for name, p in reference.named_parameters():
        assert grads[name].dtype == np.float32 and grads[name].shape == tuple(p.shape)
        assert p.grad is not None
        np.testing.assert_allclose(grads[name], p.grad.numpy(), rtol=1e-5, atol=1e-7)
    # Training moves the loss: a few plain SGD steps on the adapter's gradients.
    for _ in range(20):
        _, grads = model.loss_and_gradients(params, x, y)
        for name in params:
            params[name] -= 0.5 * grads[name]
    assert model.evaluate(params, x, y)[0] < 0.5 * loss


def test_parameters_go_in_as_views_and_gradients_come_out_as_arrays() -> None:
    model = build_model(f"{__name__}:tiny_net", 64, 10, (12,))
    assert isinstance(model, TorchModel)
    weights = model.init_parameters(0)["0.weight"]
    tensor = model._tensor(weights)
    assert np.shares_memory(tensor.numpy(), weights)  # no copy on the CPU
    # A change to the worker's array is what the next forward pass sees.
    weights[0, 0] = 7.0
    assert float(tensor[0, 0]) == 7.0


def test_initialisation_is_seeded_and_leaves_the_global_generator_alone() -> None:
    model = build_model(f"{__name__}:tiny_net", 64, 10, (12,))
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = model.init_parameters(5)
    b = model.init_parameters(5)
    c = model.init_parameters(6)
    assert torch.rand(1) == before  # fork_rng: the caller's stream is untouched
    for name in a:
        assert a[name].dtype == np.float32
        np.testing.assert_array_equal(a[name], b[name])
    assert any(not np.array_equal(a[name], c[name]) for name in a)


def test_a_factory_may_bring_its_loss() -> None:
    model = build_model(f"{__name__}:smoothed", 64, 10, (12,))
    params = model.init_parameters(1)
    x, y = batch()
    loss, _ = model.loss_and_gradients(params, x, y)
    torch.manual_seed(1)
    module = tiny_net(64, 10, (12,))
    plain = nn.functional.cross_entropy(module(torch.from_numpy(x)), torch.from_numpy(y))
    smooth = nn.CrossEntropyLoss(label_smoothing=0.2)(
        module(torch.from_numpy(x)), torch.from_numpy(y)
    )
    assert loss == pytest.approx(float(smooth.detach()), rel=1e-6)
    assert abs(float(smooth.detach()) - float(plain.detach())) > 1e-3


def test_buffers_and_non_models_are_refused_at_start() -> None:
    with pytest.raises(ValueError, match=r"buffers \(1\.running_mean.*GroupNorm"):
        build_model(f"{__name__}:with_batchnorm", 64, 10, (8,))
    with pytest.raises(TypeError, match=r"no torch\.nn\.Module"):
        build_model(f"{__name__}:not_a_model", 64, 10, (8,))
    with pytest.raises(ValueError, match="square images"):
        build_model("torch_cnn", 10, 3, (8,))


def test_torch_cnn_trains_on_digits_batches() -> None:
    model = build_model("torch_cnn", 64, 10, (32,))
    params = model.init_parameters(0)
    assert set(model.parameter_shapes()) == set(params)
    assert model.parameter_shapes()["features.0.weight"] == (16, 1, 3, 3)
    x, y = batch(64)
    first, _ = model.loss_and_gradients(params, x, y)
    velocity = {name: np.zeros_like(p) for name, p in params.items()}
    for _ in range(30):  # the job's default optimizer: momentum 0.9, lr 0.1
        _, grads = model.loss_and_gradients(params, x, y)
        for name in params:
            velocity[name] = 0.9 * velocity[name] + grads[name]
            params[name] -= 0.1 * velocity[name]
    loss, accuracy = model.evaluate(params, x, y)
    assert loss < 0.5 * first and accuracy > 0.6


def test_devices_and_threads() -> None:
    assert torch_device("auto", cuda_available=True) == "cuda"
    assert torch_device("auto", cuda_available=False) == "cpu"
    assert torch_device("numpy", cuda_available=True) == "cpu"
    assert torch_device("cupy", cuda_available=True) == "cuda"
    with pytest.raises(RuntimeError, match="GPU"):
        torch_device("cupy", cuda_available=False)
    # pscluster up shares a host's cores among its workers, one thread at least.
    assert [torch_threads(w, cores=16) for w in (1, 5, 16, 40)] == [16, 3, 1, 1]
    build_model(f"{__name__}:tiny_net", 64, 10, (4,), torch_threads=1)
    assert torch.get_num_threads() == 1
