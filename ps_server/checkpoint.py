"""A shard's checkpoints: written atomically, verified on load, the newest valid one wins.

A checkpoint is one file in the wire format (a ``[header, payload]`` frame): the header holds the
version, the shard index and a SHA-256 of the arrays; the payload holds the parameters, the
optimizer state and, when a sync step was being gathered, its running sum. Writing goes to a temp
file, is fsynced, then renamed over (and the directory fsynced), so a crash leaves either the old
file or the new one, never half of one. A file whose hash disagrees is reported and skipped.
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
    """SHA-256 over every array's name, dtype, shape and bytes, in name order."""
    digest = hashlib.sha256()
    for name in sorted(arrays):
        array = np.ascontiguousarray(arrays[name])
        digest.update(f"{name}|{array.dtype.str}|{array.shape}|".encode())
        digest.update(array.reshape(-1).view(np.uint8).data)
    return digest.hexdigest()


def encode_checkpoint(header: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> bytes:
    """Serialize (copying the arrays: the caller may go on updating them) with their hash."""
    return encode_frame({**header, "sha256": arrays_digest(arrays)}, arrays)


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
        body = path.read_bytes()
        try:
            frame = decode_frame(body)
        except ProtocolError as exc:
            raise CorruptCheckpoint(f"{path}: not a checkpoint frame ({exc.message})") from exc
        expected = frame.header.get("sha256")
        actual = arrays_digest(frame.arrays)
        if expected != actual:
            raise CorruptCheckpoint(
                f"{path}: arrays hash to {actual[:12]}, the file records {str(expected)[:12]}"
            )
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
