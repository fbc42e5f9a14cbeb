"""The worker's HTTP API: /start_instance /stop_instance /invoke /confirmation /health."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.datastructures import State

from sllm.api_errors import error_response, install_error_handlers
from sllm.backends.base import BackendUnavailable
from sllm.config import WorkerSettings
from sllm.kv.keys import Keys
from sllm.kv.store import Store
from sllm.serving import serve, setup_logging
from sllm.worker.gpu_assignment import GpuDoesNotFit
from sllm.worker.heartbeat import Heartbeat
from sllm.worker.instance_manager import InstanceExists, InstanceManager
from sllm.worker.proxy import Proxy

log = logging.getLogger(__name__)


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ConfirmationBody(_Body):
    node_id: str = Field(min_length=1)
    redis_url: str | None = None


class StartInstanceBody(_Body):
    instance_id: str = Field(min_length=1, max_length=256)
    model: str = Field(min_length=1)
    # A plain string: an unknown backend is answered by BackendUnavailable's message.
    backend: str
    backend_config: dict[str, Any] = Field(default_factory=dict)
    num_gpus: int = Field(0, ge=0)
    lora_adapters: dict[str, str] = Field(default_factory=dict)
    startup_timeout: float = Field(300.0, gt=0)


class StopInstanceBody(_Body):
    instance_id: str = Field(min_length=1)


class Worker:
    """What the routes share: instances, heartbeat and, once the head confirms, Redis."""

    def __init__(self, settings: WorkerSettings, state: State) -> None:
        self.settings = settings
        self._state = state
        self.instances = InstanceManager(
            settings.log_dir, self.on_state, storage_path=settings.storage_path
        )
        self.heartbeat = Heartbeat(settings, self.instances, self.confirm)
        self.store: Store | None = None
        self.proxy: Proxy | None = None
        self._connecting = asyncio.Lock()
        state.proxy = None

    async def confirm(self, node_id: str, redis_url: str | None) -> None:
        """The head knows us as ``node_id``; connect to Redis on the first confirmation."""
        self.heartbeat.node_id = node_id
        async with self._connecting:
            if self.store is not None:
                return
            url = self.settings.redis_url or redis_url
            if not url:
                log.warning("the head sent no Redis URL and SLLM_REDIS_URL is unset")
                return
            # Patient: the heartbeat and state reports should ride out a Redis restart.
            store = Store.connect(url, Keys(self.settings.key_prefix), patient=True)
            self.proxy = self._state.proxy = Proxy(store, self.instances)
            self.store = store
            log.info("worker %s connected to Redis at %s", node_id, url)

    async def on_state(self, instance_id: str, state: str, reason: str) -> None:
        try:
            if self.store is None:
                # The next heartbeat carries the instance list to the head.
                log.info("instance %s is %s before Redis is known", instance_id, state)
            else:
                await self.store.registry.set_instance_state(instance_id, state, reason=reason)
        finally:
            self.heartbeat.beat_now()

    async def close(self) -> None:
        # Instances first: their "stopped" reports still need Redis.
        await self.instances.stop_all()
        if self.proxy is not None:
            await self.proxy.aclose()
        if self.store is not None:
            await self.store.close()


def _worker(request: Request) -> Worker:
    worker: Worker = request.app.state.worker
    return worker


def create_app(settings: WorkerSettings) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        worker = Worker(settings, app.state)
        app.state.worker = worker
        beating = asyncio.create_task(worker.heartbeat.run())
        try:
            yield
        finally:
            beating.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await beating
            await worker.close()

    app = FastAPI(title="sllm worker", lifespan=lifespan)

    install_error_handlers(app)

    @app.get("/health")
    async def health(request: Request) -> dict[str, Any]:
        worker = _worker(request)
        return {
            "status": "ok",
            "node_id": worker.heartbeat.node_id,
            "instances": len(worker.instances.list()),
        }

    @app.post("/confirmation")
    async def confirmation(body: ConfirmationBody, request: Request) -> dict[str, Any]:
        await _worker(request).confirm(body.node_id, body.redis_url)
        return {"node_id": body.node_id}

    @app.post("/start_instance", status_code=202, response_model=None)
    async def start_instance(
        body: StartInstanceBody, request: Request
    ) -> dict[str, Any] | JSONResponse:
        try:
            await _worker(request).instances.start(
                body.instance_id,
                body.model,
                body.backend,
                body.backend_config,
                body.num_gpus,
                body.lora_adapters,
                body.startup_timeout,
            )
        except InstanceExists as exc:
            return error_response(409, str(exc), "instance_exists", param="instance_id")
        except BackendUnavailable as exc:
            return error_response(400, str(exc), "backend_unavailable", param="backend")
        except GpuDoesNotFit as exc:
            return error_response(409, str(exc), "gpu_does_not_fit", param="num_gpus")
        except RuntimeError as exc:
            return error_response(503, str(exc), "worker_shutting_down", type_="server_error")
        return {"instance_id": body.instance_id, "state": "starting"}

    @app.post("/stop_instance", response_model=None)
    async def stop_instance(
        body: StopInstanceBody, request: Request
    ) -> dict[str, Any] | JSONResponse:
        if not await _worker(request).instances.stop(body.instance_id):
            return error_response(
                404,
                f"no instance {body.instance_id!r} here",
                "instance_not_found",
                param="instance_id",
            )
        return {"stopped": True}

    @app.post("/invoke", response_model=None)
    async def invoke(request: Request) -> Response:
        proxy: Proxy | None = request.app.state.proxy
        if proxy is None:
            return error_response(
                503,
                "the head has not confirmed this worker yet",
                "worker_not_ready",
                type_="server_error",
            )
        try:
            body = await request.json()
        except ValueError:
            return error_response(400, "the body is not JSON", "invalid_request")
        if not isinstance(body, dict):
            return error_response(400, "the body must be a JSON object", "invalid_request")
        return proxy.invoke(body)

    return app


def run(settings: WorkerSettings) -> None:
    """Serve the worker until SIGINT/SIGTERM; the lifespan stops every backend."""
    setup_logging(settings.log_level)
    serve(create_app(settings), settings.host, settings.port, settings.log_level)
