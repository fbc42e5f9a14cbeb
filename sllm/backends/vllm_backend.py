"""The vLLM backend: vLLM's own OpenAI server as the instance process.

The worker proxies to it like to any backend. It is ready when ``/health`` answers and
the model is listed; LoRA adapters are loaded through vLLM's runtime adapter endpoints
(named ``MODEL:ADAPTER``, so requests address them as on the other backends).
"""

from __future__ import annotations

import importlib.util
import os
import sys
from dataclasses import dataclass

import httpx
from pydantic import ValidationError

from sllm.backends.base import Backend, LaunchSpec
from sllm.backends.vllm_flags import VllmKnobs, vllm_args
from sllm.protocol import adapter_model_name

# Another module to run as `python -m` instead of vLLM's server: a wrapper of the
# operator's, or the project's stand-in in tests. The package and GPU checks are then
# the operator's.
ENTRYPOINT_ENV = "SLLM_VLLM_ENTRYPOINT"
VLLM_ENTRYPOINT = "vllm.entrypoints.openai.api_server"


@dataclass(frozen=True)
class VllmBackend(Backend):
    def _entrypoint(self) -> str:
        return os.environ.get(ENTRYPOINT_ENV) or VLLM_ENTRYPOINT

    def command(self, spec: LaunchSpec) -> list[str]:
        try:
            knobs = VllmKnobs.model_validate(spec.backend_config)
        except ValidationError as exc:
            raise ValueError(f"invalid backend_config for vllm: {exc}") from None
        args = vllm_args(knobs, spec.model, spec.port, spec.num_gpus, bool(spec.lora_adapters))
        return [sys.executable, "-m", self._entrypoint(), *args]

    def env(self, spec: LaunchSpec) -> dict[str, str]:
        env = {"HF_HOME": str(spec.storage_path / "hub")}
        if spec.lora_adapters:
            # vLLM serves /v1/load_lora_adapter only with this set.
            env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] = "True"
        return env

    def unavailable_reason(self) -> str | None:
        if os.environ.get(ENTRYPOINT_ENV):
            return None
        if importlib.util.find_spec("vllm") is None:
            return f"the vllm backend needs vllm, not installed on this worker: {self.install_hint}"
        from sllm.worker.hardware import gpu_count

        if gpu_count() == 0:
            return "the vllm backend needs an NVIDIA GPU; this worker has none"
        return None

    async def ready(self, client: httpx.AsyncClient, base_url: str, spec: LaunchSpec) -> bool:
        if not await super().ready(client, base_url, spec):
            return False
        resp = await client.get(f"{base_url}/v1/models")
        return resp.status_code == 200 and any(
            m.get("id") == spec.model for m in resp.json().get("data", [])
        )

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


async def _call(client: httpx.AsyncClient, url: str, body: dict[str, str]) -> None:
    resp = await client.post(url, json=body)
    if resp.status_code >= 300:
        raise RuntimeError(f"{url} answered {resp.status_code}: {resp.text[:300]}")
