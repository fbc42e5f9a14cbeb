"""Starts that fail the same way again: where a model cannot start, and why. Pure.

An instance that failed before it was ever ready is a failed start. Its reason, as the
worker reported it, ends with the last lines of the backend's log, whose last line is
the backend's own message (sllm's backends exit with one line saying why; a Python
traceback ends with the exception). Two failed starts in a row on one worker with the
same message mean the next would fail too (a package missing, a file, a bad config):
the worker is left out of the model's placements until the model is updated, and a
model that no worker can start is unschedulable with that message.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

# Failed starts in a row, the same way, after which a worker is given up on for a model.
SAME_WAY_LIMIT = 2
_TIMESTAMP = re.compile(r"^\[?\d{4}-\d\d-\d\d[ T][\d:.,]+\]?\s*")
_MESSAGE_CHARS = 500
# The reasons of failed starts that count (worker/instance_manager.py, worker_manager.py).
_BROKEN = ("backend exited with code", "worker refused: 400")
# How sllm's backends (backends/server.py) say why they exit.
_CANNOT_START = "backend: cannot start: "


@dataclass(frozen=True)
class StartFailure:
    message: str  # the backend's own last words, for people
    count: int  # failed starts in a row with this message
    instance: str  # the last one counted, so a failure seen again is not counted twice

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> StartFailure:
        return cls(str(d.get("message", "")), int(d.get("count", 0)), str(d.get("instance", "")))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def parse(noted: Mapping[str, Any]) -> dict[str, StartFailure]:
    """The records as the model's Redis hash holds them, by node id."""
    return {node: StartFailure.from_dict(f) for node, f in noted.items()}


def backend_message(reason: str) -> str:
    """The backend's own message in a failed instance's reason: the line where sllm's
    backend says it cannot start, else the last line of its log without a timestamp,
    else the reason's first line."""
    lines = [line.strip() for line in reason.splitlines() if line.strip()]
    if not lines:
        return "no reason given"
    said = [line for line in lines if _CANNOT_START in line]
    if said:
        return said[-1][said[-1].index(_CANNOT_START) + len(_CANNOT_START) :][:_MESSAGE_CHARS]
    last = _TIMESTAMP.sub("", lines[-1]) if len(lines) > 1 else lines[0]
    return (last or lines[0])[:_MESSAGE_CHARS]


def counts(reason: str) -> bool:
    """Whether a failed start says something about the model on that worker: its backend
    exited while starting, or the worker refused the config (400). Not a worker shutting
    down or out of reach, a start-up timeout, or GPUs busy (409): those pass."""
    return reason.startswith(_BROKEN)


def after_failure(previous: StartFailure | None, instance: str, reason: str) -> StartFailure | None:
    """The record once ``instance`` failed to start with ``reason`` (``previous`` when
    that failure does not count)."""
    if not counts(reason):
        return previous
    message = backend_message(reason)
    if previous is not None and previous.instance == instance:
        return previous
    if previous is not None and previous.message == message:
        return StartFailure(message, previous.count + 1, instance)
    return StartFailure(message, 1, instance)


def given_up(failures: Mapping[str, StartFailure]) -> dict[str, str]:
    """Workers the model is not placed on any more, with the message why."""
    return {node: f.message for node, f in failures.items() if f.count >= SAME_WAY_LIMIT}


def why_unstartable(model: str, given_up_on: Mapping[str, str]) -> str:
    """The note of a model that failed on every worker able to run it."""
    messages = sorted(set(given_up_on.values()))
    workers = ", ".join(sorted(given_up_on))
    return (
        f"model '{model}' failed to start {SAME_WAY_LIMIT} times the same way on "
        f"worker(s) {workers}: {'; '.join(messages)} (fix it, then `sllm update` the model, "
        "or add a worker that can start it)"
    )
