"""Live migration's decisions: where an instance's requests go, and whether the
destination needs another warm-up round before the source stops. Pure.

A migration moves a running request by its text, not its KV cache: the destination
first prefills the prompt plus what was produced so far while the source goes on
(where its backend keeps prefixes, so that the prefill is not lost), catches up with
what the source produced meanwhile in as few rounds as needed, and then the request
goes on there from the last token the client got.
"""

from __future__ import annotations

from dataclasses import replace

from sllm.head.routing import pick_instance
from sllm.head.scaling import InstanceLoad

# Warm-up rounds at most: a source that outruns the destination's prefill every round
# is cut over anyway, the last round's lag prefilled by the continuation itself.
MAX_ROUNDS = 3
# A round's lag (chunks the source produced while it ran) below which the destination
# is close enough: the continuation prefills a few tokens past what it holds.
CLOSE_ENOUGH = 4
# How many more requests than the least loaded instance of its model an instance runs
# before it sheds some: each move costs its destination a prefill.
REBALANCE_GAP = 4


def destinations(
    source: str, instances: list[InstanceLoad], max_concurrency: int, count: int
) -> list[str]:
    """Where ``count`` requests of instance ``source`` go: each to the ready instance
    of its model (not the source) with the fewest requests and room for one more, as
    routing picks, counting the ones placed before it. Shorter than ``count`` when the
    others run out of room; those requests stay."""
    loads = [i for i in instances if i.id != source]
    out: list[str] = []
    for _ in range(count):
        pick = pick_instance(loads, max_concurrency)
        if pick is None:
            break
        out.append(pick.id)
        loads = [replace(i, outstanding=i.outstanding + 1) if i is pick else i for i in loads]
    return out


def another_round(lag: int, rounds: int) -> bool:
    """Whether the destination warms up again: the source produced ``lag`` chunks
    during the last of ``rounds`` rounds."""
    return lag > CLOSE_ENOUGH and rounds < MAX_ROUNDS


def to_rebalance(instances: list[InstanceLoad]) -> tuple[str, int] | None:
    """The ready instance that sheds requests, and how many (half its lead), when it
    runs at least REBALANCE_GAP more than the least loaded one; None when balanced."""
    ready = [i for i in instances if i.state == "ready"]
    if len(ready) < 2:
        return None
    most = max(ready, key=lambda i: (i.outstanding, i.id))
    least = min(ready, key=lambda i: (i.outstanding, i.id))
    lead = most.outstanding - least.outstanding
    return (most.id, lead // 2) if lead >= REBALANCE_GAP else None
