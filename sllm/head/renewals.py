"""The leases of the claims a head runs, renewed by one pass a tick: a timer task per
request cost a task created and cancelled on every request's path."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

from sllm.config import HeadSettings
from sllm.kv import RedisError
from sllm.kv.records import InstanceRecord
from sllm.kv.store import Store
from sllm.kv.tasks import Claim

log = logging.getLogger(__name__)


@dataclass
class Running:
    """A claim this head runs."""

    claim: Claim
    instance: InstanceRecord
    job: asyncio.Task[None]
    # When its lease was stamped or last renewed (monotonic); None: it is not this
    # head's any more.
    renewed: float | None = field(default_factory=time.monotonic)


async def renew_leases(
    store: Store, settings: HeadSettings, head_id: str, running: dict[str, Running]
) -> None:
    """Renew each lease in ``running`` a third of a lease after it was stamped or last
    renewed, until cancelled."""
    interval = settings.lease_seconds / 3
    while True:
        await asyncio.sleep(min(1.0, interval / 2))
        now = time.monotonic()
        due = [r for r in running.values() if r.renewed is not None and now - r.renewed >= interval]
        await asyncio.gather(*(_renew(store, settings, head_id, r, now) for r in due))


async def _renew(
    store: Store, settings: HeadSettings, head_id: str, running: Running, now: float
) -> None:
    claim = running.claim
    try:
        held = await store.tasks.renew(
            claim.task_id,
            head_id,
            claim.attempt,
            time.time() + settings.lease_seconds,
            claim.claim,
        )
    except RedisError as exc:  # tried again at the next pass
        log.warning("could not renew the lease of %s: %s", claim.task_id, exc)
        return
    running.renewed = now if held else None
