"""Waiting for a backend process that is starting until it serves: its port first
(cheap), then the backend's own readiness check, then its LoRA adapters."""

from __future__ import annotations

import asyncio

import httpx

from sllm.worker import instance_adapters
from sllm.worker.local_instances import Entry, listening

_POLL_INTERVAL = 0.05
_POLL_TIMEOUT = 1.0
# Until the backend listens, its port is tried this often: a refused connect costs a
# syscall, where a refused HTTP poll cost a millisecond of the worker's CPU; and a
# 50 ms poll found a listening instance 25 ms late on average, on every cold start.
_LISTEN_POLL = 0.01


async def wait_ready(entry: Entry, timeout: float) -> str | None:
    """None once the backend says it serves (and has its adapters), else why not."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    base_url = f"http://127.0.0.1:{entry.spec.port}"
    # trust_env=False: an HTTP(S)_PROXY in the environment must not catch loopback calls.
    async with httpx.AsyncClient(trust_env=False) as client:
        while entry.ender is None:
            if entry.exited.done():
                return f"backend exited with code {entry.proc.returncode} during start-up"
            left = deadline - loop.time()
            if left <= 0:
                return f"backend not ready within {timeout:g} s"
            if not await listening(entry.spec.port, min(_POLL_TIMEOUT, left)):
                await asyncio.wait({entry.exited}, timeout=min(_LISTEN_POLL, left))
                continue
            client.timeout = httpx.Timeout(min(_POLL_TIMEOUT, left))
            try:
                ready = await entry.backend.ready(client, base_url, entry.spec)
            except (httpx.HTTPError, ValueError):
                # Answering before it can say, or gone again: poll again.
                ready = False
            if ready:
                return await instance_adapters.load(entry, client, base_url)
            await asyncio.wait({entry.exited}, timeout=min(_POLL_INTERVAL, left))
    return "stopped during start-up"
