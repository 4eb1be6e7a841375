"""The coordinator's HTTP service: registration, heartbeats, membership, evaluation, status.

It is not on the data path: workers and shards keep training while it restarts, and it rebuilds
its soft state (who is where) from their re-registrations.
"""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CollectorRegistry

from coordinator.handlers import (
    handle_deregister,
    handle_heartbeat,
    handle_initial,
    handle_register_shard,
    handle_register_worker,
    handle_status,
)
from coordinator.loops import monitor_loop
from coordinator.metrics import METRICS, CoordinatorMetrics
from coordinator.recovery import RECOVERY, Recovery
from coordinator.state import COORDINATOR, Coordinator
from pscluster.service import add_auth, add_observability
from pscluster.settings import CoordinatorSettings


def build_app(settings: CoordinatorSettings, url: str) -> web.Application:
    app = web.Application()
    registry = CollectorRegistry()
    app[COORDINATOR] = Coordinator(settings)
    app[METRICS] = CoordinatorMetrics(registry)
    app[RECOVERY] = Recovery()
    add_observability(app, registry)
    app.router.add_post("/register/shard", handle_register_shard)
    app.router.add_post("/register/worker", handle_register_worker)
    app.router.add_post("/heartbeat", handle_heartbeat)
    app.router.add_post("/deregister", handle_deregister)
    app.router.add_get("/status", handle_status)
    app.router.add_get(r"/initial/{index:\d+}", handle_initial)
    app.cleanup_ctx.append(monitor_loop)
    add_auth(app, settings.cluster_token())
    return app
