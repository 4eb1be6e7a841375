"""Rank order for a sync step's sum, so the sum does not depend on arrival order, bit for bit.

Float addition is not associative: folding the same gradients in another order can change the
last bits of the sum, so two runs of one job would drift apart. A shard therefore folds a step's
gradients in ascending rank order: a gradient is added to the running sum as it arrives only when
no live member with a lower rank (above the last folded one) is still to come; otherwise it is held
until the ranks below it are in, or until the step closes, when every held gradient is folded in
ascending rank order and the highest is folded inside the update's own pass.

So with a fixed membership (k = 0, nobody dies) every step folds g(0), g(1), ..., g(N-1) in that
order, whatever the order they arrived in, and the parameters are bit-identical from run to run.
Held gradients cost memory (at most one per live member) and delay their addition until the ranks
below arrive; in the usual order (ranks arriving roughly together) few are held.
"""

from __future__ import annotations

from collections.abc import Collection


def may_fold_now(rank: int, last_folded: int | None, member_ranks: Collection[int]) -> bool:
    """Whether a gradient of ``rank`` can be added to the sum on arrival: it comes after the
    last folded rank, and no live member ranks between the two (that one must be folded first)."""
    if last_folded is not None and rank <= last_folded:
        return False
    low = -1 if last_folded is None else last_folded
    return not any(low < other < rank for other in member_ranks)


def fold_sequence(held_ranks: Collection[int]) -> list[int]:
    """The order in which the gradients still held when the step closes are folded: ascending
    rank (the last of them goes into the update's pass)."""
    return sorted(held_ranks)
