"""A shard's checkpoints: written atomically, verified on load, kept as long as a cut needs them.

A checkpoint file is a SHA-256 digest followed by one frame in the wire format: its header holds
the version and the shard index, its arrays the parameters, the optimizer state and, when a sync
step was being gathered, its running sum. Writing goes to a temp file, is fsynced, then renamed
over (and the directory fsynced), so a crash leaves either the old file or the new one, never half
of one. A file whose digest disagrees is reported and skipped.

Which files stay (``versions_to_delete``): in async and ssp mode a shard resumes from its own
newest checkpoint, so the newest two are enough (the older one for a corrupt newest). In sync mode
every shard resumes from one version all of them hold (the consistent cut,
``coordinator.recovery``): a shard keeps every checkpoint from the newest version the coordinator
last saw on every shard (``keep_from``) on, at most ``MAX_KEPT``.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Mapping, Sequence
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
# Sync: the most a shard keeps while it waits to hear which versions every shard holds (a
# coordinator that is down); the cut is the newest common one, one or two checkpoints back.
MAX_KEPT = 16


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


def versions_to_delete(
    versions: Sequence[int], *, keep_from: int | None, keep_newest: int
) -> list[int]:
    """The checkpoints a shard may delete: those older than ``keep_from`` (every shard holds a
    newer one), and any beyond the newest ``keep_newest``; never the newest."""
    newest_first = sorted(set(versions), reverse=True)
    drop = set(newest_first[max(1, keep_newest) :])
    if keep_from is not None:
        drop |= {v for v in newest_first[1:] if v < keep_from}
    return sorted(drop)


class CheckpointStore:
    def __init__(self, directory: Path, shard: int, *, keep_newest: int = KEEP) -> None:
        self.directory = directory
        self.shard = shard
        self.keep_newest = keep_newest
        self.keep_from: int | None = None  # sync: the versions older than this may go
        directory.mkdir(parents=True, exist_ok=True)

    def path_for(self, version: int) -> Path:
        return self.directory / f"{PREFIX}{self.shard}-{version:010d}{SUFFIX}"

    def write(self, version: int, body: bytes) -> Path:
        """Atomically: temp file, fsync, rename, fsync the directory; then ``prune``."""
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
        self.prune()
        return final

    def prune(self) -> None:
        """Delete what ``versions_to_delete`` allows."""
        for version in versions_to_delete(
            self.versions(), keep_from=self.keep_from, keep_newest=self.keep_newest
        ):
            self.path_for(version).unlink(missing_ok=True)

    def versions(self) -> list[int]:
        """The versions this shard has files for, oldest first (not verified)."""
        return sorted(int(p.stem.rsplit("-", 1)[1]) for p in self.paths())

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

    def valid_versions(self) -> list[int]:
        """The versions whose files verify, oldest first (a shard that restarts in sync mode
        offers these to the cut); corrupt ones are reported and left out."""
        valid = []
        for version in self.versions():
            try:
                self.load(self.path_for(version))
            except CorruptCheckpoint as exc:
                log.error("corrupt checkpoint skipped: %s", exc)
            else:
                valid.append(version)
        return valid

    def newest_valid(self) -> Checkpoint | None:
        """The newest checkpoint that verifies; corrupt ones are reported loudly and skipped."""
        for path in self.paths():
            try:
                return self.load(path)
            except CorruptCheckpoint as exc:
                log.error("corrupt checkpoint skipped: %s", exc)
        return None
