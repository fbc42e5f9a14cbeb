"""LoRA adapters of a running instance, for backends that load them at run time
(vLLM): the ones its deploy config names, once it is ready, and a new set on update."""

from __future__ import annotations

import dataclasses

import httpx

from sllm.worker.local_instances import Entry

# Loading an adapter reads its weights; vLLM does it in seconds.
ADAPTER_TIMEOUT = 120.0


async def load(entry: Entry, client: httpx.AsyncClient, base_url: str) -> str | None:
    """Load the instance's configured adapters: None once loaded (or none to load),
    else why it failed."""
    if not (entry.backend.runtime_adapters and entry.spec.lora_adapters):
        return None
    client.timeout = httpx.Timeout(ADAPTER_TIMEOUT)
    try:
        await entry.backend.set_adapters(client, base_url, entry.spec, {}, entry.spec.lora_adapters)
    except (httpx.HTTPError, RuntimeError) as exc:
        return f"loading LoRA adapters failed: {exc}"
    return None


async def swap(entry: Entry, adapters: dict[str, str]) -> None:
    """Replace the instance's adapters with ``adapters`` (BackendUnavailable where its
    backend loads none at run time)."""
    async with httpx.AsyncClient(trust_env=False, timeout=ADAPTER_TIMEOUT) as client:
        await entry.backend.set_adapters(
            client,
            f"http://127.0.0.1:{entry.spec.port}",
            entry.spec,
            entry.spec.lora_adapters,
            adapters,
        )
    entry.spec = dataclasses.replace(entry.spec, lora_adapters=dict(adapters))
