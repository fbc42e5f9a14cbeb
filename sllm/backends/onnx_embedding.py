"""The onnx backend's embedding models: an encoder exported to ONNX (``sllm.store.
onnx_encoder``) run by plain ONNX Runtime, pooled and normalized as the transformers
backend does for the same model, so the two give the same vectors. No torch."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np

from sllm.backends.engine import Piece, SamplingParams, TokenLogprob, known_ids
from sllm.backends.hf_embedding import check_dimensions
from sllm.edge.errors import RequestError
from sllm.edge.protocol import ChatMessage, Prompt
from sllm.store.onnx_encoder import ENCODER_FILE

_GENERATES_NOT = "this is an embedding model: use /v1/embeddings"


class OnnxEmbedder:
    """One encoder in this process: ``embed`` only; the generation routes are a 400."""

    adapters: frozenset[str] = frozenset()
    sampling_defaults: dict[str, float] = {}

    def __init__(self, directory: Path) -> None:
        import onnxruntime
        import tokenizers

        described = json.loads((directory / ENCODER_FILE).read_text())
        self._pooling = str(described["pooling"])
        self._normalize = bool(described["normalize"])
        self.context_length = int(described["context_length"])
        self._pad = int(described["pad_token_id"])
        self._session = onnxruntime.InferenceSession(
            str(directory / "model.onnx"), providers=["CPUExecutionProvider"]
        )
        self._tokenizer = tokenizers.Tokenizer.from_file(str(directory / "tokenizer.json"))
        # Cut to the context as the transformers backend's tokenizer call does, padded
        # here to the batch's longest (a tokenizer.json may pad every input to a fixed
        # length: MiniLM's to 128).
        self._tokenizer.enable_truncation(self.context_length)
        self._tokenizer.no_padding()
        self._vocab_size = self._tokenizer.get_vocab_size(with_added_tokens=True)

    async def embed(
        self, texts: list[Prompt], dimensions: int | None
    ) -> tuple[list[list[float]], int]:
        for text in texts:
            if isinstance(text, list):
                known_ids(text, self._vocab_size, "input")
        return await asyncio.to_thread(self._embed, texts, dimensions)

    def _embed(self, texts: list[Prompt], dimensions: int | None) -> tuple[list[list[float]], int]:
        """Blocking: tokenizing and the forward pass, off the event loop."""
        if all(isinstance(t, str) for t in texts):
            rows = [e.ids for e in self._tokenizer.encode_batch([str(t) for t in texts])]
        else:  # one kind per request, as OpenAI's API has it: lists of ids
            rows = [t[: self.context_length] for t in texts if isinstance(t, list)]
        width = max((len(r) for r in rows), default=0)
        if width == 0:
            raise RequestError("input holds no tokens", param="input")
        ids = np.full((len(rows), width), self._pad, dtype=np.int64)
        mask = np.zeros((len(rows), width), dtype=np.int64)
        for i, row in enumerate(rows):
            ids[i, : len(row)] = row
            mask[i, : len(row)] = 1
        (hidden,) = self._session.run(None, {"input_ids": ids, "attention_mask": mask})
        return pooled(hidden, mask, self._pooling, self._normalize, dimensions), int(mask.sum())

    # -- what an encoder does not do -----------------------------------------------------

    def chat_prompt(
        self, messages: list[ChatMessage], tools: list[dict[str, Any]] | None = None
    ) -> str:
        raise RequestError(_GENERATES_NOT, param="model")

    def must_call(self, messages: list[ChatMessage]) -> bool:
        return False

    def continuation_prompt(self, prompt: str, produced: str) -> str:
        raise RequestError(_GENERATES_NOT, param="model")

    def count_tokens(self, prompt: Prompt) -> int:
        raise RequestError(_GENERATES_NOT, param="model")

    def decode(self, ids: list[int]) -> str:
        raise RequestError(_GENERATES_NOT, param="model")

    def default_max_tokens(self, prompt_tokens: int) -> int:
        raise RequestError(_GENERATES_NOT, param="model")

    def check(self, prompt_tokens: int, params: SamplingParams) -> None:
        raise RequestError(_GENERATES_NOT, param="model")

    def generate(self, prompt: Prompt, params: SamplingParams) -> AsyncIterator[Piece]:
        raise RequestError(_GENERATES_NOT, param="model")

    async def prompt_logprobs(
        self, prompt: Prompt, top: int, adapter: str | None
    ) -> list[TokenLogprob]:
        raise RequestError(_GENERATES_NOT, param="model")

    def close(self) -> None:
        pass


def pooled(
    hidden: np.ndarray,
    mask: np.ndarray,
    mode: str,
    normalize: bool,
    dimensions: int | None,
) -> list[list[float]]:
    """One vector per row of ``hidden`` (batch, length, width): ``mode`` pooling over
    the tokens ``mask`` keeps, cut to ``dimensions`` and normalized as
    ``hf_embedding.embed_batch`` does. Pure."""
    keep = mask[:, :, None].astype(hidden.dtype)
    if mode == "cls":
        vectors = hidden[:, 0]
    elif mode == "max":
        vectors = np.where(keep > 0, hidden, -np.inf).max(axis=1)
    else:
        vectors = (hidden * keep).sum(axis=1) / np.maximum(keep.sum(axis=1), 1e-9)
    if dimensions is not None:
        check_dimensions(dimensions, int(vectors.shape[-1]))
        vectors = vectors[:, :dimensions]
    if normalize or dimensions is not None:
        norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
        vectors = vectors / np.maximum(norms, 1e-12)
    return [[float(x) for x in row] for row in vectors.astype(np.float32)]
