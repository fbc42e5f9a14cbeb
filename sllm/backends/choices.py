"""A request's choices as the backend server runs them: each choice's text through its
engine with stop strings cut and log-probabilities carried (``pieces``), several
choices merged as they come (``merged``), and their usage."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass, field

from sllm.backends.engine import Engine, SamplingParams, TokenLogprob
from sllm.backends.stops import StopScanner
from sllm.edge.protocol import Prompt, Usage


@dataclass
class Choice:
    index: int
    prompt: Prompt
    params: SamplingParams
    stops: list[str]
    echo: str = ""
    tokens: int = 0
    # Tokens produced before a resume: counted in usage, not generated again.
    prior_tokens: int = 0
    finish_reason: str | None = None
    # With echo and logprobs: the prompt's; and where a streamed choice's next token
    # begins in its text.
    echo_logprobs: list[TokenLogprob] = field(default_factory=list)
    text_offset: int = 0


# Text a choice may show now, with the log-probabilities of the tokens it completes.
Chunk = tuple[str, list[TokenLogprob]]


async def pieces(engine: Engine, choice: Choice) -> AsyncGenerator[Chunk, None]:
    """The choice's text as it may be shown: stop strings cut, nothing after them. A
    token's log-probability goes out with the first text at or after it; those of the
    tokens a stop string cut away are dropped with their text."""
    if choice.params.max_tokens == 0:
        choice.finish_reason = "length"  # a resume after the whole limit was produced
        return
    scanner = StopScanner(choice.stops)
    waiting: list[TokenLogprob] = []
    generated = engine.generate(choice.prompt, choice.params)
    try:
        async for piece in generated:
            choice.tokens += 1
            if piece.logprob is not None:
                waiting.append(piece.logprob)
            text = scanner.feed(piece.text)
            if text:
                yield text, waiting
                waiting = []
            if scanner.stopped:
                choice.finish_reason = "stop"
                return
        tail = scanner.flush()
        if tail or waiting:
            yield tail, waiting
        choice.finish_reason = "length" if choice.tokens >= choice.params.max_tokens else "stop"
    finally:
        aclose = getattr(generated, "aclose", None)
        if aclose is not None:
            await aclose()


async def merged(
    engine: Engine, choices: list[Choice]
) -> AsyncIterator[tuple[Choice, Chunk | None]]:
    """(choice, chunk) from all choices as they come; None marks a choice's end."""
    queue: asyncio.Queue[tuple[Choice, Chunk | BaseException | None]] = asyncio.Queue()

    async def pump(choice: Choice) -> None:
        try:
            async for chunk in pieces(engine, choice):
                await queue.put((choice, chunk))
            await queue.put((choice, None))
        except Exception as exc:
            await queue.put((choice, exc))

    tasks = [asyncio.create_task(pump(c)) for c in choices]
    try:
        for _ in range(len(choices)):
            while True:
                choice, item = await queue.get()
                if isinstance(item, BaseException):
                    raise item
                yield choice, item
                if item is None:
                    break
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def usage_of(prompt_tokens: int, choices: list[Choice]) -> dict[str, int]:
    completion = sum(c.tokens + c.prior_tokens for c in choices)
    return Usage(
        prompt_tokens=prompt_tokens,
        completion_tokens=completion,
        total_tokens=prompt_tokens + completion,
    ).model_dump()
