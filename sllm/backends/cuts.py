"""Non-streamed answers that the head may cut short to move them (live migration): the
backend stops such an answer at its next token and answers with the text so far,
marked (``finish_reason`` CUT, ``sllm_moved``: where it goes on), and the gateway
continues it on the destination and joins the two answers into one.

Only answers that a continuation reproduces faithfully are cut: one choice, no tools,
log-probabilities or response_format schema (whose state would not carry over), no
echo. The worker names the task an answer runs as (``x-sllm-task``)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from sllm.backends.choices import Choice
from sllm.edge.protocol import CUT_FINISH, MOVED_FIELD, ChatCompletionRequest, CompletionRequest

CUT = CUT_FINISH
TASK_HEADER = "x-sllm-task"


@dataclass
class Cut:
    asked: asyncio.Event = field(default_factory=asyncio.Event)
    # Where the answer goes on, as the head said (destination, reason).
    moved: dict[str, Any] = field(default_factory=dict)


class CutBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    task: str = Field(min_length=1, max_length=128)
    moved: dict[str, str] = Field(default_factory=dict, max_length=4)


class Cuts:
    """The answers in flight that may be cut, by task."""

    def __init__(self) -> None:
        self._live: dict[str, Cut] = {}

    @contextmanager
    def watch(self, task: str | None, movable: bool) -> Iterator[Cut | None]:
        if task is None or not movable or task in self._live:
            yield None
            return
        cut = self._live[task] = Cut()
        try:
            yield cut
        finally:
            del self._live[task]

    def cut(self, task: str, moved: dict[str, Any]) -> bool:
        """Ask that ``task``'s answer end at its next token; False when no such answer
        runs here (it ended, or it is not one that can be cut)."""
        cut = self._live.get(task)
        if cut is None or cut.asked.is_set():
            return False
        cut.moved = moved
        cut.asked.set()
        return True

    def router(self) -> APIRouter:
        router = APIRouter()

        @router.post("/sllm/cut")
        async def cut(body: CutBody) -> JSONResponse:
            """Cut a non-streamed answer short to move it; 404: none such runs here."""
            done = self.cut(body.task, body.moved)
            return JSONResponse({"cut": done}, status_code=200 if done else 404)

        return router


def cuttable(
    req: ChatCompletionRequest | CompletionRequest, choices: list[Choice], plain: bool
) -> bool:
    """Whether a continuation would go on faithfully from this answer's text: one
    choice, nothing held apart from the text (``plain``: no tools, no echo), no
    log-probabilities or schema; not a migration's own warm-up."""
    (first, *more) = choices
    return (
        plain
        and not more
        and first.params.logprobs is None
        and not (first.params.json_schema or req.sllm_prefill)
    )


def with_move(body: dict[str, Any], cut: Cut | None, choices: list[Choice]) -> dict[str, Any]:
    """A cut answer names where it goes on, for the gateway."""
    if cut is not None and choices[0].finish_reason == CUT:
        body[MOVED_FIELD] = cut.moved
    return body
