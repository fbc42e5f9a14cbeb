"""The transformers backend process: ``python -m sllm.backends.transformers_backend``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from sllm.backends.hf_engine import TransformersEngine, TransformersKnobs
from sllm.backends.model_source import ModelSourceError
from sllm.backends.server import main as serve
from sllm.store.tiers import MEMORY_ENV


def build(
    model: str,
    instance_id: str,
    config: dict[str, Any],
    cache: Path,
    lora_adapters: dict[str, str],
) -> TransformersEngine:
    # A ValidationError is a ValueError: server.main reports it as the start's failure.
    knobs = TransformersKnobs.model_validate(config)
    try:
        memory = os.environ.get(MEMORY_ENV)
        return TransformersEngine(knobs, cache, lora_adapters, Path(memory) if memory else None)
    except ModelSourceError:
        raise
    except OSError as exc:  # missing or unreadable model files
        raise ValueError(f"cannot load {knobs.pretrained_model_name_or_path}: {exc}") from None


def prime() -> None:
    """What a warm process runs before it waits for an instance: builds a tiny Llama
    skeleton the way the store's loader does, which pulls in the modules transformers
    imports lazily and sets up what it does once per process (2 s of the demo model's
    start on this CPU, measured, against 0.5 s left for the model itself)."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    from sllm.store.loader import empty_skeleton

    config = LlamaConfig(
        vocab_size=64,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=64,
    )
    empty_skeleton(AutoModelForCausalLM, config, dtype=None, trust_remote_code=False)


if __name__ == "__main__":
    serve("transformers", build)
