"""What a backend's model side offers the shared OpenAI server (``server.py``).

An engine turns a prompt into text pieces, one per generated token, and texts into
embeddings. Everything about the wire (validation, ``n`` choices, stop strings,
``finish_reason``, usage, SSE) lives in the server, once for every backend.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

from sllm.edge.errors import RequestError
from sllm.edge.protocol import ChatMessage, Prompt


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int
    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None
    # End of sequence is not drawn before this many tokens, nor ever with ignore_eos.
    min_tokens: int = 0
    ignore_eos: bool = False
    # Which of the request's ``n`` choices this is: choices of one request must differ.
    index: int = 0
    # The LoRA adapter to generate with; None is the base model.
    adapter: str | None = None
    # The output goes on after text the choice already produced (a resumed stream).
    continuing: bool = False
    # The JSON schema the output must be an instance of (structured outputs), or None.
    json_schema: dict[str, Any] | None = None
    # Log-probabilities of each generated token and of this many likeliest alternatives
    # (None: none). As vLLM's default, of the model's raw output, before sampling's changes.
    logprobs: int | None = None


@dataclass(frozen=True)
class TokenLogprob:
    """One token's log-probability, and the likeliest tokens at its place."""

    token: str
    # None: a prompt's first token, which nothing comes before.
    logprob: float | None
    top: tuple[tuple[str, float], ...] = ()


class Piece(NamedTuple):
    """What ``Engine.generate`` yields per token: its text (empty while a character is
    incomplete) and, when asked for, its log-probability."""

    text: str
    logprob: TokenLogprob | None = None


class Engine(Protocol):
    # Names of the LoRA adapters a request may pick (empty without adapters).
    adapters: frozenset[str]

    # Tokens of prompt plus output a request may hold (for an encoder: its input).
    context_length: int

    @property
    def sampling_defaults(self) -> Mapping[str, float]:
        """Sampling for requests that set none: the model's own (its generation config)."""
        ...

    def chat_prompt(
        self, messages: list[ChatMessage], tools: list[dict[str, Any]] | None = None
    ) -> str:
        """The prompt a chat renders to (the model's chat template), with the tools the
        model may call (OpenAI's ``tools``) when given."""
        ...

    def must_call(self, messages: list[ChatMessage]) -> bool:
        """Under ``tool_choice`` auto, whether this engine calls a tool whatever it
        would write (the dummy, which is no model); a model decides for itself."""
        ...

    def continuation_prompt(self, prompt: str, produced: str) -> str:
        """The prompt that makes the model go on after ``produced`` as its own output
        (transformers' ``continue_final_message``: the partial answer is appended)."""
        ...

    def count_tokens(self, prompt: Prompt) -> int: ...

    def decode(self, ids: list[int]) -> str:
        """The text of token ids (a prompt's, for echo); RequestError naming ``prompt``
        for an id outside the vocabulary."""
        ...

    def default_max_tokens(self, prompt_tokens: int) -> int:
        """The limit when a request names none."""
        ...

    def check(self, prompt_tokens: int, params: SamplingParams) -> None:
        """Raise RequestError for what this engine cannot do, before any output."""
        ...

    def generate(self, prompt: Prompt, params: SamplingParams) -> AsyncIterator[Piece]:
        """One piece per generated token, at most ``params.max_tokens``; ends early at
        end of sequence. Closing the iterator stops the work."""
        ...

    async def prompt_logprobs(
        self, prompt: Prompt, top: int, adapter: str | None
    ) -> list[TokenLogprob]:
        """Each prompt token's log-probability given the tokens before it (the first's
        is None: nothing comes before it), for ``echo`` with ``logprobs``."""
        ...

    def close(self) -> None:
        """Release the model's resources (background threads) at shutdown."""
        ...

    async def embed(
        self, texts: list[Prompt], dimensions: int | None
    ) -> tuple[list[list[float]], int]:
        """One vector per text (or token ids), and the number of prompt tokens read;
        RequestError naming ``input`` for an id outside the vocabulary."""
        ...


def default_limit(configured: int, context_length: int, prompt_tokens: int) -> int:
    """``max_tokens`` for a request that names none: the backend's configured default,
    within what the context leaves after the prompt (at least one token)."""
    return max(1, min(configured, context_length - prompt_tokens))


def check_context(prompt_tokens: int, max_tokens: int, context_length: int) -> None:
    """RequestError naming ``max_tokens`` when prompt and output overrun the context."""
    if prompt_tokens + max_tokens > context_length:
        raise RequestError(
            f"prompt ({prompt_tokens} tokens) plus max_tokens ({max_tokens}) exceeds "
            f"the model's context of {context_length} tokens",
            param="max_tokens",
        )


def known_ids(ids: list[int], vocab_size: int, param: str) -> list[int]:
    """``ids``, once each lies in a vocabulary of ``vocab_size``; else RequestError
    naming ``param`` (a prompt's or an input's)."""
    outside = next((i for i in ids if not 0 <= i < vocab_size), None)
    if outside is not None:
        raise RequestError(
            f"token id {outside} is outside the vocabulary (0-{vocab_size - 1})", param=param
        )
    return ids
