"""How a peer fetch splits a stored copy's files into HTTP ranges."""

from __future__ import annotations

from sllm.store.format import FileEntry
from sllm.store.peer_fetch import parts


def entry(name: str, size: int) -> FileEntry:
    return FileEntry(name, size, "x", 0)


def test_every_byte_is_in_exactly_one_part_of_at_most_the_part_size() -> None:
    files = [entry("a", 10), entry("b", 0), entry("c", 3), entry("d/e.json", 8)]
    got = parts(files, 4)
    assert got == [
        ("a", 0, 3), ("a", 4, 7), ("a", 8, 9),
        ("c", 0, 2),
        ("d/e.json", 0, 3), ("d/e.json", 4, 7),
    ]  # fmt: skip
    for f in files:
        covered = [b for name, first, last in got if name == f.file for b in range(first, last + 1)]
        assert covered == list(range(f.size))
