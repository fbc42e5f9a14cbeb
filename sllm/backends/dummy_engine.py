"""The dummy backend's engine: no model, for tests and benchmarks (its process is
``sllm.backends.dummy``).

Output is a function of the input alone: each next word is drawn by hashing the last
three words of prompt-plus-output (with the choice index and seed), so a request
continued from part of its output goes on exactly as the uninterrupted one would.
A token is a word. Knobs in ``backend_config`` shape its timing and its failures.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import math
import os
import re
from collections.abc import AsyncIterator, Iterator
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from sllm.backends import dummy_json
from sllm.backends.dummy_prefixes import PrefixCache
from sllm.backends.engine import (
    Piece,
    SamplingParams,
    TokenLogprob,
    check_context,
    default_limit,
)
from sllm.edge.errors import RequestError
from sllm.edge.protocol import ChatMessage, Prompt

VOCAB = (
    "the a of and to in is it that was for on are with as his they be at one have "
    "this from by hot word but what some we can out other were all there when up use "
    "your how said an each she which do their time if will way about many then them "
    "write would like so these her long make thing see him two has look more day"
).split()
# Drawn like any word, so some outputs end early with finish_reason "stop".
END = "END."
_DRAW = (*VOCAB, END)
_CONTEXT_WORDS = 3


class DummyKnobs(BaseModel):
    """``backend_config`` of a dummy model; unknown keys are refused."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    startup_delay: float = Field(0.0, ge=0, description="Seconds before /health answers.")
    ttft: float = Field(0.0, ge=0, description="Seconds before the first token.")
    tokens_per_second: float = Field(0.0, ge=0, description="0: as fast as possible.")
    crash_after_tokens: int | None = Field(
        None, ge=0, description="Exit the process after emitting this many tokens."
    )
    crash_on_prompt: str | None = Field(
        None, min_length=1, description="Exit the process on a prompt containing this."
    )
    hang: bool = Field(False, description="Never answer a generation (health stays up).")
    default_max_tokens: int = Field(16, ge=1, description="Limit when a request names none.")
    # Like a model's context: without it a huge max_tokens could run for as long as the
    # request's deadline, since some word chains never draw END.
    context_length: int = Field(
        8192, ge=1, description="Words of prompt plus output a request may hold; past it, 400."
    )
    embedding_dim: int = Field(16, ge=1, le=4096)
    # A prefill's cost, as a model with a prefix cache (vLLM's) has it: each prompt word
    # past the longest prefix this instance prefilled before (a migration's warm-up).
    prefill_per_word: float = Field(
        0.0, ge=0, description="Seconds per prompt word not in the instance's prefix cache."
    )


def next_word(
    context: list[str],
    index: int,
    seed: int | None,
    adapter: str | None = None,
    may_end: bool = True,
) -> str:
    """The word that follows ``context``; depends only on its last few words (and on
    the LoRA adapter, so each adapter "speaks" differently). Where it may not end
    (``min_tokens``, ``ignore_eos``, the first word), END's draw gives a word instead."""
    draw = int.from_bytes(_digest(context, index, seed, adapter)[:8], "big")
    word = _DRAW[draw % len(_DRAW)]
    return word if may_end or word != END else VOCAB[draw % len(VOCAB)]


def _digest(context: list[str], index: int, seed: int | None, adapter: str | None) -> bytes:
    tail = " ".join(context[-_CONTEXT_WORDS:])
    salt = "" if adapter is None else f"|{adapter}"
    return hashlib.sha256(f"{tail}|{index}|{seed}{salt}".encode()).digest()


def word_logprob(
    context: list[str],
    word: str,
    index: int,
    seed: int | None,
    adapter: str | None,
    top: int,
    lead: str = " ",
) -> TokenLogprob:
    """``word``'s log-probability after ``context`` in a made-up distribution that is a
    function of the context alone: the word the dummy draws there has probability
    0.5-0.9, the others share the rest, halving from one to the next in an order the
    context fixes. Probabilities sum to under 1; the ``top`` likeliest come along. Tokens
    are shown as in the text, after ``lead`` (the space before a word but the first)."""
    digest = _digest(context, index, seed, adapter)
    first = next_word(context, index, seed, adapter, may_end=True)
    drawn = [first] if first != END else []
    # A word that may not end draws its replacement: both head the list.
    drawn.append(next_word(context, index, seed, adapter, may_end=False))
    p0 = 0.5 + 0.4 * digest[8] / 255
    order = sorted(
        (w for w in _DRAW if w not in drawn),
        key=lambda w: hashlib.sha256(digest + w.encode()).digest(),
    )
    ranked = [*dict.fromkeys(drawn), *order]
    probs = [p0, *((1 - p0) * 0.5**r for r in range(1, len(ranked)))]
    # A word outside the vocabulary (a prompt's) gets less than any word in it.
    prob = dict(zip(ranked, probs, strict=True)).get(word, probs[-1] / 2)
    return TokenLogprob(
        token=lead + word,
        logprob=math.log(prob),
        top=tuple((lead + w, math.log(p)) for w, p in zip(ranked[:top], probs, strict=False)),
    )


def min_words(params: SamplingParams) -> int:
    """Words before END may be drawn: never an empty answer (unless none was asked for);
    a continued generation already has its first word."""
    return params.min_tokens if params.continuing else max(params.min_tokens, 1)


def words(
    prompt: str,
    index: int,
    seed: int | None,
    limit: int,
    adapter: str | None = None,
    floor: int = 1,
    ignore_eos: bool = False,
) -> list[str]:
    """The whole generation, as ``generate`` would stream it; ``floor``: the words
    before END may end it (``min_words``)."""
    context = prompt.split()
    out: list[str] = []
    while len(out) < limit:
        may_end = not ignore_eos and len(out) >= floor
        word = next_word(context, index, seed, adapter, may_end)
        if word == END:
            break
        out.append(word)
        context.append(word)
    return out


def embedding(text: str, dim: int) -> list[float]:
    """A unit vector that depends only on the text."""
    raw: list[float] = []
    block = 0
    while len(raw) < dim:
        digest = hashlib.sha256(f"{block}|{text}".encode()).digest()
        raw.extend(b / 127.5 - 1.0 for b in digest)
        block += 1
    vector = raw[:dim]
    norm = math.sqrt(sum(x * x for x in vector)) or 1.0
    return [x / norm for x in vector]


def _word_pieces(prompt: str, params: SamplingParams) -> Iterator[Piece]:
    """The dummy's words after ``prompt``, a piece each, until it draws END."""
    context = prompt.split()
    floor = min_words(params)
    emitted = 0
    while True:
        may_end = not params.ignore_eos and emitted >= floor
        word = next_word(context, params.index, params.seed, params.adapter, may_end)
        if word == END:
            return
        text = word if emitted == 0 and not params.continuing else f" {word}"
        logprob = None
        if params.logprobs is not None:
            lead = text[: -len(word)]
            logprob = word_logprob(
                context, word, params.index, params.seed, params.adapter, params.logprobs, lead
            )
        context.append(word)
        yield Piece(text, logprob)
        emitted += 1


# A structured answer's tokens: each run of non-space characters with the spaces before it.
_JSON_TOKEN = re.compile(r"\s*\S+")
_JSON_LOGPROB = math.log(0.9)


def _json_pieces(prompt: str, params: SamplingParams) -> Iterator[Piece]:
    """An instance of the request's schema (``dummy_json``), a piece per token."""
    assert params.json_schema is not None
    seed = f"{prompt}|{params.index}|{params.seed}"
    for token in _JSON_TOKEN.findall(json.dumps(dummy_json.instance(params.json_schema, seed))):
        logprob = None
        if params.logprobs is not None:
            top = ((token, _JSON_LOGPROB),) if params.logprobs else ()
            logprob = TokenLogprob(token, _JSON_LOGPROB, top)
        yield Piece(token, logprob)


class DummyEngine:
    def __init__(self, knobs: DummyKnobs, adapters: frozenset[str] = frozenset()) -> None:
        self.knobs = knobs
        # Adapter names only: nothing is loaded, but routing to them can be tested.
        self.adapters = adapters
        self.sampling_defaults: dict[str, float] = {}
        self.context_length = knobs.context_length
        self._prefixes = PrefixCache()

    def chat_prompt(
        self, messages: list[ChatMessage], tools: list[dict[str, Any]] | None = None
    ) -> str:
        lines = [f"{m.role}: {m.text()}" for m in messages]
        return "\n".join([*lines, "assistant:"])

    def must_call(self, messages: list[ChatMessage]) -> bool:
        """Given tools, the dummy calls one (a made-up call of a listed tool), unless it
        has just been given a tool's result: then it answers, so a round trip ends."""
        return messages[-1].role != "tool"

    def continuation_prompt(self, prompt: str, produced: str) -> str:
        # Words are split on whitespace, so this gives the same context as generating.
        return f"{prompt} {produced}"

    def count_tokens(self, prompt: Prompt) -> int:
        return len(prompt) if isinstance(prompt, list) else len(prompt.split())

    def decode(self, ids: list[int], param: str = "prompt") -> str:
        """A dummy token is a word: token id i is VOCAB[i]."""
        outside = [i for i in ids if i >= len(VOCAB)]
        if outside:
            raise RequestError(
                f"token id {outside[0]} is outside the vocabulary (0-{len(VOCAB) - 1})",
                param=param,
            )
        return " ".join(VOCAB[i] for i in ids)

    def _text(self, prompt: Prompt, param: str = "prompt") -> str:
        return self.decode(prompt, param) if isinstance(prompt, list) else prompt

    def default_max_tokens(self, prompt_tokens: int) -> int:
        knobs = self.knobs
        return default_limit(knobs.default_max_tokens, knobs.context_length, prompt_tokens)

    def check(self, prompt_tokens: int, params: SamplingParams) -> None:
        """The dummy accepts every sampling option within its context. It is no
        language model: temperature, top_p, top_k and the penalties shape nothing; seed,
        min_tokens, ignore_eos and the token limit shape its output exactly."""
        check_context(prompt_tokens, params.max_tokens, self.knobs.context_length)

    async def generate(self, prompt: Prompt, params: SamplingParams) -> AsyncIterator[Piece]:
        prompt = self._text(prompt)
        knobs = self.knobs
        if knobs.crash_on_prompt is not None and knobs.crash_on_prompt in prompt:
            os._exit(1)
        if knobs.hang:
            await asyncio.Event().wait()
        if knobs.ttft:
            await asyncio.sleep(knobs.ttft)
        if knobs.prefill_per_word:
            await asyncio.sleep(knobs.prefill_per_word * self._prefixes.prefill(prompt.split()))
        gap = 1.0 / knobs.tokens_per_second if knobs.tokens_per_second else 0.0
        pieces = (
            _json_pieces(prompt, params) if params.json_schema else _word_pieces(prompt, params)
        )
        for emitted, piece in enumerate(itertools.islice(pieces, params.max_tokens)):
            if knobs.crash_after_tokens is not None and emitted >= knobs.crash_after_tokens:
                # Let what was yielded reach the socket, so the crash is mid-stream.
                await asyncio.sleep(0.05)
                os._exit(1)
            yield piece
            # Always yield to the loop, so that other requests interleave.
            await asyncio.sleep(gap)

    async def prompt_logprobs(
        self, prompt: Prompt, top: int, adapter: str | None
    ) -> list[TokenLogprob]:
        # As a base model reads a prompt: choice 0, no seed.
        words = self._text(prompt).split()
        if not words:
            return []
        return [
            TokenLogprob(words[0], None),
            *(word_logprob(words[:i], w, 0, None, adapter, top) for i, w in enumerate(words) if i),
        ]

    def close(self) -> None:
        """Nothing to release."""

    async def embed(
        self, texts: list[Prompt], dimensions: int | None
    ) -> tuple[list[list[float]], int]:
        dim = dimensions or self.knobs.embedding_dim
        vectors = [embedding(self._text(t, "input"), dim) for t in texts]
        return vectors, sum(self.count_tokens(t) for t in texts)
