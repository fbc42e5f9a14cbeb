"""A non-streamed answer cut short to move it: how its parts join into one, and which
answers a backend agrees to cut."""

from __future__ import annotations

import asyncio

from sllm.backends.cuts import Cuts
from sllm.head.answer_moves import joined, moved_of, text_of

MOVED = {"to": "m-2", "reason": "operator"}


def cut_chat(text: str) -> dict[str, object]:
    return {
        "id": "chatcmpl-1",
        "created": 100,
        "system_fingerprint": "m-1",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": "sllm_cut",
            }
        ],
        "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8},
        "sllm_moved": MOVED,
    }


def test_the_parts_of_a_moved_answer_join_into_the_whole() -> None:
    first = cut_chat("Once upon")
    assert moved_of(first) == MOVED and text_of(first) == "Once upon"
    then = {
        "id": "chatcmpl-2",
        "created": 101,
        "system_fingerprint": "m-2",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": " a time"},
                "finish_reason": "length",
            }
        ],
        "usage": {"prompt_tokens": 5, "completion_tokens": 6, "total_tokens": 11},
    }
    whole = joined(first, then)
    assert moved_of(whole) is None and "sllm_moved" not in whole
    assert (whole["id"], whole["created"]) == ("chatcmpl-1", 100)
    assert whole["system_fingerprint"] == "m-2"
    assert whole["choices"][0]["message"]["content"] == "Once upon a time"
    assert whole["choices"][0]["finish_reason"] == "length" and whole["usage"] == then["usage"]
    # Completions carry text; a second cut carries on the same way.
    text_first = {"choices": [{"text": "a", "finish_reason": "sllm_cut"}], "sllm_moved": MOVED}
    again = {"choices": [{"text": "b", "finish_reason": "sllm_cut"}], "sllm_moved": MOVED}
    assert text_of(joined(text_first, again)) == "ab" and moved_of(joined(text_first, again))


def test_only_a_whole_cut_answer_of_one_choice_moves() -> None:
    whole = cut_chat("x")
    whole["choices"][0]["finish_reason"] = "stop"  # type: ignore[index]
    assert moved_of(whole) is None  # it ended before the cut took hold
    two = cut_chat("x")
    two["choices"] = [*two["choices"], *two["choices"]]  # type: ignore[misc]
    assert moved_of(two) is None


def test_a_backend_cuts_only_the_answers_it_watches_once() -> None:
    async def run() -> None:
        cuts = Cuts()
        assert not cuts.cut("t1", MOVED)  # nothing runs as t1
        with cuts.watch("t1", movable=True) as cut:
            assert cut is not None and not cut.asked.is_set()
            with cuts.watch("t1", movable=True) as twice:
                assert twice is None  # one answer per task
            assert cuts.cut("t1", MOVED) and cut.asked.is_set() and cut.moved == MOVED
            assert not cuts.cut("t1", MOVED)  # asked already
        assert not cuts.cut("t1", MOVED)  # it ended
        with cuts.watch("t2", movable=False) as none, cuts.watch(None, movable=True) as anon:
            assert none is None and anon is None and not cuts.cut("t2", MOVED)

    asyncio.run(run())
