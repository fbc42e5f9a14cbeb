"""The local OpenAI-compatible server every backend process runs around its engine.

The worker's proxy speaks this protocol to every backend, so a backend is only an
engine (``engine.py``) plus a ``main`` that builds it: ``n`` choices, stop strings,
``finish_reason``, usage and SSE are done here, once.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import logging
import struct
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import aclosing, asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from fastapi.sse import EventSourceResponse, format_sse_event

from sllm.backends import logprobs_format, tool_calls, warm_heap
from sllm.backends.choices import Choice, Chunk, merged, pieces, usage_of
from sllm.backends.cuts import CUT, TASK_HEADER, Cut, Cuts, cuttable, with_move
from sllm.backends.dummy_engine import DummyEngine, DummyKnobs
from sllm.backends.engine import Engine, SamplingParams, TokenLogprob
from sllm.backends.structured import schema_of
from sllm.edge.api_errors import install_error_handlers
from sllm.edge.errors import ModelNotFound, RequestError, SllmError, error_body
from sllm.edge.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
    ModelCard,
    ModelList,
    Prompt,
    adapter_model_name,
    not_implemented,
)
from sllm.edge.serving import prime_serving, serve, setup_logging
from sllm.store import arena

log = logging.getLogger(__name__)


def _or_default(value: float | None, defaults: Mapping[str, float], name: str) -> float | None:
    """A request's sampling field, else the model's default for it (else None)."""
    return value if value is not None else defaults.get(name)


class OpenAIServer:
    def __init__(self, engine: Engine, model: str, instance_id: str) -> None:
        self.engine = engine
        self.cuts = Cuts()
        self.model = model
        self.instance_id = instance_id

    def _adapter(
        self, req: ChatCompletionRequest | CompletionRequest | EmbeddingRequest
    ) -> str | None:
        """The LoRA adapter the request picks (None: the base model)."""
        base, adapter = req.target()
        if base != self.model:
            raise ModelNotFound(
                f"this backend serves '{self.model}', not '{req.model}'", param="model"
            )
        if adapter is not None and adapter not in self.engine.adapters:
            known = ", ".join(sorted(self.engine.adapters)) or "none"
            raise ModelNotFound(
                f"model '{self.model}' has no LoRA adapter '{adapter}' (it has: {known})",
                param="model",
            )
        return adapter

    def _choice(
        self,
        req: ChatCompletionRequest | CompletionRequest,
        prompt: Prompt,
        index: int,
        adapter: str | None,
        echo: bool,
        schema: dict[str, Any] | None,
    ) -> Choice:
        prompt_tokens = self.engine.count_tokens(prompt)
        limit = req.token_limit() or self.engine.default_max_tokens(prompt_tokens)
        produced = req.sllm_continue_from
        prior = 0
        # Token ids are checked against the vocabulary here, before any output.
        text = self.engine.decode(prompt) if isinstance(prompt, list) else prompt
        if produced is not None and isinstance(prompt, str):
            # A resumed stream: the limit and usage count what was produced before.
            prior = self.engine.count_tokens(produced)
            prompt = self.engine.continuation_prompt(prompt, produced)
        if req.sllm_prefill:
            limit = prior + 1
        defaults = self.engine.sampling_defaults
        top_k = _or_default(req.top_k, defaults, "top_k")
        params = SamplingParams(
            max_tokens=max(0, limit - prior),
            temperature=_or_default(req.temperature, defaults, "temperature"),
            top_p=_or_default(req.top_p, defaults, "top_p"),
            seed=req.seed,
            presence_penalty=req.presence_penalty,
            frequency_penalty=req.frequency_penalty,
            top_k=None if top_k is None else int(top_k),
            min_p=_or_default(req.min_p, defaults, "min_p"),
            repetition_penalty=_or_default(req.repetition_penalty, defaults, "repetition_penalty"),
            min_tokens=max(0, (req.min_tokens or 0) - prior),
            ignore_eos=req.ignore_eos,
            index=index % req.n,
            adapter=adapter,
            continuing=bool(produced),
            logprobs=req.logprob_count(),
            json_schema=schema,
        )
        self.engine.check(prompt_tokens + prior, params)
        return Choice(
            index=index,
            prompt=prompt,
            params=params,
            stops=req.stop_list(),
            echo=text if echo else "",
            prior_tokens=prior,
        )

    def _choices(
        self,
        req: ChatCompletionRequest | CompletionRequest,
        prompts: list[Prompt],
        echo: bool,
        adapter: str | None,
        call: dict[str, Any] | None = None,
    ) -> list[Choice]:
        """``call``: the schema of a tool call the request forces."""
        unsupported = not_implemented(req.model_extra)
        if unsupported:
            raise RequestError(
                f"not supported by this model's backend: {', '.join(unsupported)}",
                param=unsupported[0],
            )
        schema = schema_of((req.model_extra or {}).get("response_format"))
        if call is not None and schema is not None:
            raise RequestError(
                "a forced tool call and a response_format schema cannot both hold the answer",
                param="response_format",
            )
        return [
            self._choice(req, prompt, p * req.n + j, adapter, echo, call or schema)
            for p, prompt in enumerate(prompts)
            for j in range(req.n)
        ]

    def _envelope(self, prefix: str, obj: str, adapter: str | None) -> dict[str, Any]:
        return {
            "id": f"{prefix}-{uuid.uuid4().hex}",
            "object": obj,
            "created": int(time.time()),
            "model": adapter_model_name(self.model, adapter) if adapter else self.model,
            "system_fingerprint": self.instance_id,
        }

    async def chat(self, req: ChatCompletionRequest, task: str | None = None) -> Response:
        adapter = self._adapter(req)
        extra = req.model_extra or {}
        tools = tool_calls.plan(extra.get("tools"), extra.get("tool_choice"))
        prompt = self.engine.chat_prompt(req.messages, tools.tools if tools else None)
        call = None
        if tools is not None:
            call = tool_calls.call_schema(tools, forced=self.engine.must_call(req.messages))
        choices = self._choices(req, [prompt], echo=False, adapter=adapter, call=call)
        prompt_tokens = self.engine.count_tokens(prompt)
        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            envelope = self._envelope("chatcmpl", "chat.completion.chunk", adapter)
            events = self._chat_events(envelope, choices, prompt_tokens, include_usage, tools)
            return _sse(events)
        with self.cuts.watch(task, cuttable(req, choices, tools is None)) as cut:
            outputs = await self._complete_all(choices, cut)
        body = self._envelope("chatcmpl", "chat.completion", adapter)
        body["choices"] = []
        for c, (text, entries) in zip(choices, outputs, strict=True):
            message, finish = _answer(text, c.finish_reason, tools is not None)
            body["choices"].append(
                {
                    "index": c.index,
                    "message": message,
                    "logprobs": logprobs_format.chat(entries) if req.logprobs else None,
                    "finish_reason": finish,
                }
            )
        body["usage"] = usage_of(prompt_tokens, choices)
        return JSONResponse(with_move(body, cut, choices))

    async def completions(self, req: CompletionRequest, task: str | None = None) -> Response:
        adapter = self._adapter(req)
        prompts = req.prompts()
        choices = self._choices(req, prompts, echo=req.echo, adapter=adapter)
        prompt_tokens = sum(self.engine.count_tokens(p) for p in prompts)
        if req.echo and req.logprobs is not None:
            # The prompt's own, once per prompt, for every choice of it.
            read = [await self.engine.prompt_logprobs(p, req.logprobs, adapter) for p in prompts]
            for c in choices:
                c.echo_logprobs = read[c.index // req.n]
        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            envelope = self._envelope("cmpl", "text_completion", adapter)
            return _sse(self._completion_events(envelope, choices, prompt_tokens, include_usage))
        with self.cuts.watch(task, cuttable(req, choices, not req.echo)) as cut:
            outputs = await self._complete_all(choices, cut)
        body = self._envelope("cmpl", "text_completion", adapter)
        body["choices"] = [
            {
                "index": c.index,
                "text": c.echo + text,
                "logprobs": None
                if req.logprobs is None
                else logprobs_format.completion([*c.echo_logprobs, *entries], 0)[0],
                "finish_reason": c.finish_reason,
            }
            for c, (text, entries) in zip(choices, outputs, strict=True)
        ]
        body["usage"] = usage_of(prompt_tokens, choices)
        return JSONResponse(with_move(body, cut, choices))

    async def embeddings(self, req: EmbeddingRequest) -> Response:
        if self._adapter(req) is not None:
            raise RequestError("LoRA adapters apply to generation, not embeddings", param="model")
        vectors, tokens = await self.engine.embed(req.inputs(), req.dimensions)
        data = [
            {"object": "embedding", "index": i, "embedding": _encode_vector(v, req.encoding_format)}
            for i, v in enumerate(vectors)
        ]
        return JSONResponse(
            {
                "object": "list",
                "data": data,
                "model": self.model,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            }
        )

    async def _complete_all(self, choices: list[Choice], cut: Cut | None = None) -> list[Chunk]:
        """Each choice's whole text and log-probabilities; up to the next token once
        ``cut`` is asked (finish_reason CUT)."""

        async def one(choice: Choice) -> Chunk:
            text, entries = [], []
            async with aclosing(pieces(self.engine, choice)) as parts:
                async for piece, logprobs in parts:
                    text.append(piece)
                    entries.extend(logprobs)
                    if cut is not None and cut.asked.is_set():
                        choice.finish_reason = CUT
                        break
            return "".join(text), entries

        # Concurrently, so that a batching engine sees all choices at once.
        return list(await asyncio.gather(*(one(c) for c in choices)))

    async def _chat_events(
        self,
        envelope: dict[str, Any],
        choices: list[Choice],
        prompt_tokens: int,
        include_usage: bool,
        tools: tool_calls.ToolPlan | None,
    ) -> AsyncIterator[dict[str, Any]]:
        """With tools, a choice's text is held to its end: only then is it known to be
        a call (it goes out as one ``tool_calls`` delta) or an answer."""

        def chunk(
            index: int, delta: dict[str, Any], finish: str | None, logprobs: Any = None
        ) -> dict[str, Any]:
            body = {
                **envelope,
                "choices": [
                    {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish}
                ],
            }
            if include_usage:
                body["usage"] = None
            return body

        def logprobs(c: Choice, entries: list[TokenLogprob]) -> Any:
            return logprobs_format.chat(entries) if c.params.logprobs is not None else None

        held: dict[int, tuple[list[str], list[TokenLogprob]]] = {c.index: ([], []) for c in choices}
        for c in choices:
            yield chunk(c.index, {"role": "assistant", "content": ""}, None)
        async for c, item in merged(self.engine, choices):
            if item is not None and tools is None:
                yield chunk(c.index, {"content": item[0]}, None, logprobs(c, item[1]))
            elif item is not None:
                held[c.index][0].append(item[0])
                held[c.index][1].extend(item[1])
            elif tools is None:
                yield chunk(c.index, {}, c.finish_reason)
            else:
                texts, entries = held[c.index]
                message, finish = _answer("".join(texts), c.finish_reason, True)
                calls = message.pop("tool_calls", None)
                if message["content"] or entries:
                    yield chunk(
                        c.index, {"content": message["content"] or ""}, None, logprobs(c, entries)
                    )
                if calls:
                    yield chunk(
                        c.index,
                        {"tool_calls": [{"index": i, **call} for i, call in enumerate(calls)]},
                        None,
                    )
                yield chunk(c.index, {}, finish)
        if include_usage:
            yield {**envelope, "choices": [], "usage": usage_of(prompt_tokens, choices)}

    async def _completion_events(
        self,
        envelope: dict[str, Any],
        choices: list[Choice],
        prompt_tokens: int,
        include_usage: bool,
    ) -> AsyncIterator[dict[str, Any]]:
        def chunk(
            c: Choice, text: str, finish: str | None, entries: list[TokenLogprob]
        ) -> dict[str, Any]:
            logprobs = None
            if c.params.logprobs is not None:
                logprobs, c.text_offset = logprobs_format.completion(entries, c.text_offset)
            body = {
                **envelope,
                "choices": [
                    {"index": c.index, "text": text, "logprobs": logprobs, "finish_reason": finish}
                ],
            }
            if include_usage:
                body["usage"] = None
            return body

        for c in choices:
            if c.echo:
                yield chunk(c, c.echo, None, c.echo_logprobs)
        async for c, item in merged(self.engine, choices):
            if item is None:
                yield chunk(c, "", c.finish_reason, [])
            else:
                text, entries = item
                yield chunk(c, text, None, entries)
        if include_usage:
            yield {**envelope, "choices": [], "usage": usage_of(prompt_tokens, choices)}


def _answer(text: str, finish: str | None, tools: bool) -> tuple[dict[str, Any], str | None]:
    """An assistant message and its finish reason: with tools, the calls in its text
    become ``tool_calls`` (finish ``tool_calls``) and the rest its content."""
    if not tools:
        return {"role": "assistant", "content": text}, finish
    content, calls = tool_calls.parse(text)
    if not calls:
        return {"role": "assistant", "content": text}, finish
    message = {
        "role": "assistant",
        "content": content or None,
        "tool_calls": [call.to_openai() for call in calls],
    }
    return message, "tool_calls"


def _encode_vector(vector: list[float], encoding: str) -> list[float] | str:
    if encoding == "base64":
        return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
    return vector


def _sse(events: AsyncIterator[dict[str, Any]]) -> EventSourceResponse:
    async def encoded() -> AsyncIterator[bytes]:
        try:
            async for event in events:
                yield format_sse_event(data_str=json.dumps(event))
        except SllmError as exc:
            yield format_sse_event(data_str=json.dumps(exc.to_body()))
        except Exception as exc:
            # Headers are sent: the error can only travel as an event.
            log.exception("generation failed mid-stream")
            body = error_body(f"the backend failed mid-stream: {exc}", "backend_error")
            yield format_sse_event(data_str=json.dumps(body))
        yield format_sse_event(data_str="[DONE]")

    return EventSourceResponse(encoded())


def create_app(
    engine: Engine, model: str, instance_id: str, load: tuple[float, float] = (0.0, 0.0)
) -> FastAPI:
    """``load``: when loading the model began (epoch seconds) and how long it took, for
    the worker's cold-start figures."""
    server = OpenAIServer(engine, model, instance_id)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        try:
            yield
        finally:
            engine.close()

    app = FastAPI(title=f"sllm backend {instance_id}", lifespan=lifespan)
    install_error_handlers(app)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {
            "status": "ok",
            "model": model,
            "instance_id": instance_id,
            "load_started": load[0],
            "load_seconds": load[1],
            "sampling_defaults": dict(engine.sampling_defaults),
            "context_length": engine.context_length,
        }

    @app.get("/v1/models")
    async def models() -> ModelList:
        names = [model, *(adapter_model_name(model, a) for a in sorted(engine.adapters))]
        return ModelList(data=[ModelCard(id=n) for n in names])

    @app.post("/v1/chat/completions")
    async def chat(req: ChatCompletionRequest, request: Request) -> Response:
        return await server.chat(req, request.headers.get(TASK_HEADER))

    @app.post("/v1/completions")
    async def completions(req: CompletionRequest, request: Request) -> Response:
        return await server.completions(req, request.headers.get(TASK_HEADER))

    app.include_router(server.cuts.router())

    @app.post("/v1/embeddings")
    async def embeddings(req: EmbeddingRequest) -> Response:
        return await server.embeddings(req)

    return app


def prime() -> None:
    """FastAPI's one-time lazy work (the first route it makes imports pydantic.v1) and
    uvicorn's imports, done before the engine is built: after, the engine's threads
    (transformers' batching loop) hold the GIL so often that the same work took 0.24 s
    of each start, not 15 ms. A warm process runs it before it is even asked for an
    instance."""
    prime_serving(create_app(DummyEngine(DummyKnobs()), "prime", "prime"))


# (model name, instance id, backend_config, model cache directory, LoRA adapters by
# name) -> a loaded engine
EngineFactory = Callable[[str, str, dict[str, Any], Path, dict[str, str]], Engine]


def main(name: str, build: EngineFactory, argv: list[str] | None = None) -> None:
    """Parse the launch flags of ``sllm.backends.base.Backend.command``, build the
    engine (loading the model), then serve; /health answers only once it is loaded."""
    parser = argparse.ArgumentParser(prog=f"python -m sllm.backends.{name}")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--instance-id", required=True)
    parser.add_argument("--config", default="{}", help="backend_config as JSON")
    parser.add_argument("--storage-path", type=Path, default=Path("."), help="model cache")
    parser.add_argument("--lora-adapters", default="{}", help="adapter name -> path, as JSON")
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args(argv)
    setup_logging(args.log_level)
    prime()  # before the engine's threads start
    try:
        config = json.loads(args.config)
        adapters = json.loads(args.lora_adapters)
        if not isinstance(config, dict) or not isinstance(adapters, dict):
            raise ValueError("--config and --lora-adapters must be JSON objects")
        load_started = time.time()
        engine = build(args.model, args.instance_id, config, args.storage_path, adapters)
        load = (load_started, time.time() - load_started)
        arena.release()  # what of a warm process's arena the engine did not claim
        warm_heap.release()
    except ValueError as exc:
        # The worker reports the log's last lines, the head takes the last as the
        # backend's message (head/start_failures.py): make this one line say it all.
        print(f"sllm {name} backend: cannot start: {' '.join(str(exc).split())}", file=sys.stderr)
        raise SystemExit(2) from None
    serve(
        create_app(engine, args.model, args.instance_id, load),
        args.host,
        args.port,
        args.log_level,
        access_log=False,
    )
