"""How many instances a model should have, which sleeping ones to wake, and which idle
ones to stop or put to sleep. Pure."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

# Instances that serve or soon will; a sleeping one serves nothing until woken.
LIVE_STATES = ("starting", "ready", "waking")


@dataclass(frozen=True)
class ScalingPolicy:
    min_instances: int
    max_instances: int
    queue_per_instance_threshold: int
    keep_alive: float
    # Requests an instance serves at once; with it, a busy instance past keep_alive can
    # be scaled in by moving its requests to the others (0: only idle ones stop).
    max_concurrency: int = 0


@dataclass(frozen=True)
class InstanceLoad:
    id: str
    state: str
    outstanding: int
    last_active: float
    # Whether, once idle, it sleeps instead of stopping (vLLM's sleep mode on a GPU).
    can_sleep: bool = False


@dataclass(frozen=True)
class ScalingDecision:
    desired: int
    start: int = 0
    stop: list[str] = field(default_factory=list)
    # Sleeping instances to wake, before any start: a wake moves weights from host memory
    # back to the GPU, faster than any new process.
    wake: list[str] = field(default_factory=list)
    # Idle instances to put to sleep instead of stopping (their worker may still refuse,
    # lacking host memory: they are stopped then).
    sleep: list[str] = field(default_factory=list)
    # Busy instances to scale in by moving their requests to the others (live
    # migration), stopped once they serve nothing.
    migrate: list[str] = field(default_factory=list)


def desired_instances(queued: int, in_flight: int, policy: ScalingPolicy) -> int:
    """ceil((queued + in flight) / threshold), within [min, max].

    In-flight requests count as load: a model busy with long generations and an empty
    queue is busy, not idle.
    """
    wanted = math.ceil((queued + in_flight) / policy.queue_per_instance_threshold)
    return max(policy.min_instances, min(policy.max_instances, wanted))


def at_rest(min_instances: int, queued: int, instances: int, *, deleting: bool) -> bool:
    """Whether there is nothing to decide for a model: none of its instances exist or
    are wanted, and nothing waits. Most models of a large deployment, on every pass."""
    return not deleting and min_instances == 0 and queued == 0 and instances == 0


def decide(
    policy: ScalingPolicy,
    queued: int,
    instances: list[InstanceLoad],
    now: float,
    *,
    deleting: bool = False,
) -> ScalingDecision:
    """Wake or start enough instances for the load; stop or put to sleep only idle
    ones past keep_alive.

    Starting and waking instances count as live, so a burst of requests that all see no
    instance leads to one scale-up, not one per request. Sleeping ones are woken before
    any is started, the most recently active first. A model being deleted wants none:
    its idle and sleeping instances stop at once. Where idle ones are too few for the
    surplus, busy ones past keep_alive (the fewest requests first) are emptied by
    moving their requests, when the instances that stay have room for them.
    """
    live = [i for i in instances if i.state in LIVE_STATES]
    asleep = sorted(
        (i for i in instances if i.state == "sleeping"), key=lambda i: (-i.last_active, i.id)
    )
    if deleting:
        unused = [i.id for i in live if i.outstanding == 0] + [i.id for i in asleep]
        return ScalingDecision(desired=0, stop=unused)
    in_flight = sum(i.outstanding for i in instances)
    desired = desired_instances(queued, in_flight, policy)
    if desired > len(live):
        missing = desired - len(live)
        wake = [i.id for i in asleep[:missing]]
        return ScalingDecision(desired=desired, start=missing - len(wake), wake=wake)
    surplus = len(live) - desired
    idle = sorted(
        (
            i
            for i in live
            if i.state == "ready"
            and i.outstanding == 0
            and now - i.last_active >= policy.keep_alive
        ),
        key=lambda i: (i.last_active, i.id),
    )[:surplus]
    return ScalingDecision(
        desired=desired,
        stop=[i.id for i in idle if not i.can_sleep],
        sleep=[i.id for i in idle if i.can_sleep],
        migrate=_to_empty(policy, live, idle, surplus - len(idle), now),
    )


def _to_empty(
    policy: ScalingPolicy,
    live: list[InstanceLoad],
    idle: list[InstanceLoad],
    count: int,
    now: float,
) -> list[str]:
    """Up to ``count`` busy instances whose requests the instances that stay can take."""
    if count <= 0 or not policy.max_concurrency:
        return []
    leaving = {i.id for i in idle}
    staying = [i for i in live if i.id not in leaving]
    busy = sorted(
        (
            i
            for i in staying
            if i.state == "ready" and i.outstanding and now - i.last_active >= policy.keep_alive
        ),
        key=lambda i: (i.outstanding, i.last_active, i.id),
    )
    out: list[str] = []
    moving = 0
    for candidate in busy:
        if len(out) == count:
            break
        rest = [i for i in staying if i.id != candidate.id and i.state == "ready"]
        room = sum(max(0, policy.max_concurrency - i.outstanding) for i in rest)
        if moving + candidate.outstanding <= room:
            out.append(candidate.id)
            staying = rest + [i for i in staying if i.state != "ready"]
            moving += candidate.outstanding
    return out
