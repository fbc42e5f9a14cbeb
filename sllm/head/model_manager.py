"""Deploy, update and delete models; the cluster's status as scripts read it."""

from __future__ import annotations

import time
from typing import Any

from pydantic import ValidationError

from sllm.backends.base import BackendUnavailable
from sllm.backends.registry import get_backend
from sllm.config import DeployConfig, HeadSettings
from sllm.edge.errors import Conflict, ModelNotFound, RequestError
from sllm.kv.store import Store


class ModelManager:
    def __init__(self, store: Store, settings: HeadSettings) -> None:
        self.store = store
        self.settings = settings

    async def register(self, config: DeployConfig) -> None:
        _check_deployable(config)
        status = await self.store.registry.save_model(
            config.model, config.model_dump(mode="json"), create=True
        )
        if status == "exists":
            raise Conflict(
                f"model '{config.model}' is already deployed; use /update", param="model"
            )
        if status == "deleting":
            raise Conflict(f"model '{config.model}' is still being deleted", param="model")

    async def update(self, config: DeployConfig) -> dict[str, Any]:
        """Replace the model's config; returns the one it replaces."""
        _check_deployable(config)
        before = await self.store.registry.get_model(config.model)
        status = await self.store.registry.save_model(
            config.model, config.model_dump(mode="json"), create=False
        )
        if status == "missing":
            raise ModelNotFound(f"model '{config.model}' is not deployed", param="model")
        if status == "deleting":
            raise Conflict(f"model '{config.model}' is being deleted", param="model")
        return before.config if before is not None else {}

    async def delete(self, name: str) -> int:
        """Stop taking requests for ``name`` and fail those still queued; in-flight ones
        finish, then the autoscaler stops the instances and removes the model. Returns the
        number of queued requests that were failed."""
        if not await self.store.registry.mark_deleting(name):
            model = await self.store.registry.get_model(name)
            if model is None:
                raise ModelNotFound(f"model '{name}' is not deployed", param="model")
            raise Conflict(f"model '{name}' is already being deleted", param="model")
        failed = 0
        for task_id in await self.store.tasks.queued(name):
            failed += await self.store.tasks.fail_queued(
                name,
                task_id,
                f"The model '{name}' was deleted before this request was served",
                "model_deleted",
                time.time(),
                int(self.settings.result_ttl),
            )
        await self.store.registry.publish_control({"type": "wake", "model": name})
        return failed

    async def status(self, unschedulable: dict[str, str]) -> dict[str, Any]:
        registry = self.store.registry
        models = await registry.list_models()
        names = [m.name for m in models]
        by_model = await registry.all_instances(names)
        queued = await self.store.tasks.queue_lengths(names)
        workers = await registry.list_workers()
        now = time.time()
        return {
            "models": [
                {
                    "model": m.name,
                    "backend": m.config.get("backend"),
                    "state": m.state,
                    "queue_length": queued.get(m.name, 0),
                    "in_flight": sum(i.outstanding for i in by_model.get(m.name, [])),
                    "instances": [
                        {
                            "instance_id": i.id,
                            "node_id": i.node_id,
                            "state": i.state,
                            "outstanding": i.outstanding,
                            "created": i.created,
                            "ready_at": i.ready_at or None,
                            "last_finished": i.last_finished or None,
                            "reason": i.state_reason or None,
                        }
                        for i in by_model.get(m.name, [])
                    ],
                    "unschedulable": m.unschedulable or unschedulable.get(m.name),
                    # Node id -> the backend's message and how many starts failed so.
                    "start_failures": m.start_failures,
                    "config": m.config,
                    "created": m.created,
                    "updated": m.updated,
                }
                for m in models
            ],
            "workers": [
                {
                    "node_id": w.node_id,
                    "url": w.url,
                    "last_heartbeat": w.last_heartbeat,
                    "seconds_since_heartbeat": round(now - w.last_heartbeat, 3),
                    "healthy": now - w.last_heartbeat <= self.settings.heartbeat_timeout
                    and not w.suspect,
                    # Why it is suspected dead (a refused call, failed probes); null: trusted.
                    "suspect": w.suspect or None,
                    # null, "draining", or "drained" (runs no instance any more).
                    "drain": w.drain_state,
                    "resources": w.resources,
                    "backends": w.backends,
                    "instances": w.instances,
                    "cache": w.cache,
                    "warm_processes": w.warm_processes,
                    "warm_pools": w.warm_pools,
                    "unavailable": w.unavailable,
                    "cold_starts": w.cold_starts,
                }
                for w in workers
            ],
        }


def _check_deployable(config: DeployConfig) -> None:
    try:
        backend = get_backend(config.backend)
    except BackendUnavailable as exc:
        raise RequestError(str(exc), param="backend") from None
    if config.lora_adapters and not backend.lora:
        raise RequestError(
            f"the {backend.name} backend does not serve LoRA adapters", param="lora_adapters"
        )
    if backend.knobs is not None:
        # Checked here, so a bad config is a 400 at deploy, not a failed instance later.
        try:
            backend.knobs.model_validate(config.backend_config)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "(root)"
            raise RequestError(
                f"backend_config.{where}: {first['msg']}", param="backend_config"
            ) from None
