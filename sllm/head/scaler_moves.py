"""The scaler's uses of live migration. Scaling in busy instances: the scaler picks
them (``scaling.decide``'s ``migrate``); from then on they are ``migrating``, take no
new task, their requests are asked to move to the other instances (``mover``), and
they stop once they serve nothing. A request that cannot move (several choices, tools;
an answer on vLLM) is waited for, as before. Rebalancing: an instance that runs far more than
another of its model sheds some (``migration.to_rebalance``). Making room: another
model's instances give up a worker where a new instance would be ready soonest
(``room.make_room``), emptied the same way."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from sllm.config import DeployConfig
from sllm.head.migration import destinations, to_rebalance
from sllm.head.mover import Asks, move_requests
from sllm.head.placement import Placement, Requirement, WorkerCapacity
from sllm.head.room import Occupant, RoomPlan, make_room
from sllm.head.scaling import InstanceLoad
from sllm.head.worker_manager import WorkerManager
from sllm.kv.records import InstanceRecord
from sllm.kv.store import Store

log = logging.getLogger(__name__)


class ScalerMoves:
    def __init__(self, store: Store, workers: WorkerManager) -> None:
        self.store = store
        self.workers = workers
        self.asks = Asks()

    async def begin(
        self, inst: InstanceRecord, config: DeployConfig, now: float, reason: str = "scale_in"
    ) -> None:
        # Refused when it went on to another state meanwhile.
        if await self.store.registry.set_instance_state(inst.id, "migrating", reason=reason):
            log.info("emptying busy instance %s of %s (%s)", inst.id, inst.model, reason)
            self.asks.due(inst.id, now)
            await move_requests(self.store, inst, config, reason, cut=self.workers.cut_answer)

    async def follow(self, inst: InstanceRecord, config: DeployConfig, now: float) -> None:
        """One pass over an instance being emptied."""
        if inst.outstanding == 0:
            await self.workers.stop_instance(inst)
        elif self.asks.due(inst.id, now):
            reason = inst.state_reason or "scale_in"
            await move_requests(self.store, inst, config, reason, cut=self.workers.cut_answer)

    async def make_room(
        self,
        model: str,
        need: Requirement,
        placements: list[Placement],
        room: list[WorkerCapacity],
        view: Occupancy,
        now: float,
    ) -> tuple[list[Placement], RoomPlan | None]:
        """The placements to start now: all of them, or all but the first when making
        room elsewhere (``room.make_room``) gives the first instance sooner; that room
        is then made (idle occupants stopped, busy ones emptied) and the instance
        placed there by a later pass, once it fits. The plan, if one was made."""
        waiting = view.queued.get(model, 0)
        instead = placements[0].estimate.seconds if placements else None
        plan = make_room(room, need, view.occupants(model, room), waiting, instead)
        if plan is None:
            return placements, None
        if plan.evict:
            log.info("%s", plan.summary(model))
        by_id = {i.id: i for i in view.instances}
        for inst_id in plan.evict:
            inst = by_id[inst_id]
            if inst.outstanding == 0:
                await self.workers.stop_instance(inst)
            else:
                await self.begin(inst, view.configs[inst.model], now, reason="make_room")
        return placements[1:], plan

    async def rebalance(
        self,
        instances: list[InstanceRecord],
        loads: list[InstanceLoad],
        config: DeployConfig,
        now: float,
    ) -> None:
        shed = to_rebalance(loads)
        if shed is None or not self.asks.due(shed[0], now):
            return
        source = next(i for i in instances if i.id == shed[0])
        # Streams only: an answer moved to even out load costs a second prefill, and
        # the client, who sees none of it before its end, gains little.
        await move_requests(self.store, source, config, "rebalance", limit=shed[1])


@dataclass(frozen=True)
class Occupancy:
    """What holds the workers in an autoscaler pass: every instance, each model's
    config and queued requests."""

    instances: list[InstanceRecord]
    configs: dict[str, DeployConfig]
    queued: dict[str, int]

    def occupants(self, model: str, room: list[WorkerCapacity]) -> list[Occupant]:
        """The other models' instances, what each holds (GPUs; a CPU one, its weights'
        memory as its worker reports their size) and whether each may go."""
        caches = {w.node_id: w.cache for w in room}
        out = []
        for inst in self.instances:
            config = self.configs.get(inst.model)
            if inst.model == model or config is None:
                continue
            source = config.backend_config.get("pretrained_model_name_or_path")
            stored = caches.get(inst.node_id, {}).get(source) if isinstance(source, str) else None
            memory = stored.bytes if stored is not None and not config.num_gpus else 0
            if inst.state in ("migrating", "draining"):
                out.append(Occupant(inst.id, inst.node_id, inst.model, config.num_gpus,
                                    inst.outstanding, movable=False, leaving=True,
                                    memory=memory))  # fmt: skip
            elif inst.state == "ready":
                out.append(Occupant(inst.id, inst.node_id, inst.model, config.num_gpus,
                                    inst.outstanding, self._movable(inst, config),
                                    memory=memory))  # fmt: skip
        return out

    def _movable(self, inst: InstanceRecord, config: DeployConfig) -> bool:
        if self.queued.get(inst.model, 0):
            return False  # its model wants every instance it has
        if inst.outstanding == 0:
            return True
        loads = [
            InstanceLoad(i.id, i.state, i.outstanding, i.last_active())
            for i in self.instances
            if i.model == inst.model
        ]
        room = config.auto_scaling_config.max_concurrency
        return len(destinations(inst.id, loads, room, inst.outstanding)) == inst.outstanding
