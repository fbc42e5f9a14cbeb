"""Typed views of the Redis hashes; pure, so decisions can be tested on plain data."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

# Which states an instance may move to, from which. 'draining' and 'sleeping' also need
# the instance idle, which instance_state.lua checks atomically. A sleeping instance
# (vLLM's sleep mode: weights in host memory, GPU memory free) serves nothing until it
# has woken ('waking', then 'ready').
TRANSITIONS: dict[str, tuple[str, ...]] = {
    "ready": ("starting", "waking"),
    "sleeping": ("ready",),
    "waking": ("sleeping",),
    # Scaled in while busy: it takes no new task, its requests move to the others
    # (live migration), and it drains once it serves nothing.
    "migrating": ("ready",),
    # A starting instance drains only when its model is deleted: it is never idle.
    "draining": ("starting", "ready", "sleeping", "migrating"),
    "failed": ("starting", "ready", "draining", "sleeping", "waking", "migrating"),
    "stopped": ("starting", "ready", "draining", "failed", "sleeping", "waking", "migrating"),
}


def _f(value: str | None, default: float = 0.0) -> float:
    return float(value) if value not in (None, "") else default


@dataclass
class ModelRecord:
    name: str
    config: dict[str, Any]
    state: str
    created: float = 0.0
    updated: float = 0.0
    # Why no live worker can serve it ("" while one can); set by the autoscaler.
    unschedulable: str = ""
    # Node id -> how starts of it failed there (head/start_failures.py); set by the
    # autoscaler, cleared by an update of the model.
    start_failures: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_hash(cls, h: dict[str, str]) -> ModelRecord:
        return cls(
            name=h["name"],
            config=json.loads(h.get("config") or "{}"),
            state=h.get("state", "active"),
            created=_f(h.get("created")),
            updated=_f(h.get("updated")),
            unschedulable=h.get("unschedulable", ""),
            start_failures=json.loads(h.get("start_failures") or "{}"),
        )


@dataclass
class InstanceRecord:
    id: str
    model: str
    node_id: str
    url: str
    backend: str = "dummy"
    state: str = "starting"
    outstanding: int = 0
    created: float = 0.0
    updated: float = 0.0
    ready_at: float = 0.0
    last_finished: float = 0.0
    state_reason: str = ""

    @classmethod
    def from_hash(cls, h: dict[str, str]) -> InstanceRecord:
        return cls(
            id=h["id"],
            model=h.get("model", ""),
            node_id=h.get("node_id", ""),
            url=h.get("url", ""),
            backend=h.get("backend", ""),
            state=h.get("state", "starting"),
            outstanding=int(h.get("outstanding") or 0),
            created=_f(h.get("created")),
            updated=_f(h.get("updated")),
            ready_at=_f(h.get("ready_at")),
            last_finished=_f(h.get("last_finished")),
            state_reason=h.get("state_reason", ""),
        )

    def last_active(self) -> float:
        """When the instance last did something: started serving or finished a request."""
        return max(self.ready_at, self.last_finished, self.created)


@dataclass
class WorkerRecord:
    node_id: str
    url: str
    last_heartbeat: float
    registered: float = 0.0
    resources: dict[str, Any] = field(default_factory=dict)
    instances: list[dict[str, Any]] = field(default_factory=list)
    backends: list[str] = field(default_factory=list)
    cache: list[dict[str, Any]] = field(default_factory=list)
    warm_processes: int = 0
    # Idle warm processes by pool (Backend.warm_pool); warm_processes is their sum.
    warm_pools: dict[str, int] = field(default_factory=dict)
    # Backend -> why the worker cannot run it.
    unavailable: dict[str, str] = field(default_factory=dict)
    # Its latest cold starts with their phases (seconds), newest last.
    cold_starts: list[dict[str, Any]] = field(default_factory=list)
    # Why it is suspected dead ("": trusted), since when; a heartbeat clears it.
    suspect: str = ""
    suspect_since: float = 0.0
    # Asked to drain (drain_worker.lua), and draining as its heartbeat says (asked, or
    # shutting down on SIGTERM).
    drain: bool = False
    draining: bool = False

    @property
    def drain_state(self) -> str | None:
        """None, "draining", or "drained" once it runs no instance."""
        if not (self.drain or self.draining):
            return None
        return "draining" if self.instances else "drained"

    @classmethod
    def from_hash(cls, h: dict[str, str]) -> WorkerRecord:
        return cls(
            node_id=h["node_id"],
            url=h.get("url", ""),
            last_heartbeat=_f(h.get("last_heartbeat")),
            registered=_f(h.get("registered")),
            resources=json.loads(h.get("resources") or "{}"),
            instances=json.loads(h.get("instances") or "[]"),
            backends=json.loads(h.get("backends") or "[]"),
            cache=json.loads(h.get("cache") or "[]"),
            warm_processes=int(h.get("warm_processes") or 0),
            warm_pools=json.loads(h.get("warm_pools") or "{}"),
            unavailable=json.loads(h.get("unavailable") or "{}"),
            cold_starts=json.loads(h.get("cold_starts") or "[]"),
            suspect=h.get("suspect", ""),
            suspect_since=_f(h.get("suspect_since")),
            drain=h.get("drain") == "1",
            draining=h.get("draining") == "1",
        )


@dataclass
class TaskRecord:
    id: str
    model: str
    state: str
    attempt: int
    max_attempts: int
    instance: str = ""
    owner: str = ""
    lease: float = 0.0
    deadline: float = 0.0
    result: str | None = None

    @classmethod
    def from_hash(cls, task_id: str, h: dict[str, str]) -> TaskRecord:
        return cls(
            id=task_id,
            model=h.get("model", ""),
            state=h.get("state", ""),
            attempt=int(h.get("attempt") or 0),
            max_attempts=int(h.get("max_attempts") or 1),
            instance=h.get("instance", ""),
            owner=h.get("owner", ""),
            lease=_f(h.get("lease")),
            deadline=_f(h.get("deadline")),
            result=h.get("result") or None,
        )
