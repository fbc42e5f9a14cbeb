"""Where and how the transformers backend loads a model: its device, dtype, how many
GPUs it spreads over, and whether it generates text or embeds it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sllm.backends.transformers_knobs import TransformersKnobs


def device_of(knobs: TransformersKnobs) -> str:
    import torch

    if knobs.device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if knobs.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for but torch sees no CUDA device")
    return knobs.device


def gpu_count(device: str) -> int:
    import torch

    return torch.cuda.device_count() if device == "cuda" else 0


def dtype_of(knobs: TransformersKnobs, device: str) -> Any:
    import torch

    if knobs.dtype == "auto":
        return torch.bfloat16 if device == "cuda" else torch.float32
    return getattr(torch, knobs.dtype)


def is_generative(path: Path, knobs: TransformersKnobs) -> bool:
    if knobs.task != "auto":
        return knobs.task == "generate"
    config = json.loads((path / "config.json").read_text())
    return any(a.endswith("ForCausalLM") for a in config.get("architectures") or [])
