"""Batched generation with ``model.generate``: the path for what continuous batching
cannot do. Requests waiting when a batch starts run together, each row with its own
sampling (every field of ``SamplingParams``: seeds, penalties, top_k, min_p,
min_tokens, ignore_eos), its own token limit
and, on a peft model, its own LoRA adapter; requests arriving meanwhile wait for the
next batch.

Each row samples inside a logits processor with its own ``torch.Generator`` and leaves
only its choice unmasked, so ``generate`` runs greedy and a seed reproduces a row's
output whatever else shares its batch.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import threading
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from sllm.backends.engine import SamplingParams
from sllm.backends.structured import RowGrammar

log = logging.getLogger(__name__)

# peft's name for "no adapter" in a mixed batch.
BASE_ADAPTER = "__base__"
_END = object()
_NO_TOKEN = -1


# A token's raw log-probability and the likeliest (token id, log-probability) pairs at
# its place.
RawLogprob = tuple[float, list[tuple[int, float]]]


def raw_logprob(logits: torch.Tensor, token: int, top: int) -> RawLogprob:
    """``token``'s log-probability under ``logits`` as the model gave them (vLLM's default
    ``raw_logprobs``: before penalties and temperature), with the ``top`` likeliest."""
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    alternatives: list[tuple[int, float]] = []
    if top:
        values, ids = torch.topk(logprobs, min(top, logprobs.shape[-1]))
        alternatives = list(zip(ids.tolist(), values.tolist(), strict=True))
    return float(logprobs[token]), alternatives


@dataclass(eq=False)
class _Row:
    ids: list[int]
    params: SamplingParams
    loop: asyncio.AbstractEventLoop
    out: asyncio.Queue[Any]
    generator: torch.Generator
    generated: int = 0
    done: bool = False
    # Set from the event loop when the client goes away; read by the generating thread.
    cancelled: bool = False
    # The log-probability of the token sampled this step, when the request asks for them.
    logprob: RawLogprob | None = None
    # Holds the row to a JSON schema (structured outputs).
    grammar: RowGrammar | None = None

    def send(self, item: Any) -> None:
        self.loop.call_soon_threadsafe(self.out.put_nowait, item)


def processed_logits(
    logits: torch.Tensor,
    prompt: torch.Tensor,
    generated: torch.Tensor,
    params: SamplingParams,
    eos_ids: Sequence[int] = (),
) -> torch.Tensor:
    """One row's logits after what a request asks, in vLLM's order: end of sequence
    masked while it may not end, the penalties, then temperature, min_p and top_k
    (top_p works on probabilities: ``sample_row``). Temperature 0 leaves them as they are."""
    logits = logits.float()
    if eos_ids and generated.numel() < params.min_tokens:
        logits = logits.clone()
        logits[list(eos_ids)] = float("-inf")
    if params.repetition_penalty not in (None, 1.0):
        # As vLLM and transformers do: over the prompt and the output, divide positive
        # logits by the penalty and multiply negative ones.
        seen = torch.unique(torch.cat([prompt, generated]))
        chosen = logits[seen]
        logits = logits.clone()
        logits[seen] = torch.where(
            chosen > 0, chosen / params.repetition_penalty, chosen * params.repetition_penalty
        )
    if (params.presence_penalty or params.frequency_penalty) and generated.numel():
        counts = torch.bincount(generated, minlength=logits.shape[-1])[: logits.shape[-1]]
        counts = counts.to(logits.dtype)
        logits = logits - (params.frequency_penalty or 0.0) * counts
        logits = logits - (params.presence_penalty or 0.0) * (counts > 0).to(logits.dtype)
    temperature = 1.0 if params.temperature is None else params.temperature
    if temperature == 0:
        return logits
    logits = logits / temperature
    if params.min_p:
        # Tokens less likely than min_p times the likeliest are dropped.
        probs = torch.softmax(logits, dim=-1)
        logits = logits.masked_fill(probs < params.min_p * probs.max(), float("-inf"))
    if params.top_k and 0 < params.top_k < logits.shape[-1]:
        kth = torch.topk(logits, params.top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    return logits


def sample_row(
    logits: torch.Tensor,
    generated: torch.Tensor,
    params: SamplingParams,
    gen: torch.Generator,
    prompt: torch.Tensor | None = None,
    eos_ids: Sequence[int] = (),
) -> int:
    """One token for one row: ``processed_logits``, then greedy at temperature 0, else
    a draw from the top_p nucleus with the row's own generator."""
    empty = torch.empty(0, dtype=torch.long)
    logits = processed_logits(
        logits, empty if prompt is None else prompt, generated, params, eos_ids
    )
    if params.temperature == 0:
        return int(torch.argmax(logits).item())
    probs = torch.softmax(logits, dim=-1)
    top_p = 1.0 if params.top_p is None else params.top_p
    if top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True)
        # Keep the smallest prefix whose mass reaches top_p (always the first token).
        outside = sorted_probs.cumsum(-1) - sorted_probs >= top_p
        sorted_probs[outside] = 0.0
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
    # The generator lives on the CPU, so the draw does too (one row, one vector).
    return int(torch.multinomial(probs.cpu(), 1, generator=gen).item())


class _RowSampler:
    """A logits processor that samples each live row and masks all but its choice."""

    def __init__(self, rows: list[_Row], prompt_width: int, eos_ids: set[int]) -> None:
        self.rows = rows
        self.width = prompt_width
        self.eos_ids = sorted(eos_ids)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        chosen = torch.full_like(scores, float("-inf"))
        for i, row in enumerate(self.rows):
            # A finished row still gets a token from generate; any token will do.
            if row.done:
                chosen[i, 0] = 0.0
                continue
            token = sample_row(
                scores[i] if row.grammar is None else row.grammar.allowed(scores[i]),
                input_ids[i, self.width :],
                row.params,
                row.generator,
                prompt=input_ids[i, self.width - len(row.ids) : self.width],
                eos_ids=self.eos_ids,
            )
            if row.grammar is not None:
                row.grammar.consume(token)
            if row.params.logprobs is not None:
                row.logprob = raw_logprob(scores[i], token, row.params.logprobs)
            chosen[i, token] = 0.0
        return chosen


class _RowEmitter:
    """A stopping criterion that hands each row its new token and ends rows that hit
    end of sequence, their token limit or a cancel. generate calls it once per step,
    after the step's token is appended."""

    def __init__(self, rows: list[_Row], eos_ids: set[int]) -> None:
        self.rows = rows
        self.eos_ids = eos_ids

    def __call__(self, input_ids: torch.Tensor, scores: Any, **kwargs: Any) -> torch.Tensor:
        last = input_ids[:, -1].tolist()
        for row, token in zip(self.rows, last, strict=True):
            if row.done:
                continue
            if row.cancelled or (token in self.eos_ids and not row.params.ignore_eos):
                row.done = True
                continue
            row.send((token, row.logprob))
            row.generated += 1
            row.done = row.generated >= row.params.max_tokens
        return torch.tensor([r.done for r in self.rows], device=input_ids.device)


class StaticBatcher:
    """Runs batches of waiting requests through ``model.generate`` on one thread."""

    def __init__(
        self,
        model: Any,
        device: str,
        pad_id: int,
        eos_ids: set[int],
        max_batch_size: int,
        adapters: bool,
    ) -> None:
        self.model = model
        self.device = device
        self.pad_id = pad_id
        self.eos_ids = eos_ids
        self.max_batch_size = max_batch_size
        self.adapters = adapters
        self._pending: list[_Row] = []
        self._wake = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="sllm-batches", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float) -> None:
        with self._wake:
            self._stopping = True
            for row in self._pending:
                row.cancelled = True
            self._wake.notify()
        self._thread.join(timeout)

    async def tokens(
        self, ids: list[int], params: SamplingParams, grammar: RowGrammar | None = None
    ) -> AsyncGenerator[tuple[int, RawLogprob | None], None]:
        """Token ids as the batch generates them, each with its log-probability when
        ``params.logprobs`` asks, held to ``grammar`` when given; closing the iterator
        ends the row."""
        row = _Row(ids, params, asyncio.get_running_loop(), asyncio.Queue(), _generator(params))
        row.grammar = grammar
        with self._wake:
            if self._stopping:
                raise RuntimeError("the backend is shutting down")
            self._pending.append(row)
            self._wake.notify()
        try:
            while (item := await row.out.get()) is not _END:
                if isinstance(item, BaseException):
                    raise RuntimeError(f"generation failed: {item}") from item
                yield item
        finally:
            row.cancelled = True
            with self._wake:
                if row in self._pending:
                    self._pending.remove(row)

    def _run(self) -> None:
        while True:
            with self._wake:
                while not self._pending and not self._stopping:
                    self._wake.wait(timeout=1.0)  # stop() notifies; the bound is a backstop
                if self._stopping:
                    rows, self._pending = self._pending, []
                    for row in rows:
                        row.send(RuntimeError("the backend is shutting down"))
                    return
                batch = self._pending[: self.max_batch_size]
                del self._pending[: self.max_batch_size]
            try:
                self._generate(batch)
            except Exception as exc:
                log.exception("batch of %d failed", len(batch))
                for row in batch:
                    row.send(exc)
            for row in batch:
                row.send(_END)

    def _generate(self, rows: list[_Row]) -> None:
        from transformers import GenerationConfig, LogitsProcessorList, StoppingCriteriaList

        width = max(len(r.ids) for r in rows)
        input_ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            # Left padding: every row's next token goes in the same column.
            input_ids[i, width - len(row.ids) :] = torch.tensor(row.ids)
            mask[i, width - len(row.ids) :] = 1
        kwargs: dict[str, Any] = {}
        if self.adapters:
            kwargs["adapter_names"] = [r.params.adapter or BASE_ADAPTER for r in rows]
        # Each row ends where _RowEmitter says (ignore_eos rows go on past end of
        # sequence): an end token that no token is, as generate fills an unset one from
        # the model's generation config.
        config = GenerationConfig(
            do_sample=False,
            max_new_tokens=max(r.params.max_tokens for r in rows),
            eos_token_id=_NO_TOKEN,
            pad_token_id=self.pad_id,
            # generate fills what is unset from the model's generation config: a
            # repetition penalty there would be applied before _RowSampler applies it.
            repetition_penalty=1.0,
        )
        with torch.inference_mode():
            self.model.generate(
                input_ids=input_ids.to(self.device),
                attention_mask=mask.to(self.device),
                generation_config=config,
                logits_processor=LogitsProcessorList([_RowSampler(rows, width, self.eos_ids)]),
                stopping_criteria=StoppingCriteriaList([_RowEmitter(rows, self.eos_ids)]),
                **kwargs,
            )


def _generator(params: SamplingParams) -> torch.Generator:
    gen = torch.Generator()
    # The choice index keeps a seeded request's n choices apart.
    seed = secrets.randbits(62) if params.seed is None else params.seed + params.index
    gen.manual_seed(seed % (1 << 63))
    return gen
