"""Input checks: a push's gradients match this shard's parameters and are finite, or the push is
refused with an ``ErrorCode``."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from ps_server.kernels import flat, for_each_block
from ps_server.state.core import OwnedGradients, ShardCore
from pscluster.protocol import ErrorCode, ProtocolError, all_finite


class Validation(ShardCore):
    def validate_gradients(
        self, arrays: Mapping[str, np.ndarray], *, owned: bool = False
    ) -> dict[str, np.ndarray]:
        """Every array of this shard, of the right dtype and shape, all finite; else refuse.

        The right dtype is the shard's own (float32) or the job's wire dtype: 16-bit gradients
        are summed into the float32 running sum, upcast on the way. One pass over each array.
        ``owned``: the arrays are the shard's to keep and overwrite (views of a request body
        nobody else holds), so the first gradient of a step can become the running sum as is.
        """
        for key in arrays:
            if key not in self.params:
                raise ProtocolError(ErrorCode.UNKNOWN_PARAMETER, f"shard has no parameter {key!r}")
        wire = self._wire
        grads: dict[str, np.ndarray] = {}
        for key, param in self.params.items():
            grad = arrays.get(key)
            if grad is None:
                raise ProtocolError(ErrorCode.MISSING_PARAMETER, f"push lacks {key!r}")
            if grad.dtype != param.dtype and grad.dtype != wire:
                raise ProtocolError(
                    ErrorCode.BAD_DTYPE,
                    f"{key!r}: {grad.dtype}, shard takes {param.dtype} or the job's {wire}",
                )
            if grad.shape != param.shape:
                raise ProtocolError(
                    ErrorCode.BAD_SHAPE, f"{key!r}: shape {grad.shape}, shard holds {param.shape}"
                )
            # Block passes need flat views (a gradient off the wire always is contiguous).
            grads[key] = grad if grad.flags.c_contiguous else np.ascontiguousarray(grad)
        if self._inline:
            # Small: one check per array here, no block plan.
            bad = [key for key, grad in grads.items() if not all_finite(grad)]
            if bad:
                raise ProtocolError(ErrorCode.NOT_FINITE, f"{min(bad)!r} holds NaN or Inf")
            return OwnedGradients(grads) if owned else grads
        not_finite: list[str] = []

        def finite(name: str, span: slice) -> bool:
            if all_finite(flat(grads[name])[span]):
                return True
            not_finite.append(name)
            return False

        if not for_each_block(self._sizes, finite, blocked=False):
            raise ProtocolError(ErrorCode.NOT_FINITE, f"{min(not_finite)!r} holds NaN or Inf")
        return OwnedGradients(grads) if owned else grads
