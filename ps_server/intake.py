"""A push body's gradients checked for NaN and Inf while the body arrives.

The check reads every byte of a gradient. Run after the body is in, it is one more pass over
memory (a few milliseconds for 40 MB); run on each megabyte as it lands, it reads bytes the
kernel has just written and that are still in the CPU's cache, on the event loop, while it would
otherwise wait for the next bytes from the network.
"""

from __future__ import annotations

import numpy as np

from pscluster.protocol import ProtocolError, all_finite, decode_frame, payload_start

# Check whenever this many more bytes have arrived (and once the body is complete): large enough
# that the per-call overhead is small, small enough that the bytes are still in cache.
STEP_BYTES = 1 << 20


class FiniteAsItArrives:
    """A ``progress`` callback for ``read_frame_body``: checks each array's elements as soon as
    all their bytes are in. ``verdicts`` then says, for every array it could check to its end,
    whether it is all finite. Anything it cannot make sense of (a malformed body) it leaves
    alone: the decode after the read refuses that body with the right error."""

    def __init__(self) -> None:
        self._next = 0
        self._arrays: dict[str, tuple[np.ndarray, int]] | None = None  # flat view, byte offset
        self._checked: dict[str, int] = {}  # elements checked so far
        self._finite: dict[str, bool] = {}
        self._gave_up = False

    def __call__(self, body: memoryview, filled: int) -> None:
        if self._gave_up or (filled < self._next and filled < len(body)):
            return
        self._next = filled + STEP_BYTES
        if self._arrays is None and not self._locate(body, filled):
            return
        assert self._arrays is not None
        for name, (flat, offset) in self._arrays.items():
            done = self._checked[name]
            ready = min(flat.size, max(0, (filled - offset) // flat.itemsize))
            if ready > done:
                if self._finite[name] and not all_finite(flat[done:ready]):
                    self._finite[name] = False
                self._checked[name] = ready

    def _locate(self, body: memoryview, filled: int) -> bool:
        """Find the arrays once the header is in: views of the (still filling) body."""
        try:
            if payload_start(body[:filled]) is None:
                return False
            arrays = decode_frame(body).arrays
        except ProtocolError:
            self._gave_up = True
            return False
        base = np.frombuffer(body, np.uint8).ctypes.data
        self._arrays = {
            name: (array.reshape(-1), array.ctypes.data - base) for name, array in arrays.items()
        }
        self._checked = dict.fromkeys(arrays, 0)
        self._finite = dict.fromkeys(arrays, True)
        return True

    def verdicts(self) -> dict[str, bool]:
        """Array name -> all finite, for the arrays checked to their last element."""
        if self._arrays is None:
            return {}
        return {
            name: self._finite[name]
            for name, (flat, _) in self._arrays.items()
            if self._checked[name] == flat.size
        }
