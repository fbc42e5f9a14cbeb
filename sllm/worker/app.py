"""The worker's HTTP API: /start_instance /stop_instance /sleep_instance /wake_instance
/invoke /confirmation /health."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from types import FrameType
from typing import Annotated, Any, Literal

import httpx
from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.datastructures import State

from sllm.backends import warm_heap
from sllm.backends.base import BackendUnavailable
from sllm.backends.model_source import ModelSourceError, check_source
from sllm.backends.registry import warm_pools, warm_primes
from sllm.client.procs import backend_environment
from sllm.config import WorkerSettings
from sllm.edge.api_errors import ERROR_RESPONSES, error_response, install_error_handlers
from sllm.edge.body_limit import BodyLimit
from sllm.edge.guards import Guard, require_cluster_token
from sllm.edge.lean_routes import LeanApp
from sllm.edge.names import AdapterName, InstanceId, ModelName, NodeId
from sllm.edge.serving import serve, setup_logging
from sllm.kv.keys import Keys
from sllm.kv.redis_url import URL_PATTERN
from sllm.kv.store import Store
from sllm.metrics import CONTENT_TYPE_LATEST, WorkerMetrics, exposition
from sllm.store import arena
from sllm.worker import store_routes
from sllm.worker.gpu_assignment import GpuDoesNotFit
from sllm.worker.hardware import gpu_count
from sllm.worker.heartbeat import Heartbeat
from sllm.worker.instance_manager import InstanceExists, InstanceManager
from sllm.worker.model_cache import WorkerCache, build_cache
from sllm.worker.proxy import InvokeBody, Proxy
from sllm.worker.sleepers import NoRoomToSleep, Sleepers
from sllm.worker.store_ahead import StoreAhead
from sllm.worker.warm_pool import WarmPool

log = logging.getLogger(__name__)


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


# A worker's URL as the head knows it (its --advertise-url).
PeerUrl = Annotated[str, Field(max_length=2048, pattern=r"^https?://[^\s/]+(/[^\s]*)?$")]


class ConfirmationBody(_Body):
    node_id: NodeId
    # A URL redis-py can open; anything else would fail only at the first command.
    redis_url: str | None = Field(None, max_length=2048, pattern=URL_PATTERN)


class CutAnswerBody(_Body):
    instance_id: InstanceId
    task_id: str = Field(min_length=1, max_length=128)
    to: InstanceId
    reason: str = Field(min_length=1, max_length=32)


class StartInstanceBody(_Body):
    # Both become process arguments and file names: plain names only.
    instance_id: InstanceId
    model: ModelName
    # A plain string: an unknown backend is answered by BackendUnavailable's message.
    backend: str
    backend_config: dict[str, Any] = Field(default_factory=dict)
    num_gpus: int = Field(0, ge=0)
    lora_adapters: dict[AdapterName, str] = Field(default_factory=dict)
    startup_timeout: float = Field(300.0, gt=0)
    # Workers that hold the model stored: it is fetched from one before its source.
    store_peers: list[PeerUrl] = Field(default_factory=list, max_length=16)


class StoreModelBody(_Body):
    source: str = Field(min_length=1, max_length=1024)
    task: Literal["auto", "generate", "embed"] = "auto"
    trust_remote_code: bool = False
    # Converted to ONNX at this precision (the onnx backend's copy), not the sllm format.
    onnx_precision: Literal["auto", "int4", "int8", "fp16", "fp32"] | None = None


class InstanceBody(_Body):
    instance_id: InstanceId


class UpdateAdaptersBody(_Body):
    instance_id: InstanceId
    lora_adapters: dict[AdapterName, str]


# /invoke answers NDJSON: {"alive": true} lines while the attempt runs, then its outcome.
INVOKE_STREAM: dict[str, Any] = {
    "description": 'NDJSON: {"alive": true} each second, then {"outcome", "error"}.',
    "content": {"application/x-ndjson": {"schema": {"type": "string"}}},
}


def _warm_pool(name: str, settings: WorkerSettings) -> WarmPool:
    """The pool of warm processes for the backends of pool ``name``. sllm's own backends'
    processes hold the warm arena and heap; vLLM's hold neither (its engine, forked
    from the process, allocates its KV cache itself), and are kept only once this
    worker has started a vLLM instance."""
    env = backend_environment()
    if name == "sllm":
        env |= {
            arena.ENV: str(int(settings.warm_arena_gb * 1e9)),
            **warm_heap.environment(int((settings.warm_heap_gb or 0.0) * 1e9)),
        }
    log_name = "warm-pool.log" if name == "sllm" else f"warm-pool-{name}.log"
    return WarmPool(
        settings.warm_processes,
        warm_primes(name),
        settings.log_dir / log_name,
        env,
        # vLLM's warm processes take 0.6 GB each: kept once this worker has run vLLM.
        on_demand=name != "sllm",
    )


class Worker:
    """What the routes share: instances, heartbeat and, once the head confirms, Redis."""

    def __init__(self, settings: WorkerSettings, state: State) -> None:
        self.settings = settings
        self._state = state
        self.metrics = WorkerMetrics()
        self.cache = WorkerCache(build_cache(settings), self.metrics)
        self.pools = {name: _warm_pool(name, settings) for name in warm_pools()}
        self.instances = InstanceManager(
            settings.log_dir,
            self.on_state,
            storage_path=settings.storage_path,
            metrics=self.metrics,
            pools=self.pools,
            cluster_token=Guard.for_worker(settings).cluster_token,
        )
        self.sleepers = Sleepers(self.instances, self.cache)
        self.store_ahead = StoreAhead(
            settings.storage_path, settings.log_dir, lambda: self.heartbeat.beat_now()
        )
        self.heartbeat = Heartbeat(
            settings, self.instances, self.confirm, self.metrics, cache=self.cache
        )
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
        self.sleepers.changed(instance_id, state)
        if state in ("stopped", "failed"):
            self.cache.ended(instance_id, state)
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
        await self.store_ahead.close()
        await asyncio.gather(*(pool.close() for pool in self.pools.values()))
        await self.cache.close()
        if self.proxy is not None:
            await self.proxy.aclose()
        if self.store is not None:
            await self.store.close()


def _worker(request: Request) -> Worker:
    worker: Worker = request.app.state.worker
    return worker


def _machine_defaults(settings: WorkerSettings) -> WorkerSettings:
    """The settings whose default depends on the machine, filled in (NVML is asked here,
    before the event loop runs, not on it)."""
    if settings.warm_heap_gb is not None:
        return settings
    gpus = gpu_count()
    heap = 0.0 if gpus else warm_heap.CPU_DEFAULT_GB
    log.info("warm heap: %.2f GB per warm process (%d NVIDIA GPUs)", heap, gpus)
    return settings.model_copy(update={"warm_heap_gb": heap})


def create_app(settings: WorkerSettings) -> LeanApp:
    settings = _machine_defaults(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        worker = Worker(settings, app.state)
        app.state.worker = worker
        for pool in worker.pools.values():
            pool.start()
        beating = asyncio.create_task(worker.heartbeat.run())
        upkeep = asyncio.create_task(worker.cache.upkeep())
        try:
            with _drain_on_exit_signals(worker.heartbeat):
                yield
        finally:
            for task in (beating, upkeep):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await worker.close()

    app = LeanApp(title="sllm worker", lifespan=lifespan, responses=ERROR_RESPONSES)
    app.add_middleware(
        BodyLimit,
        max_bytes=settings.worker_max_body_bytes,
        setting="SLLM_WORKER_MAX_BODY_BYTES",
        body_timeout=settings.body_timeout,
    )

    install_error_handlers(app)
    # Everything but /health is called by the head, and carries the cluster token.
    app.state.guard = Guard.for_worker(settings)
    from_head = [Depends(require_cluster_token)]

    @app.get("/health")
    async def health(request: Request) -> dict[str, Any]:
        worker = _worker(request)
        return {
            "status": "ok",
            "node_id": worker.heartbeat.node_id,
            "instances": len(worker.instances.list()),
            "draining": worker.heartbeat.draining,
        }

    @app.get("/metrics", include_in_schema=False)
    async def metrics(request: Request) -> Response:
        worker = _worker(request)
        gauge = worker.metrics.instances
        gauge.clear()
        for state, count in Counter(i.state for i in worker.instances.list()).items():
            gauge.labels(state).set(count)
        return Response(exposition(worker.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.post("/confirmation", dependencies=from_head)
    async def confirmation(body: ConfirmationBody, request: Request) -> dict[str, Any]:
        await _worker(request).confirm(body.node_id, body.redis_url)
        return {"node_id": body.node_id}

    @app.post("/start_instance", status_code=202, response_model=None, dependencies=from_head)
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
                body.store_peers,
            )
            _worker(request).cache.started(body.instance_id, body.backend_config)
        except InstanceExists as exc:
            return error_response(409, str(exc), "instance_exists", param="instance_id")
        except BackendUnavailable as exc:
            return error_response(400, str(exc), "backend_unavailable", param="backend")
        except GpuDoesNotFit as exc:
            return error_response(409, str(exc), "gpu_does_not_fit", param="num_gpus")
        except ValueError as exc:  # a backend_config its launcher cannot map
            return error_response(400, str(exc), "invalid_request", param="backend_config")
        except RuntimeError as exc:
            return error_response(503, str(exc), "worker_shutting_down", type_="server_error")
        return {"instance_id": body.instance_id, "state": "starting"}

    @app.post("/cut_answer", response_model=None, dependencies=from_head)
    async def cut_answer(body: CutAnswerBody, request: Request) -> dict[str, Any] | JSONResponse:
        """End a non-streamed answer at its next token, to move it (live migration)."""
        proxy: Proxy | None = request.app.state.proxy
        moved = {"to": body.to, "reason": body.reason}
        if proxy is None or not await proxy.cut(body.instance_id, body.task_id, moved):
            return error_response(404, f"no answer of task {body.task_id} to cut", "not_found")
        return {"cut": True}

    @app.post("/store_model", status_code=202, response_model=None, dependencies=from_head)
    async def store_model(body: StoreModelBody, request: Request) -> dict[str, Any] | JSONResponse:
        """Store a model now, before its first start (the head asks on deploy)."""
        try:
            check_source(body.source, on_disk=True)  # what the backend would refuse
        except ModelSourceError as exc:
            return error_response(400, str(exc), "invalid_request", param="source")
        started = _worker(request).store_ahead.request(
            body.source, body.task, body.trust_remote_code, body.onnx_precision
        )
        return {"source": body.source, "state": "storing" if started else "already storing"}

    @app.post("/stop_instance", response_model=None, dependencies=from_head)
    async def stop_instance(body: InstanceBody, request: Request) -> dict[str, Any] | JSONResponse:
        if not await _worker(request).instances.stop(body.instance_id):
            return _no_instance(body.instance_id)
        return {"stopped": True}

    @app.post("/sleep_instance", response_model=None, dependencies=from_head)
    async def sleep_instance(body: InstanceBody, request: Request) -> dict[str, Any] | JSONResponse:
        """Put an idle instance to sleep; answered once it sleeps. Any other answer
        leaves it to the head to stop it."""
        try:
            await _worker(request).sleepers.put_to_sleep(body.instance_id)
        except KeyError:
            return _no_instance(body.instance_id)
        except (BackendUnavailable, NoRoomToSleep) as exc:
            return error_response(409, f"cannot sleep: {exc}", "cannot_sleep")
        except RuntimeError as exc:
            return error_response(409, str(exc), "cannot_sleep")
        return {"instance_id": body.instance_id, "state": "sleeping"}

    @app.post("/wake_instance", status_code=202, response_model=None, dependencies=from_head)
    async def wake_instance(body: InstanceBody, request: Request) -> dict[str, Any] | JSONResponse:
        """Wake a sleeping instance: "ready" (or "failed") is reported when it is."""
        try:
            _worker(request).instances.wake_soon(body.instance_id)
        except KeyError:
            return _no_instance(body.instance_id)
        return {"instance_id": body.instance_id, "state": "waking"}

    @app.post("/update_adapters", response_model=None, dependencies=from_head)
    async def update_adapters(
        body: UpdateAdaptersBody, request: Request
    ) -> dict[str, Any] | JSONResponse:
        try:
            await _worker(request).instances.set_adapters(body.instance_id, body.lora_adapters)
        except KeyError:
            return _no_instance(body.instance_id)
        except BackendUnavailable as exc:
            return error_response(409, str(exc), "adapters_need_restart")
        except (httpx.HTTPError, RuntimeError) as exc:
            return error_response(502, str(exc), "backend_error", type_="server_error")
        return {"instance_id": body.instance_id, "lora_adapters": sorted(body.lora_adapters)}

    @app.post(
        "/invoke",
        response_model=None,
        response_class=StreamingResponse,
        dependencies=from_head,
        responses={200: INVOKE_STREAM},
    )
    async def invoke(body: InvokeBody, request: Request) -> Response:
        # Validated here, so a bad body is a 400 in OpenAI's shape like on every route.
        proxy: Proxy | None = request.app.state.proxy
        if proxy is None:
            return error_response(
                503,
                "the head has not confirmed this worker yet",
                "worker_not_ready",
                type_="server_error",
            )
        return await proxy.invoke(body, request)

    app.include_router(store_routes.router)  # peers fetch stored models here
    app.serve_lean("/invoke")  # every attempt's hop: no FastAPI layers
    return app


def _no_instance(instance_id: str) -> JSONResponse:
    return error_response(
        404, f"no instance {instance_id!r} here", "instance_not_found", param="instance_id"
    )


@contextlib.contextmanager
def _drain_on_exit_signals(heartbeat: Heartbeat) -> Iterator[None]:
    """Have SIGTERM/SIGINT tell the head first, then shut down as uvicorn does.

    uvicorn's handlers (installed before the lifespan starts) stop accepting calls and
    let those in flight finish; the head must hear at once that this worker is leaving,
    or it keeps sending new tasks to a closed port.
    """
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set from the main thread
        return
    loop = asyncio.get_running_loop()
    wrapped: dict[signal.Signals, Callable[[int, FrameType | None], Any]] = {}
    for sig in (signal.SIGTERM, signal.SIGINT):
        handler = signal.getsignal(sig)
        if not callable(handler):
            continue  # the default action: no uvicorn here to shut down gracefully

        def on_signal(
            signum: int,
            frame: FrameType | None,
            handler: Callable[[int, FrameType | None], Any] = handler,
        ) -> None:
            loop.call_soon_threadsafe(heartbeat.drain)
            handler(signum, frame)

        wrapped[sig] = handler
        signal.signal(sig, on_signal)
    try:
        yield
    finally:
        for sig, handler in wrapped.items():
            signal.signal(sig, handler)


def run(settings: WorkerSettings) -> None:
    """Serve the worker until SIGINT/SIGTERM; the lifespan stops every backend."""
    setup_logging(settings.log_level, settings.log_format)
    serve(
        create_app(settings),
        settings.host,
        settings.port,
        settings.log_level,
        # Its clients are heads and peers: an access line per /invoke (each request) and
        # per /health probe (each second per leader) was noise that cost a tenth of the
        # worker's CPU per request at the default level. Refusals and errors still show.
        access_log="failures",
        edge=settings,
        graceful=settings.drain_timeout,
    )
