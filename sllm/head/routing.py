"""Which instance serves the next task. Pure."""

from __future__ import annotations

from sllm.head.scaling import InstanceLoad


def pick_instance(instances: list[InstanceLoad], max_concurrency: int) -> InstanceLoad | None:
    """The ready instance with the fewest outstanding requests that still has room."""
    ready = [i for i in instances if i.state == "ready" and i.outstanding < max_concurrency]
    if not ready:
        return None
    return min(ready, key=lambda i: (i.outstanding, i.id))
