"""A model's own sampling defaults: what its generation config sets, for requests that
set none, as vLLM's server applies them by default (``--generation-config auto``). Pure."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# The generation config's fields vLLM takes as sampling defaults, in its names.
FIELDS = ("temperature", "top_p", "top_k", "min_p", "repetition_penalty")


def from_generation_config(diff: Mapping[str, Any]) -> dict[str, float]:
    """The sampling defaults a generation config sets; ``diff``: its values that differ
    from transformers' own defaults (``GenerationConfig.to_diff_dict()``), so a file
    that sets nothing sets no default."""
    return {
        name: float(value)
        for name in FIELDS
        if isinstance(value := diff.get(name), int | float) and not isinstance(value, bool)
    }
