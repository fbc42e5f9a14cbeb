"""A stand-in for vLLM's OpenAI server (NOT vLLM): it takes the command line sllm builds
for ``python -m vllm.entrypoints.openai.api_server`` and serves the endpoints sllm uses,
so the vLLM backend's launch, readiness wait, proxying, adapter loading and death can be
tested where vLLM cannot be installed. Run by the worker when SLLM_VLLM_ENTRYPOINT names
this module.

Text comes from the dummy backend's word generator; every response echoes the sampling
fields it received under ``standin_received`` so a test can see they came through.
A prompt containing ``STANDIN-DIE`` makes the process exit, as a crashed vLLM would.

With ``--enable-sleep-mode`` and ``VLLM_SERVER_DEV_MODE=1`` it answers ``/sleep``,
``/wake_up`` and ``/is_sleeping`` as vLLM does, taking ``--standin-sleep-delay`` and
``--standin-wake-delay`` seconds; asleep, it refuses to generate (503), so a request sent
to a sleeping instance shows.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from collections.abc import AsyncIterator
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

from sllm.backends.dummy_engine import embedding, words

# vLLM's own names for these fields; sllm must pass them through untouched.
VLLM_FIELDS = ("top_k", "min_p", "repetition_penalty", "guided_json", "logprobs")
# And those a resumed stream is restated with (sllm.worker.continuation).
CONTINUATION_FIELDS = ("continue_final_message", "add_generation_prompt")


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="vllm-standin")
    parser.add_argument("--model", required=True)
    parser.add_argument("--served-model-name", required=True)
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--tensor-parallel-size", type=int, default=1)
    parser.add_argument("--gpu-memory-utilization", type=float)
    parser.add_argument("--max-model-len", type=int)
    parser.add_argument("--max-num-seqs", type=int)
    parser.add_argument("--quantization")
    parser.add_argument("--enforce-eager", action="store_true")
    parser.add_argument("--enable-prefix-caching", action="store_true")
    parser.add_argument("--no-enable-prefix-caching", action="store_true")
    parser.add_argument("--runner")
    parser.add_argument("--kv-cache-memory-bytes", type=int)
    parser.add_argument("--trust-remote-code", action="store_true")
    parser.add_argument("--enable-lora", action="store_true")
    parser.add_argument("--max-lora-rank", type=int)
    parser.add_argument("--max-loras", type=int)
    parser.add_argument("--enable-sleep-mode", action="store_true")
    # The stand-in's own knobs (passed through extra_args): seconds before /health is 200,
    # and those a sleep and a wake take.
    parser.add_argument("--standin-startup-delay", type=float, default=0.0)
    parser.add_argument("--standin-sleep-delay", type=float, default=0.2)
    parser.add_argument("--standin-wake-delay", type=float, default=0.3)
    return parser.parse_args(argv)


def create_app(args: argparse.Namespace) -> FastAPI:
    app = FastAPI()
    started = time.monotonic()
    loras: dict[str, str] = {}
    name = args.served_model_name
    sleeping = False
    dev_mode = os.environ.get("VLLM_SERVER_DEV_MODE", "") == "1"

    def received(body: dict[str, Any]) -> dict[str, Any]:
        return {k: body[k] for k in (*VLLM_FIELDS, *CONTINUATION_FIELDS) if k in body}

    def check_model(body: dict[str, Any]) -> str | None:
        model = body.get("model")
        if model != name and model not in loras:
            return f"The model `{model}` does not exist."
        return None

    @app.get("/health")
    async def health() -> JSONResponse:
        ready = time.monotonic() - started >= args.standin_startup_delay
        return JSONResponse({}, status_code=200 if ready else 503)

    def sleep_route(handler: Any) -> Any:
        """vLLM serves its sleep endpoints in development mode only, and they fail on an
        engine started without sleep mode."""

        async def route(request: Request) -> Any:
            if not dev_mode:
                return JSONResponse({"detail": "Not Found"}, status_code=404)
            if not args.enable_sleep_mode:
                return JSONResponse({"error": "sleep mode is not enabled"}, status_code=500)
            return await handler(request)

        return route

    async def sleep(request: Request) -> Any:
        nonlocal sleeping
        if request.query_params.get("level") != "1":  # sllm keeps the weights: level 1
            return JSONResponse({"error": "the stand-in sleeps at level 1"}, status_code=400)
        await asyncio.sleep(args.standin_sleep_delay)
        sleeping = True
        return {"status": "sleeping", "level": 1}

    async def wake_up(request: Request) -> Any:
        nonlocal sleeping
        await asyncio.sleep(args.standin_wake_delay)
        sleeping = False
        return {"status": "awake", "tags": None}

    async def is_sleeping(request: Request) -> Any:
        return {"is_sleeping": sleeping}

    app.add_api_route("/sleep", sleep_route(sleep), methods=["POST"])
    app.add_api_route("/wake_up", sleep_route(wake_up), methods=["POST"])
    app.add_api_route("/is_sleeping", sleep_route(is_sleeping), methods=["GET"])

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        data = [
            {"id": m, "object": "model", "max_model_len": args.max_model_len or 2048}
            for m in [name, *loras]
        ]
        return {"object": "list", "data": data}

    @app.post("/tokenize")
    async def tokenize(request: Request) -> dict[str, Any]:
        # The dummy's tokens are words.
        return {"count": len(str((await request.json())["prompt"]).split())}

    @app.post("/v1/load_lora_adapter")
    async def load(request: Request) -> JSONResponse:
        if os.environ.get("VLLM_ALLOW_RUNTIME_LORA_UPDATING", "").lower() not in ("1", "true"):
            return JSONResponse({"error": "runtime LoRA updating is off"}, status_code=404)
        if not args.enable_lora:
            return JSONResponse({"error": "LoRA is not enabled"}, status_code=400)
        body = await request.json()
        loras[body["lora_name"]] = body["lora_path"]
        return JSONResponse(f"Success: LoRA adapter '{body['lora_name']}' added successfully.")

    @app.post("/v1/unload_lora_adapter")
    async def unload(request: Request) -> JSONResponse:
        body = await request.json()
        if loras.pop(body["lora_name"], None) is None:
            return JSONResponse({"error": "not loaded"}, status_code=404)
        return JSONResponse(f"Success: LoRA adapter '{body['lora_name']}' removed successfully.")

    async def generate(request: Request, chat: bool) -> Any:
        if sleeping:
            return JSONResponse({"error": "the engine sleeps"}, status_code=503)
        body = await request.json()
        missing = check_model(body)
        if missing:
            return JSONResponse({"error": {"message": missing, "code": 404}}, status_code=404)
        prompt = (
            " ".join(str(m.get("content")) for m in body["messages"]) if chat else body["prompt"]
        )
        if "STANDIN-DIE" in prompt:
            os._exit(1)
        out = words(f"{body['model']} {prompt}", 0, body.get("seed"), body.get("max_tokens") or 8)
        envelope = {"id": "cmpl-standin", "created": int(time.time()), "model": body["model"]}
        if not body.get("stream"):
            choice: dict[str, Any] = {"index": 0, "finish_reason": "length"}
            if chat:
                choice["message"] = {"role": "assistant", "content": " ".join(out)}
            else:
                choice["text"] = " ".join(out)
            return {
                **envelope,
                "object": "chat.completion" if chat else "text_completion",
                "choices": [choice],
                "standin_prompt": prompt,
                "usage": {"prompt_tokens": 1, "completion_tokens": len(out), "total_tokens": 1},
                "standin_received": received(body),
            }

        async def events() -> AsyncIterator[bytes]:
            for i, word in enumerate(out):
                piece = word if i == 0 else f" {word}"
                delta = {"delta": {"content": piece}} if chat else {"text": piece}
                chunk = {
                    **envelope,
                    "choices": [{"index": 0, **delta, "finish_reason": None}],
                    "standin_received": received(body),
                }
                yield f"data: {json.dumps(chunk)}\n\n".encode()
            yield b"data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Any:
        return await generate(request, chat=True)

    @app.post("/v1/completions")
    async def completions(request: Request) -> Any:
        return await generate(request, chat=False)

    @app.post("/v1/embeddings")
    async def embeddings(request: Request) -> Any:
        body = await request.json()
        texts = [body["input"]] if isinstance(body["input"], str) else body["input"]
        data = [
            {"object": "embedding", "index": i, "embedding": embedding(t, 8)}
            for i, t in enumerate(texts)
        ]
        return {"object": "list", "data": data, "model": body["model"], "usage": {}}

    return app


if __name__ == "__main__":
    arguments = parse()
    uvicorn.run(create_app(arguments), host=arguments.host, port=arguments.port, log_level="info")
