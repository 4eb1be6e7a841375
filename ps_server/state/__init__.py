"""A shard's state: its parameters, optimizer, version and the sync step being gathered.

Split by concern: ``core`` (the state, its lock, where the math runs), ``updates`` (writing the
next version), ``gathering`` (sync steps), ``reads`` (reply frames, long-polls, status),
``checkpoints``, ``rewinds`` (sync recovery) and ``validation``; ``shard`` assembles them into
``ShardState``.
"""

from ps_server.state.core import OFFLOAD_ELEMENTS, OwnedGradients
from ps_server.state.shard import ShardState

__all__ = ["OFFLOAD_ELEMENTS", "OwnedGradients", "ShardState"]
