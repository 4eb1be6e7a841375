"""Running an aiohttp service: bind, announce readiness, stop cleanly on SIGTERM.

Each service's ``__main__`` reads its settings and calls ``run_service``; tests use
``running_service`` to start the same app in-process on port 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import os
import signal
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import uvloop
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Histogram, ProcessCollector
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from pscluster.client import tune_allocator
from pscluster.settings import ServiceSettings
from pscluster.settings.timeouts import SHUTDOWN_GRACE_S

log = logging.getLogger(__name__)

AppFactory = Callable[[str], web.Application]

REGISTRY = web.AppKey("registry", CollectorRegistry)


def bind_socket(host: str, port: int) -> socket.socket:
    """Bind before building the app, so the app knows its own URL (port 0 included)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(512)
    sock.setblocking(False)
    return sock


def public_url(settings: ServiceSettings, sock: socket.socket) -> str:
    if settings.advertise_url:
        return settings.advertise_url.rstrip("/")
    host = settings.host
    if host in ("0.0.0.0", "::", ""):
        host = socket.gethostname()
    port = sock.getsockname()[1]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def write_ready_file(path: Path, url: str) -> None:
    """Atomically: a launcher polling for the file never reads half a URL."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(url + "\n")
    os.replace(tmp, path)


@contextlib.asynccontextmanager
async def running_service(
    factory: AppFactory, settings: ServiceSettings
) -> AsyncIterator[tuple[str, web.Application]]:
    """Serve the app built by ``factory(url)`` until the block exits; then stop gracefully."""
    sock = bind_socket(settings.host, settings.port)
    url = public_url(settings, sock)
    app = factory(url)
    # shutdown_timeout: in-flight handlers get this long to finish once we stop accepting.
    runner = web.AppRunner(
        app, handle_signals=False, shutdown_timeout=SHUTDOWN_GRACE_S, access_log=None
    )
    await runner.setup()
    try:
        await web.SockSite(runner, sock).start()
        if settings.ready_file:
            write_ready_file(settings.ready_file, url)
        yield url, app
    finally:
        # Ordered stop: close the listening socket (no new work), let in-flight requests
        # finish within the grace period, then run cleanup contexts (final checkpoints, loops).
        await runner.cleanup()


async def serve_until_signal(factory: AppFactory, settings: ServiceSettings) -> web.Application:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    async with running_service(factory, settings) as (url, app):
        log.info("listening on %s", url)
        done = app.get(SERVICE_DONE)
        waiters = [asyncio.ensure_future(stop.wait())]
        if done is not None:
            waiters.append(asyncio.ensure_future(done.wait()))
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        for waiter in waiters:
            waiter.cancel()
        log.info("stopping")
    return app


@contextlib.asynccontextmanager
async def background(work: Awaitable[None]) -> AsyncIterator[None]:
    """Run ``work`` as a task for the life of the block (a ``cleanup_ctx`` loop); on exit cancel
    it and wait for it. Its own exceptions propagate: a loop that dies of a bug is not hidden."""
    task = asyncio.ensure_future(work)
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


# A service that finishes by itself (a worker at the end of the job) sets this event.
SERVICE_DONE = web.AppKey("service_done", asyncio.Event)


def run_service(factory: AppFactory, settings: ServiceSettings) -> web.Application:
    """Serve until SIGTERM/SIGINT (or the app says it is done); returns the stopped app."""
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    uvloop.install()
    tune_allocator()
    return asyncio.run(serve_until_signal(factory, settings))


# Open to anyone who reaches the port, as Prometheus and load balancers expect; /status is a
# read-only summary for humans.
OPEN_PATHS = frozenset({"/metrics", "/healthz", "/readyz", "/status"})


def add_auth(app: web.Application, token: str | None) -> None:
    """Require ``Authorization: Bearer <token>`` on every other endpoint (401 without it)."""
    if token is None:
        return
    expected = f"Bearer {token}".encode()

    @web.middleware
    async def authorized(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        if request.path not in OPEN_PATHS:
            given = request.headers.get("Authorization", "").encode()
            # Constant time: how much of the token matched must not show in the reply's timing.
            if not hmac.compare_digest(given, expected):
                return web.json_response(
                    {"error": "unauthorized", "message": "missing or wrong cluster token"},
                    status=401,
                )
        return await handler(request)

    app.middlewares.append(authorized)


# Why a service is not ready for its role yet (None: ready); Kubernetes' readiness probe asks.
Readiness = Callable[[], str | None]


def add_observability(
    app: web.Application, registry: CollectorRegistry, not_ready: Readiness | None = None
) -> None:
    """Open ``/metrics``, ``/healthz`` (liveness: the process answers) and ``/readyz``
    (readiness: ready for the service's role, 503 with the reason until then); count and time
    every request by endpoint."""
    app[REGISTRY] = registry
    # process_cpu_seconds_total, process_resident_memory_bytes, open fds: is anything growing?
    ProcessCollector(registry=registry)
    requests = Counter(
        "http_requests_total",
        "HTTP requests handled, by endpoint and status code.",
        ["endpoint", "code"],
        registry=registry,
    )
    latency = Histogram(
        "http_request_duration_seconds",
        "Time to handle an HTTP request, by endpoint.",
        ["endpoint"],
        registry=registry,
        buckets=(
            0.0005,
            0.001,
            0.0025,
            0.005,
            0.01,
            0.025,
            0.05,
            0.1,
            0.25,
            0.5,
            1,
            2.5,
            5,
            10,
            30,
        ),
    )

    @web.middleware
    async def timed(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        started = time.perf_counter()
        code = 500  # an exception other than an HTTP error becomes a 500
        try:
            response = await handler(request)
            code = response.status
            return response
        except web.HTTPException as exc:
            code = exc.status
            raise
        finally:
            # The route's pattern, not the raw path: label values stay bounded.
            route = request.match_info.route.resource
            endpoint = route.canonical if route is not None else "unmatched"
            latency.labels(endpoint).observe(time.perf_counter() - started)
            requests.labels(endpoint, str(code)).inc()

    async def metrics(request: web.Request) -> web.Response:
        body = generate_latest(registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    async def readyz(request: web.Request) -> web.Response:
        reason = not_ready() if not_ready is not None else None
        if reason is not None:
            return web.json_response({"ready": False, "reason": reason}, status=503)
        return web.json_response({"ready": True})

    app.middlewares.append(timed)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
