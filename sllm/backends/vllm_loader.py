"""vLLM's ``--load-format sllm``: a model loader, registered through vLLM's plugin
mechanism (the ``vllm.general_plugins`` entry point, which vLLM loads in each of its
processes), that reads the weights of a model in sllm's store.

``--model`` names the stored directory (config, tokenizer and the store's chunk files);
the store's quick check runs before a byte is read, so a damaged copy fails the start
instead of serving wrong weights. Tensors are mapped from the chunk files (or the page
cache the worker holds them in) and handed to the model's own ``load_weights``, which
takes the names transformers uses, as vLLM's default loader does with safetensors.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

# Under "vllm", whose handler vLLM sets up in each of its processes.
log = logging.getLogger("vllm.sllm_store")

LOAD_FORMAT = "sllm"


def read_stored(directory: Path) -> dict[str, Any]:
    """Every tensor of the stored model in ``directory``, by name, after the store's
    quick check; StoreError when the copy is missing or damaged."""
    from sllm.store.format import StoreError
    from sllm.store.integrity import check_directory
    from sllm.store.loader import read_tensors

    index, problems = check_directory(directory, "quick")
    if index is None or problems:
        raise StoreError(f"stored model {directory} cannot be loaded: {'; '.join(problems)}")
    return read_tensors(directory, index, "cpu")


def register() -> None:
    """Make ``--load-format sllm`` known to vLLM in this process (idempotent)."""
    from vllm.model_executor.model_loader import (
        _LOAD_FORMAT_TO_MODEL_LOADER,
        register_model_loader,
    )
    from vllm.model_executor.model_loader.base_loader import BaseModelLoader

    if LOAD_FORMAT in _LOAD_FORMAT_TO_MODEL_LOADER:
        return

    @register_model_loader(LOAD_FORMAT)
    class SllmStoreLoader(BaseModelLoader):
        def download_model(self, model_config: Any) -> None:
            """The store is on this disk already: sllm's entry put the model there."""

        def load_weights(self, model: Any, model_config: Any) -> None:
            started = time.perf_counter()
            tensors = read_stored(Path(model_config.model))
            loaded = model.load_weights(iter(tensors.items()))
            if loaded is not None:
                # As vLLM's default loader checks: every parameter got a tensor.
                missing = {n for n, _ in model.named_parameters()} - set(loaded)
                if missing:
                    raise ValueError(
                        f"the stored model lacks weights for {sorted(missing)[:5]} "
                        f"({len(missing)} parameters)"
                    )
            log.info(
                "sllm store: loaded %d tensors from %s in %.2f s",
                len(tensors),
                model_config.model,
                time.perf_counter() - started,
            )
