"""Management API: deploy, update, delete, status, health, and worker heartbeats."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field

from sllm.config import DeployConfig
from sllm.head.autoscaler import Autoscaler
from sllm.head.model_manager import ModelManager
from sllm.head.worker_manager import HeartbeatBody, WorkerManager

router = APIRouter()


class DeleteBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1, max_length=256)


def _models(request: Request) -> ModelManager:
    manager: ModelManager = request.app.state.models
    return manager


@router.post("/register")
async def register(config: DeployConfig, request: Request) -> dict[str, Any]:
    await _models(request).register(config)
    return {"model": config.model, "state": "active"}


@router.post("/update")
async def update(config: DeployConfig, request: Request) -> dict[str, Any]:
    await _models(request).update(config)
    return {"model": config.model, "state": "active"}


@router.post("/delete")
async def delete(body: DeleteBody, request: Request) -> dict[str, Any]:
    failed = await _models(request).delete(body.model)
    return {"model": body.model, "state": "deleting", "queued_requests_failed": failed}


@router.get("/status")
async def status(request: Request) -> dict[str, Any]:
    autoscaler: Autoscaler = request.app.state.autoscaler
    return await _models(request).status(autoscaler.unschedulable)


@router.get("/health")
async def health(request: Request) -> dict[str, Any]:
    await request.app.state.store.ping()
    return {"status": "ok", "head_id": request.app.state.head_id}


@router.post("/heartbeat")
async def heartbeat(body: HeartbeatBody, request: Request) -> dict[str, str]:
    workers: WorkerManager = request.app.state.workers
    return await workers.heartbeat(body)
