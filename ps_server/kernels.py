"""Elementwise passes over a shard's arrays, in cache-sized blocks, split across cores.

A shard's step is a few elementwise passes over P floats: check the gradient, add it to the
running sum, update the parameters. Each pass is split into one contiguous run per core, because
while a shard computes its step the workers wait for the reply and their cores are idle; NumPy
releases the GIL inside each call, so the threads run in parallel and the Python between calls
is a few microseconds. Within a run, a fused update goes block by block, doing all of its
operations on one block before the next, so the later ones find the block in the core's cache
(on the 2-core VM of docs/performance.md that gained about 10%; the second core gained 2x).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np

# Elements of one array per block: with the three to five arrays an update touches, a block's
# data fits in a core's L2 cache (512 KB each in float32), and the Python between NumPy calls
# (a few microseconds a call) stays small against the calls themselves.
BLOCK = 1 << 17

# Below this many elements in all, one thread does everything: handing work to another thread
# costs tens of microseconds, more than the pass saves.
PARALLEL_ELEMENTS = 1 << 18

# Threads per pass: memory bandwidth, not arithmetic, limits these passes, and a few cores
# saturate it.
MAX_PARTS = 4


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


PARTS = max(1, min(MAX_PARTS, _cores()))

# The calling thread runs one part itself; the others go to these threads. Work submitted here
# never submits more work, so the pool cannot deadlock.
_helpers = (
    ThreadPoolExecutor(max_workers=PARTS - 1, thread_name_prefix="shard-math")
    if PARTS > 1
    else None
)

# (array name, start, stop): a range of one array's elements, in its flat (C) order.
Span = tuple[str, int, int]
# Called on one block: the array's name and the block's slice of its flat elements. Returning
# False stops the part it runs in (a check that failed); None or True goes on.
BlockFn = Callable[[str, slice], "bool | None"]


def flat(array: np.ndarray) -> np.ndarray:
    """The array as 1-D, sharing its memory (writes through it land in the array)."""
    if not array.flags.c_contiguous:
        raise ValueError("block passes need C-contiguous arrays")
    return array.reshape(-1)


def plan(sizes: Mapping[str, int], parts: int) -> list[list[Span]]:
    """Split all arrays' elements into ``parts`` contiguous runs of about equal size, cut on
    block boundaries (within an array) so that every block but an array's last is whole."""
    blocks = sum(-(-n // BLOCK) for n in sizes.values())
    per_part = -(-blocks // max(1, parts)) * BLOCK
    runs: list[list[Span]] = [[]]
    room = per_part
    for name, n in sizes.items():
        start = 0
        while start < n:
            if room <= 0:
                runs.append([])
                room = per_part
            stop = min(n, start + room)
            runs[-1].append((name, start, stop))
            room -= -(-(stop - start) // BLOCK) * BLOCK  # a partial block counts as a whole one
            start = stop
    return [run for run in runs if run]


def _run(spans: list[Span], fn: BlockFn, block: int | None) -> bool:
    for name, start, stop in spans:
        step = block or stop - start
        for first in range(start, stop, step):
            if fn(name, slice(first, min(stop, first + step))) is False:
                return False
    return True


def for_each_block(sizes: Mapping[str, int], fn: BlockFn, *, blocked: bool = True) -> bool:
    """Call ``fn(name, slice)`` on every block of every array, the blocks split across cores.
    ``blocked=False``: one call per run of an array in a part instead (a single pass gains
    nothing from blocks, and each call has its own overhead).

    Returns False as soon as a call in a part returns False (that part stops; the others run to
    their end), else True. An exception in any part is raised once every part has finished, so
    no thread is still writing when the caller goes on.
    """
    block = BLOCK if blocked else None
    total = sum(sizes.values())
    if total < PARALLEL_ELEMENTS or _helpers is None:
        # One part, all arrays in order (what plan would make): no plan to compute.
        for name, n in sizes.items():
            step = block or n
            for first in range(0, n, step or 1):
                if fn(name, slice(first, min(n, first + step))) is False:
                    return False
        return True
    parts = plan(sizes, PARTS if total >= PARALLEL_ELEMENTS and _helpers is not None else 1)
    if len(parts) <= 1:
        return _run(parts[0] if parts else [], fn, block)
    assert _helpers is not None
    futures: list[Future[bool]] = [_helpers.submit(_run, spans, fn, block) for spans in parts[1:]]
    try:
        mine = _run(parts[0], fn, block)
    finally:
        results = [_wait(f) for f in futures]
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return mine and all(results)


def _wait(future: Future[bool]) -> bool | BaseException:
    try:
        return future.result()
    except BaseException as exc:  # re-raised by the caller once all parts are done
        return exc
