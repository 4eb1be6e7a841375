"""A shard's checkpoints: written atomically, verified on load, the newest valid one wins.

A checkpoint file is a SHA-256 digest followed by one frame in the wire format: its header holds
the version and the shard index, its arrays the parameters, the optimizer state and, when a sync
step was being gathered, its running sum. Writing goes to a temp file, is fsynced, then renamed
over (and the directory fsynced), so a crash leaves either the old file or the new one, never half
of one. A file whose digest disagrees is reported and skipped.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pscluster.protocol import ProtocolError, decode_frame, encode_frame

log = logging.getLogger(__name__)

PREFIX = "checkpoint-"
SUFFIX = ".psc"
DIGEST_BYTES = 32
KEEP = 2  # the newest two: if the newest turns out corrupt, the one before it still loads


class CorruptCheckpoint(Exception):
    pass


@dataclass(frozen=True)
class Checkpoint:
    path: Path
    header: dict[str, Any]
    arrays: dict[str, np.ndarray]

    @property
    def version(self) -> int:
        return int(self.header["version"])


def arrays_digest(arrays: Mapping[str, np.ndarray]) -> str:
    """SHA-256 over every array's name, dtype, shape and bytes, in name order (a state hash)."""
    digest = hashlib.sha256()
    for name in sorted(arrays):
        array = np.ascontiguousarray(arrays[name])
        digest.update(f"{name}|{array.dtype.str}|{array.shape}|".encode())
        digest.update(array.reshape(-1).view(np.uint8).data)
    return digest.hexdigest()


def encode_checkpoint(header: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> bytes:
    """The file's bytes: a SHA-256 of the frame, then the frame (which copies the arrays, so the
    caller may go on updating them)."""
    frame = encode_frame(header, arrays)
    return hashlib.sha256(frame).digest() + frame


class CheckpointStore:
    def __init__(self, directory: Path, shard: int) -> None:
        self.directory = directory
        self.shard = shard
        directory.mkdir(parents=True, exist_ok=True)

    def path_for(self, version: int) -> Path:
        return self.directory / f"{PREFIX}{self.shard}-{version:010d}{SUFFIX}"

    def write(self, version: int, body: bytes) -> Path:
        """Atomically: temp file, fsync, rename, fsync the directory. Keeps the newest KEEP."""
        final = self.path_for(version)
        tmp = final.with_suffix(".tmp")
        with open(tmp, "wb") as f:
            f.write(body)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)
        dir_fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        for old in self.paths()[KEEP:]:
            old.unlink(missing_ok=True)
        return final

    def paths(self) -> list[Path]:
        """This shard's checkpoint files, newest first."""
        return sorted(self.directory.glob(f"{PREFIX}{self.shard}-*{SUFFIX}"), reverse=True)

    def load(self, path: Path) -> Checkpoint:
        data = memoryview(path.read_bytes())
        recorded, frame_bytes = bytes(data[:DIGEST_BYTES]), data[DIGEST_BYTES:]
        if len(data) <= DIGEST_BYTES or hashlib.sha256(frame_bytes).digest() != recorded:
            raise CorruptCheckpoint(f"{path}: content does not match its SHA-256 hash")
        try:
            frame = decode_frame(frame_bytes)
        except ProtocolError as exc:
            raise CorruptCheckpoint(f"{path}: not a checkpoint frame ({exc.message})") from exc
        if frame.header.get("shard") != self.shard:
            raise CorruptCheckpoint(f"{path}: written by shard {frame.header.get('shard')}")
        return Checkpoint(path, frame.header, frame.arrays)

    def newest_valid(self) -> Checkpoint | None:
        """The newest checkpoint that verifies; corrupt ones are reported loudly and skipped."""
        for path in self.paths():
            try:
                return self.load(path)
            except CorruptCheckpoint as exc:
                log.error("corrupt checkpoint skipped: %s", exc)
        return None
