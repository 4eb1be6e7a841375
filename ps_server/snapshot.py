"""The reply frame of a shard's current version: written by the update, lent to each reply.

Every reply and pull of a version is written from one frame, encoded once. The next update may
overwrite that frame in place (no new buffer, no copy) only when no reply still holds any of it;
a reply holds it from ``lend`` until the transport has handed its last byte to the kernel. Each
loan is its own view of the payload, with a finalizer that counts it back in, so "nobody holds
it" is exact and needs no bookkeeping on the sending side: a loan ends when its last memoryview
is dropped.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Mapping
from typing import Any

import numpy as np

from ps_server.kernels import flat, for_each_block
from pscluster.protocol import EncodedFrame, layout_of, snapshot_target

# A payload up to this size is copied for its replies instead of lent: a copy of 32 KiB takes
# about what a loan's finalizer does.
COPIED_BYTES = 1 << 15


class _Loans:
    """How many loans are out. Apart from the snapshot, so that finalizers do not keep it alive;
    locked, as a loan may end on any thread that drops the last reference."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.out = 0

    def lent(self) -> None:
        with self._lock:
            self.out += 1

    def returned(self) -> None:
        with self._lock:
            self.out -= 1


class Snapshot:
    def __init__(
        self, header: Mapping[str, Any], like: Mapping[str, np.ndarray], dtype: str | None
    ) -> None:
        """An empty frame for arrays shaped like ``like``, in ``dtype`` (None: their own); the
        caller fills ``arrays`` (an update writes them as it goes, or ``fill``)."""
        self.layout, self._payload, self.arrays = snapshot_target(like, dtype)
        self.header = dict(header)
        self._loans = _Loans()
        self._copy: bytes | None = None  # a small payload's bytes, for every reply of a version

    def fill(self, source: Mapping[str, np.ndarray]) -> None:
        """Copy ``source`` in, converted to the frame's dtype, split across cores."""

        def copy(name: str, span: slice) -> None:
            np.copyto(flat(self.arrays[name])[span], flat(source[name])[span], "same_kind")

        for_each_block({name: a.size for name, a in self.arrays.items()}, copy, blocked=False)

    @property
    def lent(self) -> bool:
        """Whether a reply still holds part of the frame (then it must not be overwritten)."""
        return self._loans.out > 0

    def lend(self, fields: Mapping[str, Any] | None = None) -> EncodedFrame:
        """The frame, for one reply: its payload through a view of its own, whose life is the
        loan's, under the version's header with the reply's own ``fields`` added (its status,
        how long it was held: a few bytes of prefix encoded per reply, the payload never)."""
        prefix = self.layout.prefix({**fields, **self.header} if fields else self.header)
        if self.layout.size <= COPIED_BYTES:
            # Small: the version's bytes copied once and shared by its replies, no loan (that
            # costs more than the copy), so the next update may always write in place.
            copy = self._copy
            if copy is None:
                copy = self._copy = self._payload.tobytes()
            return EncodedFrame((prefix, copy), len(prefix) + len(copy))
        view = self._lent_payload()
        return EncodedFrame((prefix, view.data), len(prefix) + view.nbytes)

    def _lent_payload(self) -> np.ndarray:
        """A view of the version's payload for one reply, counted out until it is dropped (an
        update writes out of place while any is out)."""
        view = self._payload[:]
        self._loans.lent()
        weakref.finalize(view, self._loans.returned)
        return view

    def lend_with(self, fields: Mapping[str, Any], extra: Mapping[str, np.ndarray]) -> EncodedFrame:
        """The frame with ``extra`` arrays after the version's own (a sparse reply's rows, which
        differ per message): the version's payload lent as by ``lend``, under a layout that adds
        them, so only their bytes are new. Laid out in order, the version's arrays keep their
        offsets in the longer frame."""
        specs = {name: (a.dtype, a.shape) for name, a in self.arrays.items()}
        specs.update({name: (a.dtype, a.shape) for name, a in extra.items()})
        layout = layout_of(specs)
        prefix = layout.prefix({**fields, **self.header})
        buffers: list[bytes | memoryview] = [prefix, self._lent_payload().data]
        end = self.layout.size
        for name, array in extra.items():
            offset, nbytes = layout.arrays[name][2:]
            if offset > end:
                buffers.append(bytes(offset - end))
            if nbytes:
                buffers.append(np.ascontiguousarray(array).reshape(-1).view(np.uint8).data)
            end = offset + nbytes
        return EncodedFrame(tuple(buffers), len(prefix) + end)

    def reheader(self, header: Mapping[str, Any]) -> None:
        """The same payload under a new header (a new version, after an update in place)."""
        self.header = dict(header)
        self._copy = None
