"""What fault tests read straight from Redis and from the process table.

The cluster's state lives in Redis (key names in ``sllm/kv/keys.py``), so "no task stays
claimed" and "this task ran twice" are read there rather than trusted from an API.
"""

from __future__ import annotations

from dataclasses import dataclass

import psutil
import redis

from sllm.kv.keys import Keys

K = Keys()


def connect(url: str) -> redis.Redis:
    client: redis.Redis = redis.Redis.from_url(
        url, decode_responses=True, socket_timeout=5, socket_connect_timeout=2
    )
    return client


@dataclass(frozen=True)
class Task:
    id: str
    state: str
    attempt: int
    owner: str
    instance: str
    request_id: str
    result: str
    reply_to: str
    claimed: float  # when its current attempt was stamped (time.time()); 0 if never


def tasks(r: redis.Redis) -> dict[str, Task]:
    """Every task hash, by task id."""
    out: dict[str, Task] = {}
    prefix = K.task("")
    for key in r.scan_iter(match=f"{prefix}*", count=500):
        task_id = key[len(prefix) :]
        h = r.hgetall(key)
        if not h or ":" in task_id:
            continue
        out[task_id] = Task(
            id=task_id,
            state=h.get("state", ""),
            attempt=int(h.get("attempt") or 0),
            owner=h.get("owner", ""),
            instance=h.get("instance", ""),
            request_id=h.get("request_id", ""),
            result=h.get("result", ""),
            reply_to=h.get("reply_to", ""),
            claimed=float(h.get("claimed") or 0),
        )
    return out


def task_by_request(r: redis.Redis, request_id: str) -> Task | None:
    return next((t for t in tasks(r).values() if t.request_id == request_id), None)


def running(r: redis.Redis) -> list[Task]:
    return [t for t in tasks(r).values() if t.state == "running"]


def leftover_claims(r: redis.Redis, model: str) -> list[str]:
    """Everything that says a task is still claimed; empty once the cluster has settled."""
    left: list[str] = []
    if r.llen(K.processing(model)):
        left.append(f"processing list: {r.lrange(K.processing(model), 0, -1)}")
    if r.zcard(K.leases):
        left.append(f"leases: {r.zrange(K.leases, 0, -1, withscores=True)}")
    for instance_id in r.smembers(K.model_instances(model)):
        held = r.smembers(K.instance_tasks(instance_id))
        outstanding = int(r.hget(K.instance(instance_id), "outstanding") or 0)
        if held or outstanding:
            left.append(f"instance {instance_id}: tasks {held}, outstanding {outstanding}")
    left += [f"task {t.id} still running (attempt {t.attempt})" for t in running(r)]
    return left


# A task in one of these states is finished for good: no claim, lease or queue entry
# should still point at it.
FINAL_STATES = frozenset({"done", "failed", "cancelled"})


def unsettled(r: redis.Redis, model: str) -> list[str]:
    """Everything that says work is still pending anywhere; empty once a cluster that took
    no new request for a while has settled. Stricter than ``leftover_claims``: it also
    wants the queue drained, every task hash final (or expired), and no task set left on
    any instance, including instances no longer in the model's set (a lost worker's)."""
    left = leftover_claims(r, model)
    if r.llen(K.queue(model)):
        left.append(f"queue: {r.lrange(K.queue(model), 0, -1)}")
    listed = {K.instance_tasks(i) for i in r.smembers(K.model_instances(model))}
    for key in r.scan_iter(match=K.instance_tasks("*"), count=500):
        if key not in listed and r.scard(key):
            left.append(f"{key}: {r.smembers(key)}")
    left += [
        f"task {t.id} in state {t.state!r} (attempt {t.attempt})"
        for t in tasks(r).values()
        if t.state not in FINAL_STATES and t.state != "running"  # running: leftover_claims
    ]
    return left


def instances(r: redis.Redis, model: str) -> dict[str, dict[str, str]]:
    return {i: r.hgetall(K.instance(i)) for i in r.smembers(K.model_instances(model))}


def dead(pid: int) -> bool:
    """Gone, or a zombie nobody has reaped yet (it runs no more code either way)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def children(pid: int) -> list[int]:
    return [p.pid for p in psutil.Process(pid).children(recursive=True)]
