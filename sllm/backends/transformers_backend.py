"""The transformers backend process: ``python -m sllm.backends.transformers_backend``."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from sllm.backends.cpu_binding import bind_torch, cores_from_env
from sllm.backends.hf_engine import TransformersEngine, TransformersKnobs
from sllm.backends.model_source import ModelSourceError
from sllm.backends.server import main as serve


def build(
    model: str,
    instance_id: str,
    config: dict[str, Any],
    cache: Path,
    lora_adapters: dict[str, str],
) -> TransformersEngine:
    # A ValidationError is a ValueError: server.main reports it as the start's failure.
    knobs = TransformersKnobs.model_validate(config)
    bind_torch(cores_from_env())
    try:
        # A cold process waiting for the worker's store of the model primes meanwhile.
        return TransformersEngine(knobs, cache, lora_adapters, while_waiting=prime)
    except ModelSourceError:
        raise
    except OSError as exc:  # missing or unreadable model files
        raise ValueError(f"cannot load {knobs.pretrained_model_name_or_path}: {exc}") from None


# Once per module: a warm process that primed runs this module anew as its instance
# (__main__), where a wait for the store primes again, at the cost of the tiny model.
@functools.cache
def prime() -> None:
    """What a warm process runs before it waits for an instance, and a cold one while
    the worker stores its model: builds a tiny Llama skeleton the way the store's
    loader does and runs one short generation through continuous batching, which pulls
    in what transformers imports lazily and sets up once per process (2 s, then 0.1 s
    more, of the demo model's start on this CPU)."""
    from transformers import AutoModelForCausalLM, GenerationConfig, LlamaConfig
    from transformers.generation.configuration_utils import ContinuousBatchingConfig

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
    model = AutoModelForCausalLM.from_config(config).eval()
    manager = model.init_continuous_batching(
        generation_config=GenerationConfig(
            do_sample=True, temperature=0.7, top_p=0.95, eos_token_id=[0], pad_token_id=0
        ),
        continuous_batching_config=ContinuousBatchingConfig(
            per_request_processors=True, max_batch_tokens=64, num_blocks=1
        ),
    )
    manager.start()
    try:
        request = manager.add_request([1, 2, 3], max_new_tokens=2, temperature=1.0, top_p=1.0)
        for _ in manager.request_id_iter(request):
            pass
    finally:
        manager.stop(block=True, timeout=10)


if __name__ == "__main__":
    serve("transformers", build)
