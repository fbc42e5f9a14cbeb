"""``backend_config`` of a transformers model. Pure (no torch), so the head checks a
config when it is deployed."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

CPU_KV_CACHE_TOKENS = 8192
CPU_MAX_BATCH_TOKENS = 1024


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
    # continuous: transformers' continuous batching; static: batches of model.generate
    # (LoRA adapters, per-request seed, penalties); auto: continuous unless the model has
    # LoRA adapters or continuous batching fails to start on this device.
    batching: Literal["auto", "continuous", "static"] = "auto"
    max_batch_size: int = Field(16, ge=1, le=256)
    trust_remote_code: bool = False
