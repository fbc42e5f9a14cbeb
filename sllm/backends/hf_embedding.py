"""Sentence embeddings with a transformers encoder: its inputs cut to the context, its
pooling and normalization as the model's sentence-transformers config names them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sllm.edge.errors import RequestError
from sllm.edge.protocol import Prompt


def batch_of(tokenizer: Any, texts: list[Prompt], context_length: int) -> Any:
    """Inputs as the model reads them, cut to its context: texts through the
    tokenizer, token ids as they are (a request sends one kind, as OpenAI's API has it)."""
    if all(isinstance(t, str) for t in texts):
        return tokenizer(
            texts,
            padding=True,
            truncation=True,
            max_length=context_length,
            return_tensors="pt",
        )
    # The protocol allows one kind per request: these are all lists of ids.
    ids = [t[:context_length] for t in texts if isinstance(t, list)]
    return tokenizer.pad({"input_ids": ids}, return_tensors="pt")


def embed_batch(
    model: Any,
    tokenizer: Any,
    device: str,
    context_length: int,
    pooling: tuple[str, bool],
    texts: list[Prompt],
    dimensions: int | None,
) -> tuple[list[list[float]], int]:
    """The embeddings of ``texts`` and the tokens they took; ``pooling`` is (mode,
    normalize) as ``sentence_transformers_pooling`` reads them. Blocking: run it off
    the event loop."""
    import torch

    mode, normalize = pooling
    batch = batch_of(tokenizer, texts, context_length).to(device)
    with torch.inference_mode():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
    if mode == "cls":
        pooled = hidden[:, 0]
    elif mode == "max":
        pooled = hidden.masked_fill(mask == 0, float("-inf")).max(dim=1).values
    else:
        pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
    if dimensions is not None:
        check_dimensions(dimensions, int(pooled.shape[-1]))
        pooled = pooled[:, :dimensions]
    if normalize or dimensions is not None:
        pooled = torch.nn.functional.normalize(pooled.float(), p=2, dim=-1)
    tokens = int(batch["attention_mask"].sum().item())
    return pooled.float().cpu().tolist(), tokens


def check_dimensions(dimensions: int, width: int) -> None:
    """RequestError when a request asks for more ``dimensions`` than a vector's ``width``."""
    if dimensions > width:
        raise RequestError(f"dimensions must be at most {width} for this model", param="dimensions")


def sentence_transformers_pooling(path: Path) -> tuple[str, bool]:
    """(pooling mode, normalize) as the model's sentence-transformers config names them;
    mean pooling without normalization when it has none."""
    modules_file = path / "modules.json"
    if not modules_file.is_file():
        return "mean", False
    modules = json.loads(modules_file.read_text())
    normalize = any(m.get("type", "").endswith(".Normalize") for m in modules)
    pooling = "mean"
    for module in modules:
        if module.get("type", "").endswith(".Pooling"):
            config = json.loads((path / module["path"] / "config.json").read_text())
            if config.get("pooling_mode_cls_token"):
                pooling = "cls"
            elif config.get("pooling_mode_max_tokens"):
                pooling = "max"
    return pooling, normalize
