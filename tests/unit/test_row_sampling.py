"""Per-row sampling of the static batcher: penalties, temperature 0, top_p, seeds."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from sllm.backends.engine import SamplingParams  # noqa: E402
from sllm.backends.static_batching import processed_logits, sample_row  # noqa: E402


def gen(seed: int = 0) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(seed)
    return g


LOGITS = torch.tensor([0.0, 1.0, 3.0, 2.9, -1.0])


def test_temperature_zero_is_argmax() -> None:
    params = SamplingParams(max_tokens=1, temperature=0)
    assert sample_row(LOGITS, torch.tensor([], dtype=torch.long), params, gen()) == 2


def test_frequency_and_presence_penalties_push_repeated_tokens_down() -> None:
    seen = torch.tensor([2, 2], dtype=torch.long)
    frequency = SamplingParams(max_tokens=1, temperature=0, frequency_penalty=0.1)
    assert sample_row(LOGITS, seen, frequency, gen()) == 3  # 3.0 - 2 * 0.1 < 2.9
    presence = SamplingParams(max_tokens=1, temperature=0, presence_penalty=0.2)
    assert sample_row(LOGITS, seen, presence, gen()) == 3  # once, however often seen
    small = SamplingParams(max_tokens=1, temperature=0, presence_penalty=0.05)
    assert sample_row(LOGITS, seen, small, gen()) == 2
    negative = SamplingParams(max_tokens=1, temperature=0, frequency_penalty=-1.0)
    assert sample_row(LOGITS, torch.tensor([4, 4, 4, 4, 4]), negative, gen()) == 4


def test_top_p_keeps_only_the_nucleus() -> None:
    # Tokens 2 and 3 hold ~0.73 of the mass at temperature 1; top_p 0.5 keeps 2 and 3.
    params = SamplingParams(max_tokens=1, temperature=1.0, top_p=0.5)
    draws = {
        sample_row(LOGITS, torch.tensor([], dtype=torch.long), params, gen(s)) for s in range(200)
    }
    assert draws == {2, 3}
    tiny = SamplingParams(max_tokens=1, temperature=1.0, top_p=0.01)
    assert {sample_row(LOGITS, torch.tensor([]), tiny, gen(s)) for s in range(50)} == {2}


def test_a_seeded_generator_reproduces_its_draws() -> None:
    params = SamplingParams(max_tokens=1, temperature=1.5)
    empty = torch.tensor([], dtype=torch.long)
    first = [sample_row(LOGITS, empty, params, g) for g in [gen(3)] * 20]
    again = [sample_row(LOGITS, empty, params, g) for g in [gen(3)] * 20]
    assert first == again and len(set(first)) > 1


EMPTY = torch.tensor([], dtype=torch.long)


def test_top_k_and_min_p_cut_the_tail() -> None:
    top2 = SamplingParams(max_tokens=1, temperature=5.0, top_k=2)
    assert {sample_row(LOGITS, EMPTY, top2, gen(s)) for s in range(200)} == {2, 3}
    # min_p 0.5: only tokens at least half as likely as token 2 (2.9 at 5.0 is close).
    min_p = SamplingParams(max_tokens=1, temperature=1.0, min_p=0.5)
    assert {sample_row(LOGITS, EMPTY, min_p, gen(s)) for s in range(200)} == {2, 3}
    off = SamplingParams(max_tokens=1, temperature=5.0, top_k=-1, min_p=0.0)
    assert len({sample_row(LOGITS, EMPTY, off, gen(s)) for s in range(200)}) == 5


def test_repetition_penalty_counts_the_prompt_and_divides_or_multiplies() -> None:
    params = SamplingParams(max_tokens=1, temperature=0, repetition_penalty=1.1)
    # Token 2 (3.0) seen in the prompt falls to 2.73 < 2.9.
    assert sample_row(LOGITS, EMPTY, params, gen(), prompt=torch.tensor([2])) == 3
    assert sample_row(LOGITS, EMPTY, params, gen()) == 2
    # A negative logit is multiplied, pushed further down.
    assert processed_logits(LOGITS, torch.tensor([4]), EMPTY, params)[4] == pytest.approx(-1.1)


def test_end_of_sequence_waits_for_min_tokens() -> None:
    params = SamplingParams(max_tokens=5, temperature=0, min_tokens=2)
    assert sample_row(LOGITS, torch.tensor([0]), params, gen(), eos_ids=[2]) == 3
    assert sample_row(LOGITS, torch.tensor([0, 1]), params, gen(), eos_ids=[2]) == 2
