"""Asking the gateways to move an instance's requests to the other instances of its
model (live migration): each task's destination as ``migration.destinations`` picks
it, sent as a ``migrate`` control event that the gateway relaying the task acts on
(``stream_moves``). Any head may ask: the gateways hold the streams."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from sllm.backends.registry import get_backend
from sllm.config import DeployConfig
from sllm.head.migration import destinations
from sllm.head.scaling import InstanceLoad
from sllm.kv.records import InstanceRecord
from sllm.kv.store import Store

log = logging.getLogger(__name__)

# How often the moves of an instance being emptied are asked again: a control event
# can be lost (pub/sub), and a request with nowhere to go may go once another instance
# has room.
ASK_AGAIN = 5.0
# Instances whose asks are remembered before the old ones are forgotten.
KEPT = 1000


@dataclass(frozen=True)
class Asked:
    """Moves asked of one instance's tasks: task id -> destination; the tasks that
    stay for want of room elsewhere, and those that cannot move (not streamed)."""

    moves: dict[str, str]
    staying: list[str]
    unmovable: list[str]


async def move_requests(
    store: Store,
    instance: InstanceRecord,
    config: DeployConfig,
    reason: str,
    limit: int | None = None,
) -> Asked:
    """Ask that the requests ``instance`` runs (``limit``: so many of them) go to the
    other instances of its model."""
    running = sorted(await store.registry.instance_tasks(instance.id))
    # Streams move: the gateway relays their text, which the destination goes on from.
    streamed = await store.tasks.streamed(running) if running else []
    tasks = [t for t, s in zip(running, streamed, strict=True) if s][:limit]
    unmovable = [t for t, s in zip(running, streamed, strict=True) if not s]
    others = await store.registry.model_instances(instance.model)
    loads = [InstanceLoad(i.id, i.state, i.outstanding, i.last_active()) for i in others]
    room = config.auto_scaling_config.max_concurrency
    to = destinations(instance.id, loads, room, len(tasks))
    warm = get_backend(config.backend).keeps_prefixes(config.backend_config)
    moves = dict(zip(tasks, to, strict=False))
    for task, destination in moves.items():
        event = {"type": "migrate", "task": task, "to": destination, "reason": reason}
        await store.registry.publish_control({**event, "warm": warm})
    staying = tasks[len(moves) :]
    if tasks:
        log.info(
            "asked to move %d request(s) of %s (%s) to %s%s",
            len(moves),
            instance.id,
            reason,
            ", ".join(sorted(set(to))) or "nowhere",
            f"; {len(staying)} stay (no room elsewhere)" if staying else "",
        )
    if unmovable:  # asked again every few seconds while they run: not at info
        log.debug(
            "%d request(s) of %s are not streams: they finish there", len(unmovable), instance.id
        )
    return Asked(moves, staying, unmovable)


class Asks:
    """When each instance's moves were last asked, so that they are asked again only
    every ASK_AGAIN seconds."""

    def __init__(self) -> None:
        self._at: dict[str, float] = {}

    def due(self, instance_id: str, now: float) -> bool:
        if now - self._at.get(instance_id, float("-inf")) < ASK_AGAIN:
            return False
        self._at[instance_id] = now
        if len(self._at) > KEPT:  # those asked long ago are done or gone
            self._at = {i: t for i, t in self._at.items() if now - t < ASK_AGAIN}
        return True

    def keep(self, instance_ids: set[str]) -> None:
        """Forget the instances that are gone."""
        for gone in self._at.keys() - instance_ids:
            del self._at[gone]
