"""The scaler's uses of live migration. Scaling in busy instances: the scaler picks
them (``scaling.decide``'s ``migrate``); from then on they are ``migrating``, take no
new task, their requests are asked to move to the other instances (``mover``), and
they stop once they serve nothing. A request that cannot move (not streamed, several
choices) is waited for, as before. Rebalancing: an instance that runs far more than
another of its model sheds some (``migration.to_rebalance``)."""

from __future__ import annotations

import logging

from sllm.config import DeployConfig
from sllm.head.migration import to_rebalance
from sllm.head.mover import Asks, move_requests
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

    async def begin(self, inst: InstanceRecord, config: DeployConfig, now: float) -> None:
        # Refused when it went on to another state meanwhile.
        if await self.store.registry.set_instance_state(inst.id, "migrating", reason="scale_in"):
            log.info("scaling in busy instance %s of %s", inst.id, inst.model)
            self.asks.due(inst.id, now)
            await move_requests(self.store, inst, config, "scale_in")

    async def follow(self, inst: InstanceRecord, config: DeployConfig, now: float) -> None:
        """One pass over an instance being emptied."""
        if inst.outstanding == 0:
            await self.workers.stop_instance(inst)
        elif self.asks.due(inst.id, now):
            await move_requests(self.store, inst, config, "scale_in")

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
        await move_requests(self.store, source, config, "rebalance", limit=shed[1])
