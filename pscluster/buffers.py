"""Large byte buffers reused across messages (receive buffers, a shard's reply frames)."""

from __future__ import annotations

import sys
import threading

import numpy as np


class BufferPool:
    """Large byte buffers kept for reuse, so that a 40 MB body or snapshot does not cost a fresh
    allocation each time (on a VM, faulting in and zeroing new memory costs more than the copy).

    A buffer is handed out again only once nothing refers to it: arrays decoded from a body and
    memoryviews still queued in a transport keep their buffer's reference count up, and while
    that is so the buffer is left alone. At most ``keep`` buffers are kept; small requests get a
    fresh buffer and are not kept.
    """

    SMALL = 1 << 16

    def __init__(self, keep: int = 8) -> None:
        self.keep = keep
        self._kept: list[np.ndarray] = []
        self._lock = threading.Lock()

    def take(self, nbytes: int) -> np.ndarray:
        """A writable uint8 array of ``nbytes``: a free kept buffer's, or a new one."""
        if nbytes < self.SMALL:
            return np.empty(nbytes, dtype=np.uint8)
        with self._lock:
            # Free: referenced only by the list and by getrefcount's own argument.
            free = [b for b in self._kept if sys.getrefcount(b) <= 3]
            fits = [b for b in free if nbytes <= b.nbytes <= 2 * nbytes]
            if fits:
                return min(fits, key=lambda b: b.nbytes)[:nbytes]
            buffer = np.empty(nbytes, dtype=np.uint8)
            if len(self._kept) >= self.keep and free:
                # Make room: forget the oldest free buffer (by identity: arrays compare by value).
                self._kept = [b for b in self._kept if b is not free[0]]
            if len(self._kept) < self.keep:
                self._kept.append(buffer)
            return buffer[:nbytes]


# The process's pool: receive buffers of the data plane and the shards' parameter snapshots.
BUFFERS = BufferPool()
