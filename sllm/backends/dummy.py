"""The dummy backend: a real OpenAI-speaking process with no model, for tests and
benchmarks; its engine is ``dummy_engine``."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from sllm.backends.dummy_engine import DummyEngine, DummyKnobs
from sllm.backends.server import main as serve


def build(
    model: str,
    instance_id: str,
    config: dict[str, Any],
    cache: Path,
    lora_adapters: dict[str, str],
) -> DummyEngine:
    # A ValidationError is a ValueError: server.main reports it as the start's failure.
    knobs = DummyKnobs.model_validate(config)
    if knobs.startup_delay:
        time.sleep(knobs.startup_delay)  # before the server starts: nothing else runs yet
    return DummyEngine(knobs, frozenset(lora_adapters))


if __name__ == "__main__":
    serve("dummy", build)
