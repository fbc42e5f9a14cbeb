"""Resuming a stream whose instance died: what the gateway relayed, and the request
that goes on from it. Pure.

The gateway has seen every chunk it relayed, so it can ask another instance to go on
from the text produced so far (the backend appends it to the prompt as the model's own
output and counts it in ``usage``). Chunks of the continuation are rewritten to carry
the first attempt's ``id`` and ``created``, so the client sees one stream.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# Failures that mean "the instance (or Redis's record of the task) went away", not "the
# request is bad".
RESUMABLE_CODES = frozenset({"stream_interrupted", "attempts_exhausted", "task_lost"})
CONTINUE_FIELD = "sllm_continue_from"
# A migration's warm-up request (``stream_moves``): prefill, one token.
PREFILL_FIELD = "sllm_prefill"


def resumable(endpoint: str, body: dict[str, Any]) -> bool:
    """Whether a stream of this request can be continued faithfully: one choice, and
    for completions one prompt without echo (the backend refuses the rest too)."""
    if not body.get("stream") or int(body.get("n") or 1) != 1:
        return False
    if endpoint == "/v1/chat/completions":
        return True
    if endpoint == "/v1/completions":
        return isinstance(body.get("prompt"), str) and not body.get("echo")
    return False


def goes_on(
    code: str, *, lost: bool, relayed: int, faithful: bool, resumes: int, limit: int
) -> bool:
    """Whether a stream that broke with error ``code`` is carried on by a new task,
    unseen by the client. One whose instance went away goes on from what was relayed,
    where that can be done faithfully (``resumable``); one whose result messages were
    lost (a cut subscription) before anything was relayed starts over, whatever its
    parameters: the client has seen nothing yet."""
    if code not in RESUMABLE_CODES or resumes >= limit:
        return False
    return faithful if relayed else lost


def continuation(body: dict[str, Any], produced: str) -> dict[str, Any]:
    return {**body, CONTINUE_FIELD: produced}


@dataclass
class Relay:
    """What a stream has relayed so far, and the rewriting of later attempts' chunks."""

    chat: bool
    produced: list[str] = field(default_factory=list)
    chunks: int = 0
    resumes: int = 0
    # Times it went on elsewhere on purpose (a migration: not a resume, no attempt).
    moves: int = 0
    _id: str | None = None
    _created: int | None = None

    @property
    def text(self) -> str:
        return "".join(self.produced)

    def relay(self, chunk: dict[str, Any]) -> dict[str, Any] | None:
        """The chunk as the client gets it (None: not to be sent)."""
        if self._id is None:
            self._id, self._created = chunk.get("id"), chunk.get("created")
        elif self.resumes or self.moves:
            if self.chat and _is_role_opening(chunk):
                return None  # the client has its opening chunk from the first attempt
            chunk = {**chunk, "id": self._id, "created": self._created}
        for choice in chunk.get("choices") or []:
            piece = (choice.get("delta") or {}).get("content") if self.chat else choice.get("text")
            if piece:
                self.produced.append(piece)
        self.chunks += 1
        return chunk


def _is_role_opening(chunk: dict[str, Any]) -> bool:
    choices = chunk.get("choices") or []
    return len(choices) == 1 and choices[0].get("delta") == {"role": "assistant", "content": ""}
