"""Whether an idle instance may sleep on this worker, and which sleepers make room for
it. Pure.

A sleeping instance holds its weights in host memory (vLLM's sleep mode, level 1). It is
the fastest tier there is, so it shares the memory tier's limit (``memory_cache_gb``)
and is counted first: the models the memory tier holds are evicted to make room for it.
Sleepers themselves make room for a newer one, longest asleep first, and the machine
keeps a share of its memory free whatever the limit.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

# Host memory left free whatever sleeps: what the worker, its backends' own processes
# and the page cache of the models they load need.
FREE_SHARE = 0.1


@dataclass(frozen=True)
class Asleep:
    instance_id: str
    bytes: int  # host memory its weights hold
    since: float


def room_to_sleep(
    asleep: Sequence[Asleep], wanted: int, limit: int, available: int, total: int
) -> list[str] | None:
    """Which sleeping instances to stop, longest asleep first, so that ``wanted`` more
    bytes fit: the sleepers' total within ``limit``, and a ``FREE_SHARE`` of the
    machine's ``total`` memory left of what is ``available``. None when even stopping
    them all leaves no room (the instance is stopped instead of put to sleep)."""
    held = sum(a.bytes for a in asleep)
    reserve = int(total * FREE_SHARE)

    def fits() -> bool:
        return held + wanted <= limit and available - wanted >= reserve

    out: list[str] = []
    for a in sorted(asleep, key=lambda a: (a.since, a.instance_id)):
        if fits():
            return out
        out.append(a.instance_id)
        held -= a.bytes
        available += a.bytes
    return out if fits() else None
