"""Management API: deploy, update, delete, status, health, draining workers, moving an
instance's requests, and worker heartbeats."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict

from sllm.config import DeployConfig
from sllm.edge import names
from sllm.edge.errors import NotFound, RequestError
from sllm.edge.guards import require_admin_key, require_cluster_token
from sllm.edge.names import ModelName
from sllm.head.autoscaler import Autoscaler
from sllm.head.model_manager import ModelManager
from sllm.head.mover import move_requests
from sllm.head.worker_manager import HeartbeatBody, WorkerManager

router = APIRouter()
# The admin key guards every management route; /health stays open, and /heartbeat
# takes the cluster token, which workers hold instead.
ADMIN = [Depends(require_admin_key)]


class DeleteBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: ModelName


def _models(request: Request) -> ModelManager:
    manager: ModelManager = request.app.state.models
    return manager


@router.post("/register", dependencies=ADMIN)
async def register(config: DeployConfig, request: Request) -> dict[str, Any]:
    await _models(request).register(config)
    autoscaler: Autoscaler = request.app.state.autoscaler
    workers: WorkerManager = request.app.state.workers
    workers.detach(autoscaler.store_ahead(config))
    return {"model": config.model, "state": "active"}


@router.post("/update", dependencies=ADMIN)
async def update(config: DeployConfig, request: Request) -> dict[str, Any]:
    before = await _models(request).update(config)
    answer: dict[str, Any] = {"model": config.model, "state": "active"}
    if before.get("lora_adapters", {}) != config.lora_adapters:
        workers: WorkerManager = request.app.state.workers
        answer["adapters"] = await workers.update_adapters(config)
    return answer


@router.post("/delete", dependencies=ADMIN)
async def delete(body: DeleteBody, request: Request) -> dict[str, Any]:
    failed = await _models(request).delete(body.model)
    return {"model": body.model, "state": "deleting", "queued_requests_failed": failed}


@router.get("/status", dependencies=ADMIN)
async def status(request: Request) -> dict[str, Any]:
    autoscaler: Autoscaler = request.app.state.autoscaler
    found = await _models(request).status(autoscaler.unschedulable)
    # Whether Redis accepts writes, as this head saw it within the last 2 s.
    found["redis"] = request.app.state.redis_health.status()
    return found


@router.get("/health")
async def health(request: Request) -> dict[str, Any]:
    await request.app.state.store.ping()
    return {"status": "ok", "head_id": request.app.state.head_id}


@router.post("/heartbeat", dependencies=[Depends(require_cluster_token)])
async def heartbeat(body: HeartbeatBody, request: Request) -> dict[str, Any]:
    # The node id becomes a Redis key and the URL is called by the head: plain only.
    if body.node_id is not None and not names.is_node_id(body.node_id):
        raise RequestError(f"node_id: {names.ID_RULE}", param="node_id")
    if not body.url.startswith(("http://", "https://")):
        raise RequestError("url: the worker's URL must be http:// or https://", param="url")
    workers: WorkerManager = request.app.state.workers
    return await workers.heartbeat(body)


@router.post("/workers/{node_id}/drain", dependencies=ADMIN)
async def drain_worker(node_id: str, request: Request) -> dict[str, Any]:
    """No new instance goes to the worker from now on; its instances take no new task and
    are stopped once the tasks they run end (queued ones go to instances elsewhere).
    ``drain`` says "draining", then "drained" once it runs nothing (``GET /status``)."""
    return await _drain(request, node_id, True)


@router.delete("/workers/{node_id}/drain", dependencies=ADMIN)
async def undrain_worker(node_id: str, request: Request) -> dict[str, Any]:
    """The worker takes work again (one shutting down on SIGTERM still leaves)."""
    return await _drain(request, node_id, False)


@router.post("/instances/{instance_id}/migrate", dependencies=ADMIN)
async def migrate_instance(instance_id: str, request: Request) -> dict[str, Any]:
    """Move the requests the instance runs to the other instances of its model (live
    migration: the client sees one stream, or one answer); ``moves`` says which task
    goes where, ``staying`` those no other instance has room for, ``unmovable`` those
    that cannot move (they finish where they run)."""
    if not names.is_instance_id(instance_id):
        raise RequestError(f"instance_id: {names.ID_RULE}", param="instance_id")
    workers: WorkerManager = request.app.state.workers
    store = workers.store
    instance = await store.registry.get_instance(instance_id)
    record = await store.registry.get_model(instance.model) if instance is not None else None
    if instance is None or record is None:
        raise NotFound(f"no instance {instance_id!r} is running", param="instance_id")
    config = DeployConfig.model_validate(record.config)
    asked = await move_requests(store, instance, config, "operator", cut=workers.cut_answer)
    return {
        "instance": instance_id,
        "moves": asked.moves,
        "staying": asked.staying,
        "unmovable": asked.unmovable,
    }


async def _drain(request: Request, node_id: str, drain: bool) -> dict[str, Any]:
    if not names.is_node_id(node_id):
        raise RequestError(f"node_id: {names.ID_RULE}", param="node_id")
    workers: WorkerManager = request.app.state.workers
    if not await workers.store.registry.drain_worker(node_id, drain):
        raise NotFound(f"no worker {node_id!r} is registered", param="node_id")
    record = next(
        (w for w in await workers.store.registry.list_workers() if w.node_id == node_id), None
    )
    return {"node_id": node_id, "drain": record.drain_state if record else None}
