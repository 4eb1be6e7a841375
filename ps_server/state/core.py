"""The shard's state and what every part of it uses: the parameters, optimizer, version and
running sum; the one lock all mutation goes through, so updates apply one at a time in arrival
order, never interleaved, also when the array math runs on a thread off the event loop; and where
that math runs."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

import numpy as np

from ps_server.kernels import flat, for_each_block
from ps_server.metrics import ShardMetrics
from ps_server.optimizers import Optimizer, build_optimizer
from ps_server.rules import required_contributions
from ps_server.snapshot import Snapshot
from pscluster.protocol import WIRE_DTYPES
from pscluster.settings import JobConfig

T = TypeVar("T")

# Below this many elements a shard's array math runs on the event loop (from
# kernels.PARALLEL_ELEMENTS on, with a helper thread taking part of it): the hop to a thread and
# back costs more than the loop is held (under a millisecond at this size). Above it, the math
# runs on a thread and the loop goes on moving other requests' bytes meanwhile.
OFFLOAD_ELEMENTS = 1 << 21
# Checkpoints captured but not yet written: a writer that lags further loses the oldest (the cut
# then falls on another version every shard holds).
CAPTURED_KEPT = 4


def wake(waiter: asyncio.Future[None]) -> None:
    """Resolve a waiter unless it is done already (timed out, or woken)."""
    if not waiter.done():
        waiter.set_result(None)


class OwnedGradients(dict[str, np.ndarray]):
    """Validated gradients that the shard may keep and overwrite: views of a request body that
    nothing else refers to. The first of a step becomes the running sum without a copy."""


class ShardCore:
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
        self.optimizer = self._new_optimizer(params)
        self.version = 0
        # worker id -> rank, as the coordinator last said; None until it has spoken.
        self.members: dict[str, int] | None = None
        # The running sum of the sync step in progress (also the async path's scratch buffer):
        # O(P) memory however many workers push.
        self._sum = {key: np.zeros_like(p) for key, p in params.items()}
        self._contributors: set[str] = set()
        # Rank order of the step's sum (ps_server.fold_order): gradients that arrived ahead of a
        # lower live rank (by rank), the last rank folded, and whether the sum holds any yet.
        self._held: dict[int, Mapping[str, np.ndarray]] = {}
        self._last_folded: int | None = None
        self._summed = False
        self._round_started = 0.0
        self._lock = asyncio.Lock()
        # Long-polls and held sync replies waiting for the next version (see reads).
        self._version_waiters: list[asyncio.Future[None]] = []
        # The current version's reply frame (None: not made yet, or being overwritten).
        self._snapshot: Snapshot | None = None
        self._sizes = {key: p.size for key, p in params.items()}
        self._wire = WIRE_DTYPES[job.wire_dtype.value]  # the job's wire dtype, looked up once
        self._elements = sum(self._sizes.values())
        self.stopping = False
        self._running: set[asyncio.Task[Any]] = set()  # locked work, kept alive if its caller goes
        self.restored_from: int | None = None
        # sync recovery (``ps_server.state.rewinds``): a restarted shard serves nobody until the
        # coordinator names the consistent cut; each cut it applies is a new epoch.
        self.recovering = False
        self.epoch = 0
        self.rewinds = 0
        self.rewound_to: int | None = None
        self.checkpoint_versions: list[int] = []  # on disk, for the cut
        # Checkpoints taken at exactly their version, waiting to be written (a few at most).
        self.captured: deque[tuple[int, dict[str, Any], dict[str, np.ndarray]]] = deque(
            maxlen=CAPTURED_KEPT
        )
        self.max_gather_s = 0.0  # the longest any sync step waited for its gradients
        # Set whenever a version is due for a checkpoint; the app's checkpoint loop writes it.
        self.checkpoint_due = asyncio.Event()
        metrics.version.set(0)

    def _new_optimizer(self, params: dict[str, np.ndarray]) -> Optimizer:
        job = self.job
        return build_optimizer(
            job.optimizer,
            params,
            lr=job.lr,
            momentum=job.momentum,
            beta1=job.beta1,
            beta2=job.beta2,
            adam_form=job.adam_form,
        )

    def _checkpoint_due(self) -> None:
        """The version just reached is due for a checkpoint (``Checkpoints`` takes it)."""
        self.checkpoint_due.set()

    @property
    def done(self) -> bool:
        return self.version >= self.job.steps

    @property
    def required(self) -> int:
        live = None if self.members is None else len(self.members)
        return required_contributions(self.job.workers, live)

    def _header(self, version: int) -> dict[str, Any]:
        """The header of a frame that carries this shard's parameters of ``version``."""
        return {
            # Set even when the shard holds no dense part (a sparse model's): the frame's
            # version is then the worker's to take, though no array came with it.
            "params": True,
            "version": version,
            "done": version >= self.job.steps,
            "shard": self.index,
            "epoch": self.epoch,  # sync: which cut these parameters descend from
        }

    def _new_snapshot(self, version: int) -> Snapshot:
        wire = self.job.wire_dtype.value
        return Snapshot(self._header(version), self.params, None if wire == "float32" else wire)

    def _wake_version_waiters(self) -> None:
        waiters, self._version_waiters = self._version_waiters, []
        for waiter in waiters:
            wake(waiter)

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

    @property
    def _inline(self) -> bool:
        """Whether the array math runs on the event loop (small arrays), never suspending."""
        return self._elements < OFFLOAD_ELEMENTS

    async def _math(self, work: Callable[[], object]) -> None:
        """Run array math inline when small, on a thread when large (NumPy releases the GIL)."""
        if self._inline:
            work()
        else:
            await asyncio.to_thread(work)

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
