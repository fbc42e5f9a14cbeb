"""The onnx backend process: ``python -m sllm.backends.onnx_backend``. It serves a model
converted to ONNX (``sllm.store.onnx_store``): one that generates through ONNX Runtime
GenAI (``onnx_engine``), an embedding model through ONNX Runtime (``onnx_embedding``).
It imports neither torch nor transformers: a model not converted yet is converted by
``sllm store save --format onnx`` in a child process, as the vllm backend stores its
models."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sllm.backends import model_source
from sllm.backends.onnx_embedding import OnnxEmbedder
from sllm.backends.onnx_engine import OnnxEngine
from sllm.backends.onnx_knobs import OnnxKnobs
from sllm.backends.server import main as serve
from sllm.store import onnx_store
from sllm.store.catalog import save_command, save_in_child
from sllm.store.onnx_encoder import ENCODER_FILE
from sllm.store.tiers import record_use


def build(
    model: str,
    instance_id: str,
    config: dict[str, Any],
    cache: Path,
    lora_adapters: dict[str, str],
) -> OnnxEngine | OnnxEmbedder:
    # A ValidationError is a ValueError: server.main reports it as the start's failure.
    knobs = OnnxKnobs.model_validate(config)
    if lora_adapters:
        raise ValueError("the onnx backend serves no LoRA adapters")
    directory = converted(knobs, cache)
    if (directory / ENCODER_FILE).is_file():
        return OnnxEmbedder(directory)
    return OnnxEngine(directory, knobs)


def converted(knobs: OnnxKnobs, storage: Path) -> Path:
    """The directory of the model as ONNX: the operator's own conversion, or the store's
    (converted now in a child process when there is none)."""
    source = knobs.pretrained_model_name_or_path
    own = model_source.expand_user(source)
    if own.is_absolute() and any((own / f).is_file() for f in ("genai_config.json", ENCODER_FILE)):
        return own
    files = model_source.resolve(source, storage)  # a hub id is downloaded: no compute
    found = _stored(files, storage, knobs)
    if found is None:
        argv = save_command(source, storage, "generate", False, onnx_precision=knobs.precision)
        save_in_child(argv, source)
        found = _stored(files, storage, knobs)
    if found is None:
        raise ValueError(f"cannot convert {source} to ONNX: see the lines above")
    record_use(found, source)
    return found


def _stored(files: model_source.ModelFiles, storage: Path, knobs: OnnxKnobs) -> Path | None:
    path = model_source.dequantized_dir(files, storage) if files.gguf_file else files.path
    if not (path / "config.json").is_file():
        return None  # a GGUF file not dequantized yet, so not converted either
    return onnx_store.stored(path, storage, onnx_store.precision_of(path, knobs.precision))


def prime() -> None:
    """What a warm process of the onnx pool imports before it waits for an instance:
    GenAI, ONNX Runtime (0.13 s of an embedding model's start here) and the tokenizers
    library."""
    import onnxruntime  # noqa: F401
    import onnxruntime_genai  # noqa: F401
    import tokenizers  # noqa: F401


if __name__ == "__main__":
    serve("onnx", build)
