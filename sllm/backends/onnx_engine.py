"""The onnx backend's model side: a decoder model converted to ONNX, generated with ONNX
Runtime GenAI's engine, which batches the requests in flight. No torch, no transformers:
tokens by the tokenizers library, the chat template by ``chat_template`` (GenAI's own
tokenizer would parse the tokenizer a second time). The HTTP layer is ``server.py``.

One thread (``_Driver``) owns the GenAI engine: it begins and cancels requests' turns
and runs the engine's steps, whose native work leaves the GIL to the event loop, and
hands each request's tokens to that request's queue on the loop.
"""

from __future__ import annotations

import asyncio
import json
import logging
import queue
import threading
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sllm.backends import tool_calls
from sllm.backends.chat_template import ChatTemplate
from sllm.backends.detokenize import IncrementalDecoder
from sllm.backends.engine import (
    Piece,
    SamplingParams,
    TokenLogprob,
    check_context,
    default_limit,
    known_ids,
)
from sllm.backends.onnx_knobs import OnnxKnobs
from sllm.backends.sampling_defaults import from_generation_config
from sllm.backends.structured import FLEXIBLE, grammar_of, guidance_of
from sllm.edge.errors import RequestError
from sllm.edge.protocol import ChatMessage, Prompt

log = logging.getLogger(__name__)

# Events one engine step may report: one per request in the batch, and more.
_EVENTS = 1024
_NO_LOGPROBS = "does not report log-probabilities (its engine gives none)"
# How long closing waits for the driver's current step.
_CLOSE_TIMEOUT = 10.0


class OnnxEngine:
    """One ONNX model in this process (see the module docstring)."""

    adapters: frozenset[str] = frozenset()

    def __init__(self, directory: Path, knobs: OnnxKnobs) -> None:
        import onnxruntime_genai as og
        import tokenizers

        self.knobs = knobs
        config = og.Config(str(directory))
        # The engine batches at most 4 requests on a CPU unless told. The KV cache grows
        # with each sequence: a buffer shared for the whole context (the builder's
        # choice) held 2 GB for the demo model after 16 streams, and decoded slower.
        batching = {"static_batching": {"max_batch_size": knobs.max_batch_size}}
        search = {"past_present_share_buffer": False}
        config.overlay(json.dumps({"engine": batching, "search": search}))
        model = og.Model(config)
        genai = json.loads((directory / "genai_config.json").read_text())["model"]
        self.context_length = int(genai["context_length"])
        self._vocab_size = int(genai["vocab_size"])
        eos = genai["eos_token_id"]
        self.eos_ids = frozenset(int(i) for i in (eos if isinstance(eos, list) else [eos]))
        # Text from tokens by the tokenizers library, as the transformers backend has it:
        # GenAI's decode drops what follows a byte sequence that is not UTF-8.
        self._text = tokenizers.Tokenizer.from_file(str(directory / "tokenizer.json"))
        self.sampling_defaults: dict[str, float] = _sampling_defaults(directory)
        self._template = _chat_template(directory)
        self._driver = _Driver(og, model)

    # -- Engine -----------------------------------------------------------------------

    def chat_prompt(
        self, messages: list[ChatMessage], tools: list[dict[str, Any]] | None = None
    ) -> str:
        template = self._template
        source = template.source if template is not None else None
        turns, tools = tool_calls.template_input(messages, tools, source)
        assert template is not None  # template_input refused a model without one
        return template.render(turns, tools)

    def must_call(self, messages: list[ChatMessage]) -> bool:
        return False

    def continuation_prompt(self, prompt: str, produced: str) -> str:
        # The chat template already opened the assistant's turn: the partial answer
        # goes straight after it.
        return prompt + produced

    def count_tokens(self, prompt: Prompt) -> int:
        return len(prompt) if isinstance(prompt, list) else len(self._encode(prompt))

    def decode(self, ids: list[int]) -> str:
        return str(self._text.decode(self._known(ids, "prompt"), skip_special_tokens=True))

    def default_max_tokens(self, prompt_tokens: int) -> int:
        return default_limit(self.knobs.default_max_tokens, self.context_length, prompt_tokens)

    def check(self, prompt_tokens: int, params: SamplingParams) -> None:
        check_context(prompt_tokens, params.max_tokens, self.context_length)
        unsupported = _unsupported(params)
        if unsupported is not None:
            name, why = unsupported
            raise RequestError(f"the onnx backend {why}", param=name)
        if params.json_schema is not None:
            grammar_of(params.json_schema, FLEXIBLE)

    async def generate(self, prompt: Prompt, params: SamplingParams) -> AsyncIterator[Piece]:
        ids = self._known(prompt, "prompt") if isinstance(prompt, list) else self._encode(prompt)
        job = self._driver.begin(ids, params, asyncio.get_running_loop())
        text = IncrementalDecoder(self._text)
        try:
            while True:
                token = await job.tokens.get()
                if token is None:
                    break
                if isinstance(token, BaseException):
                    raise token
                if token in self.eos_ids:
                    continue  # the end of sequence the engine reports: no text
                yield Piece(text.push(token))
        finally:
            if not job.finished:  # the client left, or a stop string was met
                self._driver.cancel(job)

    async def prompt_logprobs(
        self, prompt: Prompt, top: int, adapter: str | None
    ) -> list[TokenLogprob]:
        raise RequestError(f"the onnx backend {_NO_LOGPROBS}", param="logprobs")

    def close(self) -> None:
        self._driver.close()

    async def embed(
        self, texts: list[Prompt], dimensions: int | None
    ) -> tuple[list[list[float]], int]:
        raise RequestError(
            "this model generates text; deploy an embedding model for /v1/embeddings",
            param="model",
        )

    # -- helpers ----------------------------------------------------------------------

    def _encode(self, text: str) -> list[int]:
        # Chat templates already carry the special tokens the model expects.
        return list(self._text.encode(text, add_special_tokens=False).ids)

    def _known(self, ids: list[int], param: str) -> list[int]:
        return known_ids(ids, self._vocab_size, param)


def _sampling_defaults(directory: Path) -> dict[str, float]:
    """The source's generation config, which the conversion keeps beside the model."""
    try:
        config = json.loads((directory / "generation_config.json").read_text())
    except (OSError, ValueError):
        return {}
    return from_generation_config(config) if isinstance(config, Mapping) else {}


def _chat_template(directory: Path) -> ChatTemplate | None:
    """The model's chat template, as the builder copies it (a file of its own, or in
    the tokenizer's config)."""
    try:
        config = json.loads((directory / "tokenizer_config.json").read_text())
    except (OSError, ValueError):
        config = {}
    if not isinstance(config, dict):
        config = {}
    source: Any
    try:
        source = (directory / "chat_template.jinja").read_text()
    except OSError:
        source = config.get("chat_template")
    return ChatTemplate(source, config) if isinstance(source, str) and source else None


def _unsupported(params: SamplingParams) -> tuple[str, str] | None:
    """The first request field this engine cannot honour, and why; None when it can
    honour them all."""
    sampled = params.temperature is None or params.temperature > 0
    if params.seed is not None and sampled:
        return "seed", "cannot seed sampling on a CPU (its engine seeds paged GPU models only)"
    if params.presence_penalty or params.frequency_penalty:
        name = "presence_penalty" if params.presence_penalty else "frequency_penalty"
        return name, "has no presence or frequency penalty: use repetition_penalty"
    if params.min_p:
        return "min_p", "has no min_p: use top_p or top_k"
    if params.logprobs is not None:
        return "logprobs", _NO_LOGPROBS
    if params.adapter is not None:
        return "model", "serves no LoRA adapters"
    return None


@dataclass(eq=False)
class _Job:
    """One request's turn: its tokens as the engine reports them, then None (or the
    exception that ended it), on the event loop's queue."""

    ids: list[int]
    params: SamplingParams
    loop: asyncio.AbstractEventLoop
    # Bounded by max_tokens (one entry a token) plus the end.
    tokens: asyncio.Queue[int | BaseException | None] = field(default_factory=asyncio.Queue)
    finished: bool = False
    # Why the engine ended the turn (its FinishReason's name), once it did.
    reason: str | None = None
    request: Any = None
    turn: int = 0

    def put(self, item: int | BaseException | None) -> None:
        if item is None or isinstance(item, BaseException):
            self.finished = True
        try:
            self.loop.call_soon_threadsafe(self.tokens.put_nowait, item)
        except RuntimeError:  # the loop closed at shutdown: nobody waits for it
            pass


class _Driver:
    """The thread that owns the GenAI engine (see the module docstring)."""

    def __init__(self, og: Any, model: Any) -> None:
        self._og = og
        self._commands: queue.SimpleQueue[tuple[str, _Job | None]] = queue.SimpleQueue()
        self._jobs: dict[Any, _Job] = {}  # by the engine's request object
        self._token_flag = int(og.EngineEventFlags.TOKEN.value)
        # The engine answers only the thread that made it: made there, before serving.
        made: queue.SimpleQueue[BaseException | None] = queue.SimpleQueue()
        self._thread = threading.Thread(
            target=self._run, args=(model, made), name="sllm-onnx-engine", daemon=True
        )
        self._thread.start()
        # No timeout of its own: a start is bounded by the worker's startup timeout.
        failed = made.get()
        if failed is not None:
            raise failed

    def begin(
        self, ids: list[int], params: SamplingParams, loop: asyncio.AbstractEventLoop
    ) -> _Job:
        job = _Job(ids, params, loop)
        self._commands.put(("begin", job))
        return job

    def cancel(self, job: _Job) -> None:
        self._commands.put(("cancel", job))

    def close(self) -> None:
        self._commands.put(("stop", None))
        self._thread.join(_CLOSE_TIMEOUT)

    def _run(self, model: Any, made: queue.SimpleQueue[BaseException | None]) -> None:
        try:
            self._engine = self._og.Engine(model)
            self._buffer = self._engine.create_event_buffer(_EVENTS)
        except Exception as exc:
            made.put(exc)
            return
        made.put(None)
        while True:
            idle = not self._jobs
            try:
                # Nothing in flight: sleep until a command comes.
                command, job = self._commands.get(block=idle)
            except queue.Empty:
                self._step()
                continue
            if command == "stop":
                for job in list(self._jobs.values()):
                    job.put(RuntimeError("the onnx engine stopped"))
                return
            assert job is not None
            if command == "begin":
                self._begin(job)
            elif job.request is not None and not job.finished:
                try:
                    job.request.cancel_turn(job.turn)
                except Exception:  # it ends at its max_tokens instead
                    log.exception("the onnx engine could not cancel a request")

    def _begin(self, job: _Job) -> None:
        og = self._og
        try:
            request = self._engine.create_request()
            options = og.TurnOptions(request)
            _apply(options, job.params)
            job.turn = request.begin_turn(np.asarray(job.ids, np.int32), options)
        except Exception as exc:  # a request the engine refuses: this request's error
            job.put(RequestError(f"the onnx engine refused the request: {exc}"))
            return
        job.request = request
        self._jobs[request] = job

    def _step(self) -> None:
        try:
            events = list(self._engine.run(self._buffer))
        except Exception as exc:  # the engine failed: every request in flight with it
            log.exception("the onnx engine failed a step")
            for job in self._jobs.values():
                job.put(RuntimeError(f"the onnx engine failed: {exc}"))
            self._jobs.clear()
            return
        for event in events:
            found = self._jobs.get(event.request)
            if found is None:
                continue
            if int(event.flags.value) & self._token_flag:
                found.put(int(event.token))
            if event.finish_reason != self._og.FinishReason.NONE:
                found.reason = event.finish_reason.name
            if event.finish_reason == self._og.FinishReason.FAILED:
                found.put(RuntimeError(f"the onnx engine failed the request: {event.error_code}"))
            elif event.finish_reason != self._og.FinishReason.NONE:
                found.put(None)
            if found.finished:
                del self._jobs[event.request]
                event.request.close()


def _apply(options: Any, params: SamplingParams) -> None:
    """A request's sampling as the turn's options (``_unsupported`` refused the rest)."""
    options.set_max_generated_tokens(params.max_tokens)
    floor = params.max_tokens if params.ignore_eos else params.min_tokens
    if floor:
        options.set_min_generated_tokens(floor)
    if params.temperature == 0:
        options.set_do_sample(False)
    else:
        options.set_do_sample(True)
        options.set_temperature(1.0 if params.temperature is None else params.temperature)
        options.set_top_p(1.0 if params.top_p is None else params.top_p)
        options.set_top_k(params.top_k or 0)
    if params.repetition_penalty is not None:
        options.set_repetition_penalty(params.repetition_penalty)
    if params.json_schema is not None:
        # Held by the llguidance inside GenAI; FLEXIBLE says why not compact JSON.
        options.set_guidance("json_schema", guidance_of(params.json_schema, FLEXIBLE))
