"""A non-streamed answer that its backend cut short to move it (live migration; the
worker's backend ends it at a token, ``backends/cuts.py``): the gateway continues it
on the destination from its text and joins the parts into the one answer the client
gets, usage counting the whole (the continuation counts what came before)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from sllm.edge.protocol import CUT_FINISH, MOVED_FIELD
from sllm.head.results import Pending
from sllm.head.stream_resume import continuation
from sllm.kv.tasks import NewTask

if TYPE_CHECKING:
    from sllm.head.stream_moves import Gateway

log = logging.getLogger(__name__)


def moved_of(answer: dict[str, Any]) -> dict[str, Any] | None:
    """Where a cut answer goes on ({"to", "reason"}); None for a whole answer."""
    moved = answer.get(MOVED_FIELD)
    choices = answer.get("choices")
    if not isinstance(moved, dict) or not isinstance(choices, list) or len(choices) != 1:
        return None
    return moved if choices[0].get("finish_reason") == CUT_FINISH else None


def text_of(answer: dict[str, Any]) -> str:
    choice = answer["choices"][0]
    if isinstance(choice.get("message"), dict):
        return str(choice["message"].get("content") or "")
    return str(choice.get("text") or "")


def joined(first: dict[str, Any], then: dict[str, Any]) -> dict[str, Any]:
    """The continuation's answer ``then`` as the whole one: ``first``'s id and time,
    the text of both; ``then``'s finish, usage and (if cut again) move."""
    choice = dict(then["choices"][0])
    text = text_of(first) + text_of(then)
    if isinstance(choice.get("message"), dict):
        choice["message"] = {**choice["message"], "content": text}
    else:
        choice["text"] = text
    return {**then, "id": first.get("id"), "created": first.get("created"), "choices": [choice]}


async def go_on(
    gateway: Gateway, first: NewTask, pending: Pending, whole: dict[str, Any], moved: dict[str, Any]
) -> Pending:
    """The continuation of the cut answer ``whole`` (of request ``first``), queued on
    its destination (on any instance where that one has no room by now)."""
    to, reason = str(moved.get("to") or ""), str(moved.get("reason") or "operator")
    again = await gateway.submit(
        first.endpoint,
        first.model,
        continuation(first.body, text_of(whole)),
        pending.request_id,
        first.deadline,
        pending.watch,
        to=to or None,
    )
    gateway.moves.answer_moved(pending.task.id, first.model, pending.watch.instance, to, reason)
    log.info(
        "task %s (an answer) moved from %s to %s as task %s (%s) after %d character(s)",
        pending.task.id,
        pending.watch.instance or "its instance",
        to or "any instance",
        again.task.id,
        reason,
        len(text_of(whole)),
    )
    return again
