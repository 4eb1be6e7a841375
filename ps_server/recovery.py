"""A shard's side of recovery: what it resumes from when it starts, which checkpoints it keeps,
and the coordinator's ``/cut`` message (see ``ps_server.state.rewinds`` and
``coordinator.recovery``).

- async and ssp: a shard resumes from its own newest valid checkpoint, alone (updates apply on
  arrival; there is no common version to return to). It loses at most ``checkpoint_every`` of its
  own updates, and workers take its older parameters as they come (``future_version``).
- sync: a restarted shard is ``recovering``: it offers the versions it holds on disk and serves
  nobody until the coordinator names the cut, the newest version every shard holds. Every shard
  then rewinds to it, so the model is never a mix of versions, and with k = 0 the run ends
  bit-identical to the same run without the crash.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np

from ps_server.checkpoint import MAX_KEPT, CheckpointStore, CorruptCheckpoint
from ps_server.state import ShardState
from pscluster.protocol import ErrorCode, ProtocolError
from pscluster.settings import Mode

log = logging.getLogger(__name__)


def resume(state: ShardState, store: CheckpointStore | None) -> None:
    """Where a shard that has just received its job starts from."""
    if state.job.mode is Mode.SYNC:
        state.recovering = True
        if store is not None:
            store.keep_newest = MAX_KEPT  # until the coordinator says what every shard holds
        state.checkpoint_versions = store.valid_versions() if store is not None else []
        log.info("waiting for the cut; checkpoints held: %s", state.checkpoint_versions)
        return
    checkpoint = store.newest_valid() if store is not None else None
    if checkpoint is not None:
        state.restore(checkpoint)
        log.info("restored version %d from %s", checkpoint.version, checkpoint.path)


async def write_checkpoint(state: ShardState, store: CheckpointStore, *, final: bool) -> None:
    """Write the checkpoints taken at their versions; with ``final``, the current state too."""
    while (captured := await state.next_captured()) is not None:
        await _write(state, store, *captured)
    if final:
        await _write(state, store, *await state.checkpoint_body())


async def _write(state: ShardState, store: CheckpointStore, version: int, body: bytes) -> None:
    path = await asyncio.to_thread(store.write, version, body)
    _held(state, store, frozenset({version}))
    log.info("checkpoint of version %d written to %s", version, path)


def _held(state: ShardState, store: CheckpointStore, written: frozenset[int] = frozenset()) -> None:
    """The versions offered to the cut: those verified or written here, still on disk."""
    known = set(state.checkpoint_versions) | written
    state.checkpoint_versions = [v for v in store.versions() if v in known]


def _int(value: Any, name: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ProtocolError(ErrorCode.BAD_MESSAGE, f"{name!r} must be an integer >= 0")
    return value


async def apply_cut(
    state: ShardState,
    store: CheckpointStore | None,
    payload: dict[str, Any],
    initial: Callable[[], Awaitable[dict[str, np.ndarray]]],
) -> dict[str, Any]:
    """``/cut``: ``keep_from`` (every shard holds this version: older checkpoints may go) and,
    after a restart, ``rewind`` ({version, epoch, workers}) to the consistent cut."""
    keep_from = _int(payload.get("keep_from"), "keep_from")
    rewind = payload.get("rewind")
    if rewind is not None:
        if not isinstance(rewind, dict):
            raise ProtocolError(ErrorCode.BAD_MESSAGE, "'rewind' must be an object")
        version, epoch = _int(rewind.get("version"), "version"), _int(rewind.get("epoch"), "epoch")
        # The membership, when the coordinator has one to tell (not at the job's start).
        members = rewind.get("workers")
        if members is not None and (
            not isinstance(members, dict)
            or not all(isinstance(k, str) and isinstance(v, int) for k, v in members.items())
        ):
            raise ProtocolError(ErrorCode.BAD_MESSAGE, "'workers' must map worker id to rank")
        if state.job.mode is not Mode.SYNC:
            raise ProtocolError(ErrorCode.BAD_MESSAGE, "only a sync job rewinds to a cut")
        if version > 0 and version not in state.checkpoint_versions:
            raise ProtocolError(ErrorCode.NOT_READY, f"no checkpoint of version {version}", 409)
        checkpoint = None
        if version > 0:
            assert store is not None  # it holds checkpoints
            try:
                checkpoint = await asyncio.to_thread(store.load, store.path_for(version))
            except (OSError, CorruptCheckpoint) as exc:
                # Offered no more: the coordinator picks the cut again without it.
                state.checkpoint_versions.remove(version)
                message = f"checkpoint unusable: {exc}"
                raise ProtocolError(ErrorCode.NOT_READY, message, 409) from exc
        applied = await state.rewind(
            version=version,
            epoch=epoch,
            members=members,
            checkpoint=checkpoint,
            # Only a shard past version 0 needs the seed's values again.
            initial=await initial() if version == 0 and state.version != 0 else None,
        )
        if applied:
            log.warning("rewound to version %d (epoch %d), the consistent cut", version, epoch)
    if store is not None and state.job.mode is Mode.SYNC and not state.recovering:
        store.keep_from = keep_from
        await asyncio.to_thread(store.prune)
        _held(state, store)
    return {"version": state.version, "epoch": state.epoch, "recovering": state.recovering}
