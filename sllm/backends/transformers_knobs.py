"""``backend_config`` of a transformers model, and what it tells the head of its
instances. Pure (no torch), so the head checks a config when it is deployed."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from sllm.backends.base import Backend, LaunchSpec
from sllm.backends.cpu_binding import CORES_ENV
from sllm.worker.cpu_cores import bind_list, default_threads

CPU_KV_CACHE_TOKENS = 8192
CPU_MAX_BATCH_TOKENS = 1024
CPU_KV_PAGE_TOKENS = 32


class TransformersKnobs(BaseModel):
    """``backend_config`` of a transformers model; unknown keys are refused."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    pretrained_model_name_or_path: str = Field(min_length=1)
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    task: Literal["auto", "generate", "embed"] = "auto"
    default_max_tokens: int = Field(256, ge=1)
    # Unset: transformers' sizing on a GPU, CPU_MAX_BATCH_TOKENS on a CPU, where the
    # attention mask it fills at start-up is this times the KV cache's tokens (8192 x
    # 16384 floats, 0.7 s, with transformers' default).
    max_batch_tokens: int | None = Field(None, ge=16)
    # Tokens the paged KV cache of continuous batching holds. Unset: transformers sizes
    # it from free GPU memory on a GPU; on a CPU it is CPU_KV_CACHE_TOKENS, because the
    # cache is zeroed at start-up and its size there is start-up time (3.2 GB, 5 s, for
    # SmolLM2 with transformers' sizing from free RAM).
    kv_cache_tokens: int | None = Field(None, ge=256)
    # Tokens a page of that cache holds, the unit its prefix sharing matches in (a
    # migration's warm-up is reused only for its prompt's whole pages). Unset:
    # CPU_KV_PAGE_TOKENS on a CPU, transformers' default (256) on a GPU.
    kv_page_tokens: int | None = Field(None, ge=8, le=1024)
    # continuous: transformers' continuous batching; static: batches of model.generate
    # (LoRA adapters, per-request seed, penalties); auto: continuous unless the model has
    # LoRA adapters or continuous batching fails to start on this device.
    batching: Literal["auto", "continuous", "static"] = "auto"
    # Cores a CPU instance binds its threads to, chosen by the worker among those other
    # instances hold least (cpu_binding.py says why). Unset: half the cores but one.
    cpu_threads: int | None = Field(None, ge=1)
    max_batch_size: int = Field(16, ge=1, le=256)
    trust_remote_code: bool = False


@dataclass(frozen=True)
class TransformersBackend(Backend):
    def keeps_prefixes(self, backend_config: dict[str, Any]) -> bool:
        # Continuous batching shares KV-cache blocks by prefix (transformers'
        # allow_block_sharing, on by default) and keeps a finished request's blocks
        # until memory runs short: a prompt prefilled once is prefilled again only
        # past its last whole block. The static batcher keeps nothing.
        return backend_config.get("batching") != "static"

    def cpu_threads(self, spec: LaunchSpec, cpu_count: int) -> int:
        try:
            knobs = TransformersKnobs.model_validate(spec.backend_config)
        except ValidationError:
            return 0  # the instance reports its bad config itself
        if spec.num_gpus or knobs.device == "cuda":
            return 0
        return knobs.cpu_threads or default_threads(cpu_count)

    def env(self, spec: LaunchSpec) -> dict[str, str]:
        return {CORES_ENV: bind_list(spec.cpu_cores)} if spec.cpu_cores else {}
