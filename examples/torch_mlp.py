"""An example user model: a PyTorch MLP with LayerNorm, trained with its own loss.

Nothing in it knows about the cluster; it is named by module path (run from the repository's
root, so that ``examples`` is importable):

    pscluster up --model examples.torch_mlp:build --hidden 128,64 --dataset digits

The cluster calls ``build(n_features=..., n_classes=..., hidden=...)`` with the dataset's sizes
and ``--hidden``. It may return a module (the loss is then cross-entropy on its outputs) or, as
here, ``(module, loss_fn)``. The module receives float32 ``[batch, n_features]``.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn


def build(n_features: int, n_classes: int, hidden: Sequence[int]) -> tuple[nn.Module, nn.Module]:
    layers: list[nn.Module] = []
    width = n_features
    for size in hidden:
        # LayerNorm keeps no running statistics (BatchNorm's buffers would be refused).
        layers += [nn.Linear(width, size), nn.LayerNorm(size), nn.GELU()]
        width = size
    layers.append(nn.Linear(width, n_classes))
    return nn.Sequential(*layers), nn.CrossEntropyLoss(label_smoothing=0.05)
