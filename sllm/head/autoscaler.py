"""The scaling loop: read the cluster, decide per model, apply. Leader-only.

Only the head holding the leader lock acts, so two heads never both act on one decision.
A request for a model with no instance wakes the loop at once through the control
channel; otherwise it runs every ``autoscale_interval`` seconds. Each pass also prunes
silent workers and reaps expired leases.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from sllm.backends.registry import get_backend
from sllm.config import DeployConfig, HeadSettings
from sllm.head import resting, start_failures
from sllm.head.deployed import DeployConfigs
from sllm.head.placement import (
    Placement,
    Requirement,
    Stored,
    WorkerCapacity,
    after_placing,
    memory_short,
    place,
    unservable,
)
from sllm.head.reaper import Reaper
from sllm.head.recent import Recent
from sllm.head.redis_health import RedisHealth
from sllm.head.scaler_moves import Occupancy, ScalerMoves
from sllm.head.scaling import InstanceLoad, ScalingPolicy, at_rest, decide
from sllm.head.worker_manager import WorkerManager
from sllm.kv import RedisError
from sllm.kv.records import InstanceRecord, ModelRecord, WorkerRecord
from sllm.kv.store import Store
from sllm.metrics import HeadMetrics

log = logging.getLogger(__name__)

LEADER_LOCK = "autoscaler"
# A starting instance whose worker never reported it ready or failed is given up on
# this long after its own startup timeout.
STARTUP_GRACE = 30.0


def capacities(
    workers: list[WorkerRecord],
    instances: list[InstanceRecord],
    gpus_per_instance: dict[str, int],
) -> list[WorkerCapacity]:
    """What each live worker has left, from its last heartbeat and the instances on it."""
    out = []
    for w in workers:
        # A sleeping instance neither keeps its GPUs from a new one (the worker stops it
        # for them) nor shares the CPU; its host memory is in the worker's figure.
        mine = [i for i in instances if i.node_id == w.node_id and i.state != "sleeping"]
        gpus_used = sum(gpus_per_instance.get(i.model, 0) for i in mine)
        out.append(
            WorkerCapacity(
                node_id=w.node_id,
                # One asked to drain gets nothing new, from the moment it is asked.
                backends=() if w.drain else tuple(w.backends),
                free_memory=int(w.resources.get("memory_available", 0)),
                free_gpus=len(w.resources.get("gpus", [])) - gpus_used,
                instances=len(mine),
                total_gpus=len(w.resources.get("gpus", [])),
                cache={c["source"]: Stored(c["tier"], int(c["bytes"])) for c in w.cache},
                # A worker that reports no pools is one from before there were several.
                warm=w.warm_pools or {"sllm": w.warm_processes},
                unavailable=(
                    {b: f"worker {w.node_id} is drained" for b in w.backends}
                    if w.drain
                    else w.unavailable
                ),
                cpu_percent=float(w.resources.get("cpu_percent", 0.0)),
                peer_fetch_bytes_per_s=_positive(w.resources.get("peer_fetch_bytes_per_s")),
            )
        )
    return out


def _positive(value: Any) -> float | None:
    """A figure a worker reported, if it is a positive number."""
    return float(value) if isinstance(value, int | float) and value > 0 else None


def requirement(config: DeployConfig, room: list[WorkerCapacity]) -> Requirement:
    """What a new instance of ``config`` needs, with its size as the workers report it."""
    backend = get_backend(config.backend)
    warm_pool = backend.warm_pool if backend.warm_prime else None
    source = config.backend_config.get("pretrained_model_name_or_path")
    if not isinstance(source, str):
        return Requirement(config.backend, gpus=config.num_gpus, warm_pool=warm_pool)
    sizes = [w.cache[source].bytes for w in room if source in w.cache]
    return Requirement(
        backend=config.backend,
        gpus=config.num_gpus,
        source=source,
        weights_bytes=max(sizes) if sizes else None,
        warm_pool=warm_pool,
    )


class Autoscaler:
    def __init__(
        self,
        store: Store,
        settings: HeadSettings,
        head_id: str,
        workers: WorkerManager,
        metrics: HeadMetrics,
        recent: Recent,
        health: RedisHealth | None = None,
    ) -> None:
        self.store = store
        self.health = health or RedisHealth()
        self.settings = settings
        self.head_id = head_id
        self.workers = workers
        self.metrics = metrics
        self.recent = recent
        self.reaper = Reaper(store, settings, metrics)
        self._wake = asyncio.Event()
        self.unschedulable: dict[str, str] = {}
        self._leading = False
        self._configs = DeployConfigs()
        self._resting = resting.RestingModels()
        self.moves = ScalerMoves(store, workers)

    def leading(self) -> bool:
        """Whether this head held the leader lock at its latest pass."""
        return self._leading

    async def on_control(self, event: dict[str, Any]) -> None:
        if event.get("type") == "wake" or (
            event.get("type") == "instance" and event.get("state") in ("failed", "stopped")
        ):
            self._wake.set()

    async def run(self) -> None:
        lock_ttl = max(5.0, 3 * self.settings.autoscale_interval)
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), self.settings.autoscale_interval)
            except TimeoutError:
                pass
            self._wake.clear()
            try:
                self._leading = await self.store.registry.hold_leader(
                    LEADER_LOCK, self.head_id, lock_ttl
                )
                if self._leading:
                    await self.tick(time.time())
            except RedisError as exc:
                log.warning("autoscaler pass skipped: %s", exc)
            except Exception:
                log.exception("autoscaler pass failed")

    async def tick(self, now: float) -> None:
        registry = self.store.registry
        version, models = await registry.read_models()
        if self._resting.update(version, models, self._configs.of):
            self._configs.keep(m.name for m in models)
        by_model = await registry.all_instances([])  # the models with instances
        active = await self.store.tasks.queued_models()
        queued = {model: waiting for model, (waiting, _) in active.items()}
        heard, silent = self.workers.alive(
            await registry.list_workers(), now, self.health.refused_at
        )
        for node_id in silent:
            await self.workers.prune(node_id)
        # A suspected worker is kept (its heartbeat clears it) but used for nothing.
        suspects = {w.node_id: w.suspect for w in heard if w.suspect}
        live_workers = [w for w in heard if not w.suspect]
        live_nodes = {w.node_id for w in live_workers}
        in_play = resting.in_play(models, self._resting.part.watched, {*by_model, *queued})
        configs = {m.name: self._configs.of(m) for m in in_play}
        playing = set(configs)
        for name in [n for n in self.unschedulable if n not in playing]:
            self.unschedulable.pop(name)  # at rest: nothing waits to be placed

        given_up: dict[str, dict[str, str]] = {}
        for model in in_play:
            if not model.start_failures and not by_model.get(model.name):
                given_up[model.name] = {}  # nothing lost, nothing noted
                continue
            kept = []
            failures = start_failures.parse(model.start_failures)
            for inst in by_model.get(model.name, []):
                reason = self._lost(inst, configs[model.name], live_nodes, suspects, now)
                if reason:
                    if inst.state == "failed" and not inst.ready_at:  # a failed start
                        noted = start_failures.after_failure(
                            failures.get(inst.node_id), inst.id, reason
                        )
                        if noted is not None:
                            failures[inst.node_id] = noted
                    await self.workers.retire(inst, reason)
                else:
                    kept.append(inst)
                    if inst.state == "ready":  # it starts there now
                        failures.pop(inst.node_id, None)
            by_model[model.name] = kept
            await self._note_start_failures(model, failures)
            given_up[model.name] = start_failures.given_up(failures)

        all_instances = [i for insts in by_model.values() for i in insts]
        self.moves.asks.keep({i.id for i in all_instances})
        gpus = {name: c.num_gpus for name, c in configs.items()}
        room = capacities(live_workers, all_instances, gpus)
        occupancy = Occupancy(all_instances, configs, queued)
        # Why each requirement is unservable, worked out once a pass: models share them.
        reasons: dict[Requirement, str] = {}
        for model in in_play:
            await self._mark_servable(
                model, configs[model.name], room, now, given_up[model.name], reasons
            )
        await self._mark_resting(room, now, playing, reasons)
        for model in in_play:
            min_instances = configs[model.name].auto_scaling_config.min_instances
            waiting, instances = queued.get(model.name, 0), len(by_model.get(model.name, []))
            if at_rest(min_instances, waiting, instances, deleting=model.state == "deleting"):
                self.unschedulable.pop(model.name, None)  # nothing waits to be placed
                continue
            # Each model's placements use up room the next model's must not count again.
            room = await self._scale(
                model,
                configs[model.name],
                by_model.get(model.name, []),
                queued,
                now,
                room,
                live_workers,
                set(given_up[model.name]),
                occupancy,
            )
        await self.reaper.reap([model for model, (_, claimed) in active.items() if claimed], now)

    async def _note_start_failures(
        self, model: ModelRecord, failures: dict[str, start_failures.StartFailure]
    ) -> None:
        noted = {n: f.to_dict() for n, f in failures.items()}
        if noted == model.start_failures:
            return
        before = start_failures.given_up(start_failures.parse(model.start_failures))
        for node, message in start_failures.given_up(failures).items():
            if node not in before:
                log.warning("%s is not placed on %s any more: %s", model.name, node, message)
        await self.store.registry.set_start_failures(model.name, noted)

    async def _mark_resting(
        self,
        room: list[WorkerCapacity],
        now: float,
        playing: set[str],
        reasons: dict[Requirement, str],
    ) -> None:
        """Mark the resting models servable or not, when their records or what the live
        workers can serve changed since they last were."""
        part = self._resting.part
        for need in part.resting:
            if need not in reasons:
                reasons[need] = unservable(room, need) or ""
        now_reasons = {need: reasons[need] for need in part.resting}
        if not self._resting.to_mark(now_reasons):
            return
        for rested in part.resting.values():
            for model in rested:
                if model.name not in playing:
                    await self._mark_servable(
                        model, self._configs.of(model), room, now, {}, reasons
                    )
        self._resting.marked(now_reasons)

    async def _mark_servable(
        self,
        model: ModelRecord,
        config: DeployConfig,
        room: list[WorkerCapacity],
        now: float,
        given_up: dict[str, str],
        reasons: dict[Requirement, str],
    ) -> None:
        """Record in Redis whether any live worker could serve the model: while none can
        (or every one that could failed to start it the same way twice), the gateway
        refuses its requests at once (503) and those queued fail, instead of waiting for
        their deadline."""
        if model.state != "active":
            return
        need = resting.servability(config)
        if need not in reasons:
            reasons[need] = unservable(room, need) or ""
        reason = reasons[need]
        # Only for a model given up on somewhere: a pass over every worker for every
        # model made the pass cost models x workers.
        if not reason and given_up:
            startable = [w for w in room if w.node_id not in given_up]
            if unservable(startable, need):
                reason = start_failures.why_unstartable(model.name, given_up)
        if reason == model.unschedulable:
            return
        await self.store.registry.set_unschedulable(model.name, reason)
        if not reason:
            log.info("%s can be served again", model.name)
            return
        log.warning("%s cannot be served: %s", model.name, reason)
        for task_id in await self.store.tasks.queued(model.name):
            await self.store.tasks.fail_queued(
                model.name,
                task_id,
                f"no worker can serve model '{model.name}': {reason}",
                "model_unschedulable",
                now,
                int(self.settings.result_ttl),
            )

    async def store_ahead(self, config: DeployConfig) -> None:
        """A model just deployed, that no live worker has stored, is stored now on the
        worker its first instance would be placed on, so that its first start loads the
        model instead of converting it (the demo model: 0.45 s instead of 20 s)."""
        if config.backend not in ("transformers", "onnx", "vllm"):
            return  # the backends that load from sllm's store
        # Heard from lately; not alive(), whose bookkeeping belongs to the leader's passes.
        now, timeout = time.time(), self.settings.heartbeat_timeout
        workers = await self.store.registry.list_workers()
        live = [w for w in workers if now - w.last_heartbeat <= timeout and not w.suspect]
        room = capacities(live, [], {})
        need = requirement(config, room)
        if need.source is None or need.weights_bytes is not None:
            return  # nothing to store, or some worker has it already
        placements = place(room, need)
        if placements:
            worker = next(w for w in live if w.node_id == placements[0].node_id)
            await self.workers.store_model(worker, config)

    def _observe_placement(self, model: str, placement: Placement) -> None:
        e, other = placement.estimate, placement.runner_up
        log.info(
            "placing %s on %s: %s tier, ready in about %.2f s "
            "(process %.2f + load %.2f + busy %.2f); next best %s",
            model,
            placement.node_id,
            e.tier,
            e.seconds,
            e.process_start,
            e.load,
            e.penalty,
            f"{other.seconds:.2f} s ({other.tier} tier)" if other else "none",
        )
        self.metrics.placements.labels(model, e.tier).inc()
        self.metrics.placement_estimate.labels(model).observe(e.seconds)

    async def _wake_sleeper(self, inst: InstanceRecord) -> None:
        """Wake a sleeping instance: the fastest tier a start can find."""
        log.info("waking %s of %s on %s (sleeping tier)", inst.id, inst.model, inst.node_id)
        self.metrics.placements.labels(inst.model, "sleeping").inc()
        await self.workers.wake_instance(inst)

    @staticmethod
    def _lost(
        inst: InstanceRecord,
        config: DeployConfig,
        live_nodes: set[str],
        suspects: dict[str, str],
        now: float,
    ) -> str:
        if inst.state in ("failed", "stopped"):
            return inst.state_reason or f"instance {inst.state}"
        if inst.node_id in suspects:
            return f"worker {inst.node_id} suspected dead: {suspects[inst.node_id]}"
        if inst.node_id not in live_nodes:
            return f"worker {inst.node_id} is gone"
        if inst.state == "starting" and now - inst.created > config.startup_timeout + STARTUP_GRACE:
            return "start-up never finished"
        if inst.state == "waking" and now - inst.updated > config.startup_timeout + STARTUP_GRACE:
            return "waking never finished"
        return ""

    async def _scale(
        self,
        model: ModelRecord,
        config: DeployConfig,
        instances: list[InstanceRecord],
        queued: dict[str, int],
        now: float,
        room: list[WorkerCapacity],
        live_workers: list[WorkerRecord],
        given_up: set[str],
        occupancy: Occupancy,
    ) -> list[WorkerCapacity]:
        """Start and stop instances of ``model``, never on the workers ``given_up`` on;
        the room left after its placements."""
        asc = config.auto_scaling_config
        policy = ScalingPolicy(
            asc.min_instances,
            asc.max_instances,
            asc.queue_per_instance_threshold,
            asc.keep_alive,
            asc.max_concurrency,
        )
        can_sleep = get_backend(config.backend).sleeps(config.backend_config, config.num_gpus)
        loads = [
            InstanceLoad(i.id, i.state, i.outstanding, i.last_active(), can_sleep)
            for i in instances
        ]
        deleting = model.state == "deleting"
        decision = decide(policy, queued.get(model.name, 0), loads, now, deleting=deleting)
        by_id = {i.id: i for i in instances}
        if decision.wake:
            await asyncio.gather(*(self._wake_sleeper(by_id[i]) for i in decision.wake))
        if decision.start:
            need = requirement(config, room)
            startable = [w for w in room if w.node_id not in given_up]
            placements = place(startable, need, decision.start)
            making_room = None
            # Room is made for GPUs, or for memory a model's weights lack where it
            # would load fastest (a CPU instance holds no GPU, only memory).
            if need.gpus or any(memory_short(w, need) for w in startable):
                placements, making_room = await self.moves.make_room(
                    model.name, need, placements, startable, occupancy, now
                )
            for p in placements:
                self._observe_placement(model.name, p)
            nodes = [p.node_id for p in placements]
            if making_room is not None:
                self.unschedulable.pop(model.name, None)  # it starts there once made
            elif len(nodes) < decision.start:
                note = (
                    f"no live worker has room for another instance of backend "
                    f"{config.backend!r} with {config.num_gpus} GPU(s)"
                    + (f" (not placed on {', '.join(sorted(given_up))}: see start_failures)"
                       if given_up else "")
                )  # fmt: skip
                if self.unschedulable.get(model.name) != note:
                    log.warning("%s: %s", model.name, note)
                self.unschedulable[model.name] = note
            else:
                self.unschedulable.pop(model.name, None)
            by_node = {w.node_id: w for w in live_workers}
            decided = time.perf_counter()

            async def start(placement: Placement) -> None:
                worker = by_node[placement.node_id]
                # Peers the autoscaler heard from this pass: live, so listed by_node.
                peers = [by_node[p].url for p in placement.peers if p in by_node]
                if await self.workers.start_instance(worker, model.name, config, peers):
                    seconds = time.perf_counter() - decided
                    self.metrics.cold_start.labels(model.name, "placement").observe(seconds)
                    self.recent.cold_start(time.time(), seconds)

            await asyncio.gather(*(start(p) for p in placements))
            room = after_placing(room, need, placements)
        else:
            self.unschedulable.pop(model.name, None)  # nothing waits to be placed
        for inst_id in decision.stop:
            await self.workers.stop_instance(by_id[inst_id])
        for inst_id in decision.migrate:
            await self.moves.begin(by_id[inst_id], config, now)
        for inst in instances:
            if inst.state == "migrating":
                await self.moves.follow(inst, config, now)
        if not decision.migrate:
            await self.moves.rebalance(instances, loads, config, now)
        for inst_id in decision.sleep:
            # In the background: copying the weights out takes seconds, and the next
            # pass must not wait for it (Redis says "sleeping" from the first moment).
            self.workers.detach(self.workers.sleep_instance(by_id[inst_id]))
        if deleting and not instances:
            if await self.store.registry.purge_model(model.name):
                log.info("model %s deleted", model.name)
        return room
