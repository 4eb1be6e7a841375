"""``--model torch_cnn``: a small convolutional network for the 8x8 digits, in PyTorch."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn


class DigitsCNN(nn.Module):
    """[B, side * side] -> [B, 1, side, side] -> two 3x3 convolutions (16, 32 channels, ReLU)
    -> 2x2 max-pool -> a ReLU layer of ``width`` -> logits. No buffers (no BatchNorm)."""

    def __init__(self, n_features: int, n_classes: int, width: int) -> None:
        super().__init__()
        side = math.isqrt(n_features)
        if side * side != n_features or side < 2:
            raise ValueError(
                f"torch_cnn needs square images: n_features = side * side, got {n_features}"
            )
        self.side = side
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        pooled = side // 2
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(32 * pooled * pooled, width),
            nn.ReLU(),
            nn.Linear(width, n_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The cluster hands every model float32 [B, n_features]; the image shape is ours.
        images = x.reshape(-1, 1, self.side, self.side)
        logits: torch.Tensor = self.classifier(self.features(images))
        return logits


def build(n_features: int, n_classes: int, hidden: Sequence[int]) -> nn.Module:
    """The factory ``--model torch_cnn`` calls; ``--hidden`` is the dense layer's width."""
    return DigitsCNN(n_features, n_classes, int(hidden[0]) if hidden else 64)
