"""A shard's state: its parameters, optimizer, version and the sync step being gathered.

All mutation goes through one asyncio lock, so updates are applied one at a time in arrival order,
never interleaved, also when the array math runs on a thread off the event loop.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

import numpy as np

from ps_server.checkpoint import Checkpoint, encode_checkpoint
from ps_server.kernels import flat, for_each_block
from ps_server.metrics import ShardMetrics
from ps_server.optimizers import apply, build_optimizer
from ps_server.rules import (
    Verdict,
    judge_async_push,
    judge_sync_push,
    required_contributions,
    sync_step_complete,
)
from ps_server.snapshot import Snapshot
from pscluster.protocol import (
    WIRE_DTYPES,
    EncodedFrame,
    ErrorCode,
    ProtocolError,
    all_finite,
    encode_frame,
)
from pscluster.settings import JobConfig, Mode

T = TypeVar("T")

# Below this many elements a shard's array math runs on the event loop (from
# kernels.PARALLEL_ELEMENTS on, with a helper thread taking part of it): the hop to a thread and
# back costs more than the loop is held (under a millisecond at this size). Above it, the math
# runs on a thread and the loop goes on moving other requests' bytes meanwhile.
OFFLOAD_ELEMENTS = 1 << 21


class OwnedGradients(dict[str, np.ndarray]):
    """Validated gradients that the shard may keep and overwrite: views of a request body that
    nothing else refers to. The first of a step becomes the running sum without a copy."""


class ShardState:
    def __init__(
        self,
        job: JobConfig,
        index: int,
        params: dict[str, np.ndarray],
        metrics: ShardMetrics,
    ) -> None:
        self.job = job
        self.index = index
        self.params = params
        self.metrics = metrics
        self.optimizer = build_optimizer(
            job.optimizer,
            params,
            lr=job.lr,
            momentum=job.momentum,
            beta1=job.beta1,
            beta2=job.beta2,
        )
        self.version = 0
        # worker id -> rank, as the coordinator last said; None until it has spoken.
        self.members: dict[str, int] | None = None
        # The running sum of the sync step in progress (also the async path's scratch buffer):
        # O(P) memory however many workers push.
        self._sum = {key: np.zeros_like(p) for key, p in params.items()}
        self._contributors: set[str] = set()
        self._round_started = 0.0
        self._lock = asyncio.Lock()
        self._version_changed = asyncio.Event()
        # The current version's reply frame (None: not made yet, or being overwritten).
        self._snapshot: Snapshot | None = None
        self._sizes = {key: p.size for key, p in params.items()}
        self._elements = sum(self._sizes.values())
        self.stopping = False
        self._running: set[asyncio.Task[Any]] = set()  # locked work, kept alive if its caller goes
        self.restored_from: int | None = None
        self.max_gather_s = 0.0  # the longest any sync step waited for its gradients
        # Set whenever a version is due for a checkpoint; the app's checkpoint loop writes it.
        self.checkpoint_due = asyncio.Event()
        metrics.version.set(0)

    # --- what others read ---------------------------------------------------------------------

    @property
    def done(self) -> bool:
        return self.version >= self.job.steps

    @property
    def required(self) -> int:
        live = None if self.members is None else len(self.members)
        return required_contributions(self.job.workers, live)

    async def encoded_params(self) -> EncodedFrame:
        """The parameters of the current version as a frame, encoded once per version and lent
        to each caller (see ``Snapshot``): hold it only as long as it is being sent."""
        snapshot = self._snapshot
        if snapshot is not None:
            # Checked and lent in one go, with no await between: an update that overwrites the
            # frame in place first takes it away from here, and only when nobody holds it.
            return snapshot.lend()
        # Made under the lock, between two updates: one made while an update runs on a thread
        # would mix two versions.
        return await self._locked(self._encode_current)

    async def _encode_current(self) -> EncodedFrame:
        # Every update writes its version's frame as it goes; this is for the versions no update
        # made here (the first, one restored from a checkpoint).
        if self._snapshot is None:
            snapshot = self._new_snapshot(self.version)
            await self._math(lambda: snapshot.fill(self.params))
            self._snapshot = snapshot
        return self._snapshot.lend()

    def _header(self, version: int) -> dict[str, Any]:
        return {"version": version, "done": version >= self.job.steps, "shard": self.index}

    def _new_snapshot(self, version: int) -> Snapshot:
        wire = self.job.wire_dtype.value
        return Snapshot(self._header(version), self.params, None if wire == "float32" else wire)

    def status_frame(self) -> bytes:
        return encode_frame({"version": self.version, "done": self.done, "shard": self.index})

    async def wait_for_version(self, after: int, timeout_s: float) -> None:
        """Return once version > after (or the job is done), or after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while self.version <= after and not self.done and not self.stopping:
            event = self._version_changed
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            try:
                await asyncio.wait_for(event.wait(), remaining)
            except TimeoutError:
                return

    def release_waiters(self) -> None:
        """On shutdown: answer every held pull and push now, with the current version."""
        self.stopping = True
        self._version_changed.set()

    def snapshot(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "version": self.version,
            "done": self.done,
            "mode": self.job.mode.value,
            "received": self.metrics.tally_received,
            "applied": self.metrics.tally_applied,
            "dropped": dict(self.metrics.tally_dropped),
            "live_workers": None if self.members is None else len(self.members),
            "required": self.required,
            "gathering": len(self._contributors),
            "restored_from": self.restored_from,
            "max_gather_seconds": self.max_gather_s,
        }

    # --- input checks -------------------------------------------------------------------------

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
        wire = WIRE_DTYPES[self.job.wire_dtype.value]
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
        not_finite: list[str] = []

        def finite(name: str, span: slice) -> bool:
            if all_finite(flat(grads[name])[span]):
                return True
            not_finite.append(name)
            return False

        if not for_each_block(self._sizes, finite, blocked=False):
            raise ProtocolError(ErrorCode.NOT_FINITE, f"{min(not_finite)!r} holds NaN or Inf")
        return OwnedGradients(grads) if owned else grads

    # --- updates ------------------------------------------------------------------------------

    async def push(
        self, *, worker: str, rank: int, base_version: int, grads: Mapping[str, np.ndarray]
    ) -> Verdict:
        """Judge and apply one validated gradient push."""
        self.metrics.count_received()
        return await self._locked(lambda: self._push(worker, rank, base_version, grads))

    async def _push(
        self, worker: str, rank: int, base_version: int, grads: Mapping[str, np.ndarray]
    ) -> Verdict:
        if self.members is not None and worker not in self.members:
            verdict = Verdict(ErrorCode.UNKNOWN_WORKER)
        else:
            # Trust the coordinator's rank over the one the push claims.
            rank = rank if self.members is None else self.members[worker]
            verdict = self._judge(worker, rank, base_version)
        if verdict.code in (None, ErrorCode.LATE, ErrorCode.STALE, ErrorCode.WARMUP):
            self.metrics.staleness.observe(max(0, self.version - base_version))
        if not verdict.accepted:
            assert verdict.code is not None
            self.metrics.count_dropped(verdict.code)
            return verdict
        self.metrics.count_applied(rank)
        if self.job.mode is Mode.SYNC:
            await self._gather(worker, grads)
        else:
            scale = (
                verdict.scale / self.job.workers if self.job.lr_divide_by_workers else verdict.scale
            )
            self._advance(await self._update(scale, grads, first=True))
        return verdict

    async def _locked(self, work: Callable[[], Awaitable[T]]) -> T:
        """Run ``work`` under the lock, to its end even if the caller is cancelled.

        A cancelled handler (shutdown past its grace period) must not release the lock while a
        thread is still writing the parameters, nor leave an update half applied (params changed,
        version not): the work runs as its own task, which the caller only waits for.
        """

        async def run() -> T:
            async with self._lock:
                return await work()

        task = asyncio.ensure_future(run())
        self._running.add(task)
        task.add_done_callback(self._running.discard)
        return await asyncio.shield(task)

    def _judge(self, worker: str, rank: int, base_version: int) -> Verdict:
        if self.job.mode is Mode.SYNC:
            return judge_sync_push(
                version=self.version,
                base_version=base_version,
                worker=worker,
                contributors=self._contributors,
                steps=self.job.steps,
            )
        return judge_async_push(
            version=self.version,
            base_version=base_version,
            rank=rank,
            steps=self.job.steps,
            max_staleness=self.job.max_staleness,
            policy=self.job.staleness_policy,
            warmup_steps=self.job.warmup_steps,
            leader=min(self.members.values(), default=0) if self.members else 0,
        )

    async def set_members(self, members: Mapping[str, int]) -> None:
        """The coordinator's membership; a smaller one may complete the step being gathered."""
        await self._locked(lambda: self._set_members(members))

    async def _set_members(self, members: Mapping[str, int]) -> None:
        self.members = dict(members)
        self.metrics.live_workers.set(len(self.members))
        self.metrics.required.set(self.required)
        if self.job.mode is Mode.SYNC and self._contributors and not self.done:
            if sync_step_complete(len(self._contributors), self.required):
                await self._apply_sync_step()

    async def _gather(self, worker: str, grads: Mapping[str, np.ndarray]) -> None:
        first = not self._contributors
        if first:
            self._round_started = time.perf_counter()
        if sync_step_complete(len(self._contributors) + 1, self.required):
            # The last gradient is folded into the update's own pass.
            self._contributors.add(worker)
            await self._apply_sync_step(grads, first=first)
            return
        if first:
            # The first gradient of a step becomes the sum, not added to it: no pass to zero it.
            rest = self._adopt(grads)
            if rest:
                await self._math(lambda: self._add_into_sum(rest, copy=True))
        else:
            await self._math(lambda: self._add_into_sum(grads))
        self._contributors.add(worker)

    async def _apply_sync_step(
        self, last: Mapping[str, np.ndarray] | None = None, *, first: bool = False
    ) -> None:
        scale = 1.0 / len(self._contributors)
        snapshot = await self._update(scale, last, first=first)
        gathered = time.perf_counter() - self._round_started
        self.metrics.gather_seconds.observe(gathered)
        self.max_gather_s = max(self.max_gather_s, gathered)
        self._contributors.clear()
        self._advance(snapshot)

    async def _update(
        self, scale: float, incoming: Mapping[str, np.ndarray] | None, *, first: bool
    ) -> Snapshot:
        """Apply ``scale`` times the running sum, with ``incoming`` folded in (as the sum when
        ``first``, else added to it), and return the new version's reply frame, written in the
        same pass over memory.

        With float32 on the wire the parameters live in their version's frame. When no reply
        holds the current frame any more (the usual case: replies are sent long before the
        next step's gradients are in) the update runs in place and the frame only gets a new
        header. Otherwise it writes the new parameters into a new frame, out of place, and the
        replies still being sent keep the old one. A 16-bit frame is written by the same rule
        from float32 parameters kept apart.
        """
        fold = (self._adopt(incoming) if first else incoming) if incoming is not None else None
        snapshot = self._snapshot
        if snapshot is None or snapshot.lent:
            snapshot = self._new_snapshot(self.version + 1)
        # From here until the update is done nobody may borrow the frame being overwritten:
        # callers of encoded_params wait for the lock, then get the new version.
        self._snapshot = None
        targets = snapshot.arrays
        in_frame = all(t.dtype == self.params[key].dtype for key, t in targets.items())
        in_place = in_frame and all(self.params[key] is t for key, t in targets.items())
        await self._math(
            lambda: apply(
                self.optimizer,
                self.params,
                self._sum,
                scale,
                fold=fold or None,
                fold_adds=not first,
                out=targets if in_frame and not in_place else None,
                snapshot=None if in_frame else targets,
            )
        )
        if in_frame:
            self.params = targets
        snapshot.reheader(self._header(self.version + 1))
        return snapshot

    def _advance(self, snapshot: Snapshot) -> None:
        self.version += 1
        self._snapshot = snapshot
        self.metrics.version.set(self.version)
        every = self.job.checkpoint_every
        if every and self.version % every == 0:
            self.checkpoint_due.set()
        # Wake every long-poll waiting on the old version; new waiters get a fresh event.
        self._version_changed.set()
        self._version_changed = asyncio.Event()

    def _adoptable(self, grads: Mapping[str, np.ndarray], key: str) -> bool:
        """Whether this gradient can become the running sum as it is, without a copy."""
        grad = grads[key]
        return (
            isinstance(grads, OwnedGradients)
            and grad.dtype == self._sum[key].dtype
            and grad.flags.writeable
            and grad.flags.c_contiguous
        )

    def _adopt(self, grads: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Make each gradient that can be the running sum as it is; return the others (to be
        copied into the sum)."""
        rest = {}
        for key in self._sum:
            if self._adoptable(grads, key):
                # The request's own buffer becomes the running sum: no pass to copy it. (The
                # buffer it replaces goes back to the pool once nothing refers to it.)
                self._sum[key] = grads[key]
            else:
                rest[key] = grads[key]
        return rest

    def _add_into_sum(self, grads: Mapping[str, np.ndarray], *, copy: bool = False) -> None:
        """sum += grads (or sum = grads, upcast, with ``copy``), block by block across cores."""

        def add(name: str, span: slice) -> None:
            total, grad = flat(self._sum[name])[span], flat(grads[name])[span]
            if copy:
                np.copyto(total, grad)
            else:
                np.add(total, grad, out=total)

        for_each_block({key: self._sizes[key] for key in grads}, add)

    async def _math(self, work: Callable[[], object]) -> None:
        """Run array math inline when small, on a thread when large (NumPy releases the GIL)."""
        if self._elements < OFFLOAD_ELEMENTS:
            work()
        else:
            await asyncio.to_thread(work)

    # --- checkpoints --------------------------------------------------------------------------

    async def checkpoint_body(self) -> tuple[int, bytes]:
        """A consistent snapshot, serialized: parameters, optimizer state, version, and the sync
        step being gathered (its running sum and who is in it), taken between two updates."""
        return await self._locked(self._checkpoint_body)

    async def _checkpoint_body(self) -> tuple[int, bytes]:
        arrays = {
            **{f"param/{key}": p for key, p in self.params.items()},
            **{f"opt/{key}": a for key, a in self.optimizer.state().items()},
        }
        if self._contributors:
            arrays.update({f"sum/{key}": a for key, a in self._sum.items()})
        header = {
            "shard": self.index,
            "version": self.version,
            "contributors": sorted(self._contributors),
        }
        # Encoding copies the arrays, so the file can be written after the lock is released.
        return self.version, await asyncio.to_thread(encode_checkpoint, header, arrays)

    def restore(self, checkpoint: Checkpoint) -> None:
        arrays = checkpoint.arrays
        # Fresh arrays: the current ones may be a reply frame's.
        self.params = {
            key: arrays[f"param/{key}"].astype(p.dtype) for key, p in self.params.items()
        }
        self.optimizer.load_state(
            {key.removeprefix("opt/"): a for key, a in arrays.items() if key.startswith("opt/")}
        )
        self._contributors = set(checkpoint.header.get("contributors", []))
        if self._contributors:
            for key, total in self._sum.items():
                np.copyto(total, arrays[f"sum/{key}"])
        self.version = checkpoint.version
        self.restored_from = checkpoint.version
        self.metrics.version.set(self.version)
        self._snapshot = None
