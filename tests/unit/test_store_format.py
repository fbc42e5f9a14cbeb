"""The pure parts of the store: alignment, layout planning, the index and its checks."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sllm.store.format import (
    FileEntry,
    IndexFormatError,
    StoreIndex,
    TensorEntry,
    align_up,
    chunk_name,
    plan_layout,
)

pytestmark = pytest.mark.timeout(60)


def test_align_up() -> None:
    assert [align_up(n, 4096) for n in (0, 1, 4095, 4096, 4097)] == [0, 4096, 4096, 4096, 8192]
    assert align_up(5, 1) == 5
    with pytest.raises(ValueError, match="power of two"):
        align_up(5, 3000)


def test_plan_layout_packs_in_order_and_starts_a_chunk_when_one_is_full() -> None:
    sizes = [("a", 10), ("b", 5000), ("c", 0), ("d", 3000), ("e", 9000), ("f", 1)]
    placements, chunks = plan_layout(sizes, alignment=4096, chunk_bytes=12288)
    where = {p.name: (p.chunk, p.offset) for p in placements}
    assert where["a"] == (0, 0) and where["b"] == (0, 4096)  # b aligned up past a
    assert where["c"] == (0, 12288)  # an empty tensor fits even at the limit
    assert where["d"] == (1, 0)  # 12288 + 3000 would pass the limit
    assert where["e"] == (2, 0)  # 4096 + 9000 would too
    assert where["f"] == (3, 0)  # 12288 + 1 would too
    # Each file is padded to the alignment: whole-file reads stay aligned.
    assert chunks == [12288, 4096, 12288, 4096]
    assert [p.name for p in placements] == list("abcdef")


def test_a_tensor_larger_than_a_chunk_gets_a_file_of_its_own() -> None:
    placements, chunks = plan_layout([("small", 8), ("huge", 50_000), ("tail", 8)], 4096, 8192)
    assert [(p.chunk, p.offset) for p in placements] == [(0, 0), (1, 0), (2, 0)]
    assert chunks == [4096, 53248, 4096]


def test_plan_layout_refuses_nonsense() -> None:
    with pytest.raises(ValueError, match="placed twice"):
        plan_layout([("a", 1), ("a", 1)])
    with pytest.raises(ValueError, match="negative"):
        plan_layout([("a", -1)])
    with pytest.raises(ValueError, match="at least the alignment"):
        plan_layout([("a", 1)], alignment=4096, chunk_bytes=100)
    assert plan_layout([]) == ([], [])


@given(
    st.lists(st.integers(min_value=0, max_value=50_000), max_size=40),
    st.sampled_from([64, 4096]),
    st.sampled_from([4096, 16384, 65536]),
)
def test_layout_invariants(sizes: list[int], alignment: int, chunk_bytes: int) -> None:
    named = [(f"t{i}", n) for i, n in enumerate(sizes)]
    placements, chunks = plan_layout(named, alignment, chunk_bytes)
    assert [(p.name, p.nbytes) for p in placements] == named  # all of them, in order
    for p in placements:
        assert p.offset % alignment == 0
        assert p.offset + p.nbytes <= chunks[p.chunk]
        # Only a tensor alone in its chunk (empty ones aside) may pass the limit.
        alone = sum(q.chunk == p.chunk and q.nbytes > 0 for q in placements) == 1
        assert p.offset + p.nbytes <= chunk_bytes or (alone and p.offset == 0)
    for size in chunks:
        assert size % alignment == 0
    by_chunk: dict[int, list[tuple[int, int]]] = {}
    for p in placements:
        by_chunk.setdefault(p.chunk, []).append((p.offset, p.offset + p.nbytes))
    for spans in by_chunk.values():
        for (_, end), (start, _) in itertools.pairwise(spans):
            assert end <= start  # no overlap, in file order
    assert sorted(by_chunk) == list(range(len(chunks)))  # no empty chunk files


def _index() -> StoreIndex:
    return StoreIndex(
        algorithm="blake2b_128",
        model_class="LlamaForCausalLM",
        auto_class="AutoModelForCausalLM",
        alignment=4096,
        tensors=[
            TensorEntry("w", "float32", (4, 8), chunk_name(0), 0, 128),
            TensorEntry("b", "bfloat16", (3,), chunk_name(0), 4096, 6),
            TensorEntry("s", "int64", (), chunk_name(0), 8192, 8),
        ],
        chunks=[FileEntry(chunk_name(0), 12288, "ab" * 16, 1)],
        files=[FileEntry("config.json", 10, "cd" * 16, 2)],
        aliases={"lm_head.weight": "w"},
        source={"path": "/models/x"},
    )


def test_index_round_trips_through_json() -> None:
    index = _index()
    index.validate()
    again = StoreIndex.from_json(index.to_json())
    assert again == index
    assert again.nbytes == 128 + 6 + 8
    raw = json.loads(index.to_json())
    assert raw["format"] == "sllm-store" and raw["version"] == 1
    assert raw["tensors"][0] == {
        "name": "w",
        "dtype": "float32",
        "shape": [4, 8],
        "file": "chunk-00000.bin",
        "offset": 0,
        "nbytes": 128,
    }


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda t: [replace(t[0], offset=100), *t[1:]], "not aligned"),
        (lambda t: [replace(t[0], shape=(4, 9)), *t[1:]], "do not fit"),
        (lambda t: [replace(t[0], dtype="float128"), *t[1:]], "unknown dtype"),
        (lambda t: [replace(t[0], file="chunk-00009.bin"), *t[1:]], "no chunk file"),
        (lambda t: [*t[:2], replace(t[2], offset=12288)], "runs past the end"),
        (lambda t: [t[0], replace(t[1], offset=0), t[2]], "overlap"),
        (lambda t: [*t, t[0]], "stored twice"),
    ],
)
def test_validate_refuses_a_contradictory_index(change: object, message: str) -> None:
    index = _index()
    index.tensors = change(index.tensors)  # type: ignore[operator]
    with pytest.raises(IndexFormatError, match=message):
        StoreIndex.from_json(index.to_json())


def test_validate_refuses_an_alias_of_nothing() -> None:
    index = _index()
    index.aliases = {"lm_head.weight": "missing"}
    with pytest.raises(IndexFormatError, match="alias"):
        index.validate()
    index.aliases = {"w": "b"}  # an alias may not shadow a stored tensor
    with pytest.raises(IndexFormatError, match="alias"):
        index.validate()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{not json", "not JSON"),
        ("[1, 2]", "not an sllm store index"),
        ('{"format": "sllm-store", "version": 99}', "version 99"),
        ('{"format": "sllm-store", "version": 1, "tensors": []}', "malformed"),
    ],
)
def test_from_json_refuses_what_it_cannot_read(text: str, message: str) -> None:
    with pytest.raises(IndexFormatError, match=message):
        StoreIndex.from_json(text)


def test_the_pure_modules_pull_in_no_torch() -> None:
    code = (
        "import sys, sllm.store.format, sllm.store.integrity, sllm.store.catalog; "
        "print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
