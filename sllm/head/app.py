"""The head: one FastAPI app whose lifespan owns every loop of the control plane."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiohttp
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from sllm.api_errors import install_error_handlers
from sllm.config import HeadSettings
from sllm.errors import ServiceUnavailable
from sllm.head import gateway, management
from sllm.head.autoscaler import Autoscaler
from sllm.head.dispatcher import Dispatcher
from sllm.head.gateway import Gateway
from sllm.head.model_manager import ModelManager
from sllm.head.worker_manager import WorkerManager
from sllm.kv import RedisError
from sllm.kv.bus import ResultBus
from sllm.kv.keys import Keys
from sllm.kv.store import Store
from sllm.serving import serve, setup_logging

log = logging.getLogger("sllm.head")


def create_app(settings: HeadSettings) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        keys = Keys(settings.key_prefix)
        head_id = f"head-{uuid.uuid4().hex[:8]}"
        # The request path fails fast when Redis is down; loops ride out a restart.
        fast = Store.connect(settings.redis_url, keys, patient=False)
        patient = Store.connect(settings.redis_url, keys, patient=True)
        await _wait_for_redis(patient, settings.redis_url)
        http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=60))
        bus = ResultBus(patient.client, keys, head_id)
        workers = WorkerManager(patient, settings, http)
        dispatcher = Dispatcher(patient, settings, head_id, http)
        autoscaler = Autoscaler(patient, settings, head_id, workers)
        bus.on_control(dispatcher.on_control)
        bus.on_control(autoscaler.on_control)
        await bus.start()

        app.state.head_id = head_id
        app.state.store = fast
        app.state.gateway = Gateway(fast, bus, settings)
        app.state.models = ModelManager(fast, settings)
        app.state.workers = workers
        app.state.autoscaler = autoscaler
        loops = [
            asyncio.create_task(dispatcher.run(), name="dispatcher"),
            asyncio.create_task(autoscaler.run(), name="autoscaler"),
        ]
        log.info("head %s serving on %s:%d", head_id, settings.host, settings.port)
        try:
            yield
        finally:
            for loop in loops:
                loop.cancel()
            await asyncio.gather(*loops, return_exceptions=True)
            await workers.close()
            await bus.stop()
            await http.close()
            await fast.close()
            await patient.close()

    app = FastAPI(title="sllm head", version="0.1.0", lifespan=lifespan)
    app.include_router(gateway.router)
    app.include_router(management.router)
    _install_error_handlers(app)
    return app


async def _wait_for_redis(store: Store, url: str, timeout: float = 30.0) -> None:
    try:
        await asyncio.wait_for(store.ping(), timeout)
    except (RedisError, OSError, TimeoutError) as exc:
        raise SystemExit(f"sllm head: cannot reach Redis at {url}: {exc}") from None


def _install_error_handlers(app: FastAPI) -> None:
    install_error_handlers(app)

    @app.exception_handler(RedisError)
    async def redis_down(_: Request, exc: RedisError) -> JSONResponse:
        err = ServiceUnavailable(f"the cluster's state store is unavailable: {exc}")
        return JSONResponse(err.to_body(), status_code=err.status)


def run(settings: HeadSettings) -> None:
    setup_logging(settings.log_level)
    serve(create_app(settings), settings.host, settings.port, settings.log_level)
