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


if __name__ == "__main__":
    serve("transformers", build)
