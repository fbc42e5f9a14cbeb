"""``backend_config`` of an onnx model. Pure (no ONNX Runtime), so the head checks a
config when it is deployed."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class OnnxKnobs(BaseModel):
    """``backend_config`` of an onnx model; unknown keys are refused."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    # A model directory, a .gguf file, a hub id or a packaged name, converted once into
    # the store; or a directory the ONNX Runtime GenAI builder wrote (genai_config.json),
    # served as it is.
    pretrained_model_name_or_path: str = Field(min_length=1)
    # The weights' precision of the conversion. auto: int4 for a model that generates
    # (the fastest on a CPU), fp32 for an embedding model (the only one its export has).
    precision: Literal["auto", "int4", "int8", "fp16", "fp32"] = "auto"
    default_max_tokens: int = Field(256, ge=1)
    # Requests the engine decodes in one batch; more wait for a place.
    max_batch_size: int = Field(16, ge=1, le=256)
