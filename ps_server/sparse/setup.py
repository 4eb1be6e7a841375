"""A shard's tables from its registration: the model's table specs (shipped by the
coordinator) under the job's policies."""

from __future__ import annotations

import dataclasses

from ps_server.sparse.policies import TablePolicy
from ps_server.sparse.tables import ShardTables
from pscluster.jobspec import Registration


def policy_of(registration: Registration) -> TablePolicy:
    job = registration.job
    return TablePolicy(
        admit_after=job.admit_after,
        evict_after=job.evict_after,
        optimizer=job.sparse_optimizer.value,
        lr=job.sparse_lr,
    )


def build_tables(registration: Registration, index: int) -> ShardTables | None:
    """Shard ``index``'s part of every table (None when the model has none). The job's
    ``table_capacity``, when set, replaces each table's own capacity (both per shard)."""
    if not registration.tables:
        return None
    job = registration.job
    specs = {
        spec.name: spec
        if job.table_capacity is None
        else dataclasses.replace(spec, capacity=job.table_capacity)
        for spec in registration.tables
    }
    return ShardTables(
        specs,
        seed=job.seed,
        policy=policy_of(registration),
        shard=index,
        num_shards=job.shards,
        wire_dtype=job.wire_dtype.value,
    )
