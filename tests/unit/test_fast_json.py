"""JSON on the request path (edge/fast_json.py): orjson, and Python's json where orjson
refuses what a backend may send."""

from __future__ import annotations

import json
import math

from sllm.edge import fast_json


def test_what_python_json_writes_past_the_standard_is_still_read() -> None:
    assert math.isinf(fast_json.loads('{"logprob": -Infinity}')["logprob"])
    assert fast_json.loads(b'{"a": [1, "b"]}') == {"a": [1, "b"]}


def test_integers_past_64_bits_are_written_and_output_is_one_line() -> None:
    big = {"seed": 2**70, "text": "two\nlines"}
    assert json.loads(fast_json.dumps(big)) == big
    assert b"\n" not in fast_json.dumps(big)
    assert fast_json.sse({"a": 1}) == b'data: {"a":1}\n\n'
