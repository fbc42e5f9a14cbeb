"""Jepsen-style checks of what clients saw and of where the cluster ended, after a
nemesis cut links between hosts and healed them. Pure functions over the record."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

from tests.faults.recorder import Outcome


@dataclass(frozen=True)
class Seen:
    """What clients saw during one fault."""

    requests: int
    ok: int
    failed: Counter[str]  # by error code (or HTTP status)
    slowest: float  # seconds
    violations: list[str]  # broken promises: each a line

    def summary(self) -> str:
        failed = ", ".join(f"{n} {code}" for code, n in sorted(self.failed.items())) or "none"
        return f"{self.ok}/{self.requests} ok, failed: {failed}, slowest {self.slowest:.1f} s"


def check(outcomes: list[Outcome], *, tokens: int, deadline: float) -> Seen:
    """Every request has one outcome, an answer rather than a dropped connection, before
    its deadline; every stream that succeeded carried exactly ``tokens`` pieces of text
    (a duplicated or stale chunk would add one, a lost one take one away)."""
    violations = []
    seen_ids: Counter[str] = Counter(o.request_id for o in outcomes)
    violations += [f"{rid}: {n} outcomes" for rid, n in seen_ids.items() if n > 1]
    for o in outcomes:
        if o.status == 0:
            violations.append(f"no answer: {o}")
        if o.seconds > deadline:
            violations.append(f"past its deadline ({o.seconds:.1f} s): {o}")
        if o.ok and o.chunks and o.tokens != tokens:
            violations.append(f"{o.tokens} pieces of text, not {tokens}: {o}")
        if not o.ok and o.status == 200 and not o.code:
            violations.append(f"a stream ended with no error event: {o}")
    failed: Counter[str] = Counter(o.code or str(o.status) for o in outcomes if not o.ok)
    return Seen(
        requests=len(outcomes),
        ok=sum(o.ok for o in outcomes),
        failed=failed,
        slowest=max((o.seconds for o in outcomes), default=0.0),
        violations=violations,
    )


def orphans(status: dict[str, Any], known: dict[str, dict[str, str]]) -> list[str]:
    """Instances Redis places on a worker that does not report them, and instances a
    worker runs that Redis does not know: both must be gone once the cluster settles."""
    reported = {i["instance_id"]: w["node_id"] for w in status["workers"] for i in w["instances"]}
    out = [
        f"{iid} on {h.get('node_id')} ({h.get('state')}) not reported by its worker"
        for iid, h in known.items()
        if h.get("state") in ("ready", "starting") and reported.get(iid) != h.get("node_id")
    ]
    out += [f"{iid} runs on {node} unknown to Redis" for iid, node in reported.items()
            if iid not in known]  # fmt: skip
    return out
