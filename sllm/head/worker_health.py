"""When a worker is suspected dead, from what probing it found. Pure.

A refused connection is a dead process on a live host: suspected at once. A probe
that times out or fails otherwise may be a worker busy for a moment (a long GC, a
swap storm), so it takes ``TIMEOUTS_TO_SUSPECT`` in a row (a second apart: a worker
frozen for 3 to 4 s; its instances are then replaced, the calls they serve go on).
Only the worker's own heartbeat clears a suspicion: a successful probe shows its port
answers, not that it still runs what Redis says it runs.
"""

from __future__ import annotations

from typing import Literal

ProbeResult = Literal["ok", "refused", "timeout", "error"]

TIMEOUTS_TO_SUSPECT = 3


def judge(failures: int, result: ProbeResult) -> tuple[int, bool]:
    """The failures in a row after ``result``, and whether the worker is now suspected."""
    if result == "ok":
        return 0, False
    failures += 1
    return failures, result == "refused" or failures >= TIMEOUTS_TO_SUSPECT
