"""How many instances a model should have, and which idle ones to stop. Pure."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

LIVE_STATES = ("starting", "ready")


@dataclass(frozen=True)
class ScalingPolicy:
    min_instances: int
    max_instances: int
    queue_per_instance_threshold: int
    keep_alive: float


@dataclass(frozen=True)
class InstanceLoad:
    id: str
    state: str
    outstanding: int
    last_active: float


@dataclass(frozen=True)
class ScalingDecision:
    desired: int
    start: int = 0
    stop: list[str] = field(default_factory=list)


def desired_instances(queued: int, in_flight: int, policy: ScalingPolicy) -> int:
    """ceil((queued + in flight) / threshold), within [min, max].

    In-flight requests count as load: a model busy with long generations and an empty
    queue is busy, not idle.
    """
    wanted = math.ceil((queued + in_flight) / policy.queue_per_instance_threshold)
    return max(policy.min_instances, min(policy.max_instances, wanted))


def decide(
    policy: ScalingPolicy,
    queued: int,
    instances: list[InstanceLoad],
    now: float,
    *,
    deleting: bool = False,
) -> ScalingDecision:
    """Start enough instances for the load; stop only idle ones past keep_alive.

    Starting instances count as live, so a burst of requests that all see no instance
    leads to one scale-up, not one per request. A model being deleted wants none, and
    any idle instance of it stops at once.
    """
    live = [i for i in instances if i.state in LIVE_STATES]
    if deleting:
        return ScalingDecision(desired=0, stop=[i.id for i in live if i.outstanding == 0])
    in_flight = sum(i.outstanding for i in instances)
    desired = desired_instances(queued, in_flight, policy)
    if desired > len(live):
        return ScalingDecision(desired=desired, start=desired - len(live))
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
    )
    return ScalingDecision(desired=desired, stop=[i.id for i in idle[:surplus]])
