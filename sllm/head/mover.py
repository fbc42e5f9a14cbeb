"""Asking that an instance's requests move to the other instances of its model (live
migration), each to the destination ``migration.destinations`` picks: a stream by a
``migrate`` control event that the gateway relaying it acts on (``stream_moves``; any
head may ask: the gateways hold the streams); a non-streamed answer by its worker,
which has its backend end it at the next token (``backends/cuts.py``) for its gateway
to continue on the destination (``answer_moves``)."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
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


# (instance, task, destination, reason) -> whether its worker cut the answer short.
CutAnswer = Callable[[InstanceRecord, str, str, str], Awaitable[bool]]


@dataclass(frozen=True)
class Asked:
    """Moves asked of one instance's tasks: task id -> destination; the tasks that
    stay for want of room elsewhere, and those that cannot move (several choices,
    tools, log-probabilities, ...; a backend that cannot cut its answers)."""

    moves: dict[str, str]
    staying: list[str]
    unmovable: list[str]


async def move_requests(
    store: Store,
    instance: InstanceRecord,
    config: DeployConfig,
    reason: str,
    limit: int | None = None,
    cut: CutAnswer | None = None,
) -> Asked:
    """Ask that the requests ``instance`` runs (``limit``: so many of them, streams
    first) go to the other instances of its model; answers only where ``cut`` is given."""
    running = sorted(await store.registry.instance_tasks(instance.id))
    streamed = await store.tasks.streamed(running) if running else []
    streams = [t for t, s in zip(running, streamed, strict=True) if s]
    answers = [t for t, s in zip(running, streamed, strict=True) if not s and cut]
    tasks = [*streams, *answers][:limit]
    others = await store.registry.model_instances(instance.model)
    loads = [InstanceLoad(i.id, i.state, i.outstanding, i.last_active()) for i in others]
    room = config.auto_scaling_config.max_concurrency
    to = destinations(instance.id, loads, room, len(tasks))
    warm = get_backend(config.backend).keeps_prefixes(config.backend_config)
    moves: dict[str, str] = {}
    unmovable = [t for t in running if t not in streams and t not in answers]
    for task, destination in zip(tasks, to, strict=False):
        if task in answers:
            assert cut is not None
            if not await cut(instance, task, destination, reason):
                unmovable.append(task)  # it ended meanwhile, or cannot be cut
                continue
        else:
            event = {"type": "migrate", "task": task, "to": destination, "reason": reason}
            await store.registry.publish_control({**event, "warm": warm})
        moves[task] = destination
    staying = tasks[len(to) :]
    if tasks:
        log.info(
            "asked to move %d request(s) of %s (%s) to %s%s",
            len(moves),
            instance.id,
            reason,
            ", ".join(sorted(set(moves.values()))) or "nowhere",
            f"; {len(staying)} stay (no room elsewhere)" if staying else "",
        )
    if unmovable:  # asked again every few seconds while they run: not at info
        log.debug("%d request(s) of %s cannot move: they finish there", len(unmovable), instance.id)
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
