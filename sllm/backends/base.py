"""How the worker launches and readies an instance of a backend."""

from __future__ import annotations

import importlib.util
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from pydantic import BaseModel


@dataclass(frozen=True)
class LaunchSpec:
    """Everything a backend process needs to serve one instance."""

    instance_id: str
    model: str
    port: int
    backend_config: dict[str, Any] = field(default_factory=dict)
    num_gpus: int = 0
    lora_adapters: dict[str, str] = field(default_factory=dict)
    storage_path: Path = Path(".")
    # The CPU cores the instance binds its threads to (backends that bind them).
    cpu_cores: tuple[int, ...] = ()
    # Workers holding the model stored, to fetch it from before storing it from its
    # source (sllm.store.peer_fetch).
    store_peers: tuple[str, ...] = ()


class BackendUnavailable(Exception):
    """This machine cannot run the backend; the message says what to install."""


@dataclass(frozen=True)
class Backend:
    """A backend that runs as ``python -m <module>`` with the common flags."""

    name: str
    module: str
    health_path: str = "/health"
    # Whether it serves ``lora_adapters`` (as MODEL:ADAPTER).
    lora: bool = False
    # Whether adapters load into a running instance (set_adapters) rather than from
    # the launch command.
    runtime_adapters: bool = False
    # Whether it serves sllm's OpenAI server (server.py), which continues a resumed
    # stream from ``sllm_continue_from``; the worker restates a resume for the others
    # with vLLM's continuation options (sllm.worker.continuation).
    continues: bool = True
    # The schema of its backend_config, checked when a model is deployed.
    knobs: type[BaseModel] | None = None
    # What a warm process imports and runs ("module" or "module:function") so that it
    # can become an instance of this backend; empty: instances always start cold.
    warm_prime: tuple[str, ...] = ()
    # Which pool of warm processes its instances start from: backends in one pool prime
    # the same processes, and a process one pool primed never becomes another's instance.
    warm_pool: str = "sllm"
    # Whether its instances keep the prefixes they prefilled (the dummy's model of a
    # prefix cache): a migration's destination then prefills ahead of taking over.
    prefix_cache: bool = False

    def command(self, spec: LaunchSpec) -> list[str]:
        return [
            sys.executable,
            "-m",
            self.module,
            "--host",
            "127.0.0.1",
            "--port",
            str(spec.port),
            "--model",
            spec.model,
            "--instance-id",
            spec.instance_id,
            "--config",
            json.dumps(spec.backend_config),
            "--storage-path",
            str(spec.storage_path),
            "--lora-adapters",
            json.dumps(spec.lora_adapters),
        ]

    # Python packages the backend imports; a worker without them cannot run it.
    requires: tuple[str, ...] = ()
    install_hint: str = ""

    def primes(self) -> tuple[str, ...]:
        """What a warm process primes for this backend on this machine."""
        return self.warm_prime

    def cpu_threads(self, spec: LaunchSpec, cpu_count: int) -> int:
        """How many cores the instance binds its threads to; 0: it binds none."""
        return 0

    def env(self, spec: LaunchSpec) -> dict[str, str]:
        """Environment the process needs beyond the worker's own."""
        return {}

    async def ready(self, client: httpx.AsyncClient, base_url: str, spec: LaunchSpec) -> bool:
        """Whether the instance serves now; polled during start-up (errors: not yet)."""
        resp = await client.get(f"{base_url}{self.health_path}")
        return resp.status_code == 200

    async def health(self, client: httpx.AsyncClient, base_url: str) -> dict[str, Any]:
        """What the ready instance says of itself on its health route ({} when it says
        nothing): sllm's backend server tells when loading the weights began and how
        long it took (``load_started``, ``load_seconds``), the model's sampling
        defaults (``sampling_defaults``) and its context (``context_length``)."""
        try:
            body = (await client.get(f"{base_url}{self.health_path}")).json()
        except (httpx.HTTPError, ValueError):
            return {}
        return body if isinstance(body, dict) else {}

    async def set_adapters(
        self,
        client: httpx.AsyncClient,
        base_url: str,
        spec: LaunchSpec,
        old: dict[str, str],
        new: dict[str, str],
    ) -> None:
        """Load ``new`` and unload what only ``old`` has, in a running instance."""
        raise BackendUnavailable(
            f"the {self.name} backend loads LoRA adapters at start only: new instances "
            "get the new adapters"
        )

    def keeps_prefixes(self, backend_config: dict[str, Any]) -> bool:
        """Whether an instance of this config keeps the prefixes it prefilled, so that
        prefilling a request's text ahead of a migration shortens its take-over."""
        return self.prefix_cache

    def sleeps(self, backend_config: dict[str, Any], num_gpus: int) -> bool:
        """Whether an instance of this config, once idle, is put to sleep (its weights
        in host memory, its GPU memory free) instead of stopped."""
        return False

    async def sleep(self, client: httpx.AsyncClient, base_url: str) -> None:
        """Put a running instance to sleep; raises RuntimeError when it did not."""
        raise BackendUnavailable(f"the {self.name} backend has no sleep mode")

    async def wake(self, client: httpx.AsyncClient, base_url: str) -> None:
        """Wake a sleeping instance; raises RuntimeError when it did not."""
        raise BackendUnavailable(f"the {self.name} backend has no sleep mode")

    def unavailable_reason(self) -> str | None:
        """None when this machine can run the backend, else why not."""
        missing = [p for p in self.requires if importlib.util.find_spec(p) is None]
        if missing:
            return (
                f"the {self.name} backend needs {', '.join(missing)}, not installed on this "
                f"worker: {self.install_hint}"
            )
        return None
