"""The head: one FastAPI app whose lifespan owns every loop of the control plane."""

from __future__ import annotations

import asyncio
import io
import logging
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiohttp
from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse

from sllm.config import HeadSettings
from sllm.edge.api_errors import ERROR_RESPONSES, install_error_handlers
from sllm.edge.auth import KeyConfigError
from sllm.edge.body_limit import BodyLimit
from sllm.edge.errors import ServiceUnavailable
from sllm.edge.guards import Guard, require_api_key
from sllm.edge.hop_client import HopClient
from sllm.edge.lean_routes import LeanApp
from sllm.edge.serving import serve, setup_logging
from sllm.head import dashboard, gateway, gauges, management, model_cards, responses
from sllm.head.autoscaler import Autoscaler
from sllm.head.dispatcher import Dispatcher
from sllm.head.failure_detector import FailureDetector
from sllm.head.gateway import Gateway
from sllm.head.model_manager import ModelManager
from sllm.head.processes import supervise
from sllm.head.recent import Recent
from sllm.head.redis_health import RedisHealth
from sllm.head.request_headers import check_request_id
from sllm.head.worker_manager import WorkerManager
from sllm.kv import RedisError
from sllm.kv.bus import ResultBus
from sllm.kv.keys import Keys
from sllm.kv.rate_limits import RateLimits
from sllm.kv.redis_url import redacted
from sllm.kv.store import Store
from sllm.metrics import HeadMetrics

log = logging.getLogger("sllm.head")

WORKER_IDLE = 4.0
# What stopping may take once the requests in flight ended (uvicorn's 10 s before).
SHUTDOWN_TIMEOUT = 5.0


def create_app(settings: HeadSettings) -> LeanApp:
    try:
        guard = Guard.for_head(settings)
    except KeyConfigError as exc:
        raise SystemExit(f"sllm head: {exc}") from None

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        keys = Keys(settings.key_prefix)
        head_id = f"head-{uuid.uuid4().hex[:8]}"
        # The request path fails fast when Redis is down; loops ride out a restart.
        fast = Store.connect(settings.redis_url, keys, patient=False)
        patient = Store.connect(settings.redis_url, keys, patient=True)
        await _wait_for_redis(patient, settings.redis_url)
        await patient.index()
        # Every call this session makes goes to a worker, so it carries the cluster token.
        token = {"Authorization": f"Bearer {guard.cluster_token}"} if guard.cluster_token else {}
        http = aiohttp.ClientSession(
            # Idle connections closed before a worker closes them (SLLM_KEEP_ALIVE_TIMEOUT,
            # 5 s): a call sent on one the worker is closing fails as if it had died.
            connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=WORKER_IDLE),
            headers=token,
        )
        bus = ResultBus(patient.client, keys, head_id)
        health = RedisHealth()
        detector = FailureDetector(patient, metrics)
        workers = WorkerManager(patient, settings, http, beats=fast, detector=detector)
        # The request path's calls to workers (/invoke), lighter than aiohttp's.
        hop = HopClient(idle_seconds=WORKER_IDLE, headers=token)
        dispatcher = Dispatcher(patient, settings, head_id, hop, metrics, detector, bus.hand)
        autoscaler = Autoscaler(patient, settings, head_id, workers, metrics, recent, health)
        bus.on_control(dispatcher.on_control)
        bus.on_control(autoscaler.on_control)
        await bus.start()

        app.state.head_id = head_id
        app.state.store = fast
        app.state.rate_limits = RateLimits(fast.client, keys)
        app.state.gateway = Gateway(fast, bus, settings, metrics, recent, dispatcher)
        bus.on_control(app.state.gateway.moves.on_control)
        app.state.models = ModelManager(fast, settings)
        app.state.workers = workers
        app.state.autoscaler = autoscaler
        app.state.redis_health = health
        loops = [
            asyncio.create_task(dispatcher.run(), name="dispatcher"),
            asyncio.create_task(autoscaler.run(), name="autoscaler"),
            asyncio.create_task(detector.run(autoscaler.leading), name="failure-detector"),
            asyncio.create_task(gauges.run(patient, metrics, health, recent), name="gauges"),
        ]
        log.info("head %s serving on %s:%d", head_id, settings.host, settings.port)
        try:
            yield
        finally:
            # Bounded: a step that does not end must not keep the process from exiting
            # (a supervisor would SIGKILL it, with nothing in the log to say why).
            for loop in loops:
                loop.cancel()
            _, stuck = await asyncio.wait(loops, timeout=SHUTDOWN_TIMEOUT)
            for loop in stuck:  # where it waits past its cancel: what to fix
                where = io.StringIO()
                loop.print_stack(limit=12, file=where)
                log.error(
                    "shutdown: %s did not stop within %.0f s of its cancel:\n%s",
                    loop.get_name(),
                    SHUTDOWN_TIMEOUT,
                    where.getvalue(),
                )
                loop.cancel()
            step = ""
            try:
                async with asyncio.timeout(SHUTDOWN_TIMEOUT):
                    for name, close in (
                        ("the gateway", app.state.gateway.close),
                        ("the worker manager", workers.close),
                        ("the result bus", bus.stop),
                        ("the HTTP client", http.close),
                        ("the dispatcher's HTTP client", hop.close),
                        ("the request path's Redis client", fast.close),
                        ("the loops' Redis client", patient.close),
                    ):
                        step = name
                        await close()
            except TimeoutError:
                log.error(
                    "shutdown: %s did not stop within %.0f s; exiting without it",
                    step,
                    SHUTDOWN_TIMEOUT,
                )

    app = LeanApp(title="sllm head", version="0.1.0", lifespan=lifespan, responses=ERROR_RESPONSES)
    # Outside every route: an oversized body is refused before anything parses it.
    app.add_middleware(
        BodyLimit, max_bytes=settings.max_body_bytes, body_timeout=settings.body_timeout
    )
    app.state.guard = guard
    # Keys and rate limits are checked here, before any gateway logic runs.
    checks = [Depends(require_api_key), Depends(check_request_id)]
    for api in (gateway.router, model_cards.router, responses.router):
        app.include_router(api, dependencies=checks)
    app.include_router(management.router)
    app.include_router(dashboard.router)
    # Each request's own hop: no FastAPI layers.
    app.serve_lean(*gateway.HOT_ROUTES, router=gateway.router, dependencies=checks)
    # Both outlive a Redis outage: /metrics and the page answer without it.
    metrics = app.state.metrics = HeadMetrics()
    recent = app.state.recent = Recent()
    _install_error_handlers(app)
    return app


async def _wait_for_redis(store: Store, url: str, timeout: float = 30.0) -> None:
    try:
        await asyncio.wait_for(store.ping(), timeout)
    except (RedisError, OSError, TimeoutError) as exc:
        raise SystemExit(f"sllm head: cannot reach Redis at {redacted(url)}: {exc}") from None


def _install_error_handlers(app: FastAPI) -> None:
    install_error_handlers(app)

    @app.exception_handler(RedisError)
    async def redis_down(_: Request, exc: RedisError) -> JSONResponse:
        err = ServiceUnavailable(f"the cluster's state store is unavailable: {exc}")
        return JSONResponse(err.to_body(), status_code=err.status)


def run(settings: HeadSettings) -> None:
    setup_logging(settings.log_level, settings.log_format)
    if settings.processes > 1:
        supervise(settings, _serve_shared)
        return
    serve(create_app(settings), settings.host, settings.port, settings.log_level, edge=settings)


def _serve_shared(settings: HeadSettings) -> None:
    """One of ``settings.processes`` heads on the same port (in its own process)."""
    setup_logging(settings.log_level, settings.log_format)
    app = create_app(settings)
    serve(app, settings.host, settings.port, settings.log_level, edge=settings, shared_port=True)
