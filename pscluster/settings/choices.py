"""The settings' closed choices, each a ``StrEnum`` whose values are what the variables take."""

from __future__ import annotations

from enum import StrEnum


class Mode(StrEnum):
    SYNC = "sync"
    ASYNC = "async"
    SSP = "ssp"  # bounded staleness: applied as in async, no worker more than S steps ahead

    @property
    def applies_on_arrival(self) -> bool:
        """async and ssp apply each gradient as it arrives; sync averages N per step."""
        return self is not Mode.SYNC


class OptimizerName(StrEnum):
    SGD = "sgd"
    MOMENTUM = "momentum"
    ADAM = "adam"


class AdamForm(StrEnum):
    """Where Adam's bias corrections go (c1 = 1 - beta1^t, c2 = 1 - beta2^t)."""

    TORCH = "torch"  # textbook, as torch.optim.Adam: lr (m / c1) / (sqrt(v / c2) + eps)
    KERAS = "keras"  # eps-hat form (Kingma and Ba, section 2): lr sqrt(c2) / c1 m / (sqrt(v) + eps)


class SparseOptimizerName(StrEnum):
    SGD = "sgd"
    ADAGRAD = "adagrad"  # per coordinate of each row (Duchi et al. 2011)


class StalenessPolicy(StrEnum):
    NONE = "none"  # apply stale gradients at full strength
    INVERSE = "inverse"  # scale by 1/staleness for staleness >= 1 (Zhang et al. 2016)
    INVERSE_PLUS_ONE = "inverse_plus_one"  # scale by 1/(1 + staleness)


class DataMode(StrEnum):
    SHARD = "shard"  # each worker walks its own disjoint part of the training set
    SAMPLE = "sample"  # each worker samples batches from the whole training set


class DelayKind(StrEnum):
    NONE = "none"
    FIXED = "fixed"  # every step sleeps delay_s * delay_factor
    EXPONENTIAL = "exponential"  # shifted exponential: delay_s * factor * (1 + Exp(1))
    LONG_TAIL = "long_tail"  # usually delay_s * factor, with probability 5% twenty times that


class WireDtype(StrEnum):
    FLOAT32 = "float32"  # exact
    FLOAT16 = "float16"  # half the bytes; 11-bit mantissa, range +-65504
    BFLOAT16 = "bfloat16"  # half the bytes; float32's range, 8-bit mantissa


class Backend(StrEnum):
    AUTO = "auto"  # CuPy when it and a GPU are present, NumPy otherwise
    NUMPY = "numpy"
    CUPY = "cupy"
