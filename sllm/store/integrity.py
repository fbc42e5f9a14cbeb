"""Checksums of a stored model's files, and the checks that decide it may be served.

Two levels, because hashing costs about as much as loading itself:

* ``quick`` (every load): the index parses and is self-consistent, every file exists
  with the size it was written with, and a file whose mtime changed since it was
  written is hashed in full. That catches a truncated or missing file, a half-copied
  directory and a file rewritten by any tool, in a few stat calls.
* ``full`` (at ingest, ``sllm store verify``, or ``verify="full"``): every file is
  hashed and compared, which also catches corruption that left size and mtime alone.

Checksums are xxh3-128 when the ``xxhash`` package is installed, else BLAKE2b-128
(hashlib, always there); the index names the one it used.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal

from sllm.store.format import INDEX_NAME, FileEntry, IndexFormatError, StoreIndex

Verify = Literal["quick", "full"]

_READ_BYTES = 8 << 20


def preferred_algorithm() -> str:
    return "xxh3_128" if importlib.util.find_spec("xxhash") is not None else "blake2b_128"


def new_hasher(algorithm: str) -> Any:
    """A hashlib-like object (update, hexdigest) for ``algorithm``."""
    if algorithm == "blake2b_128":
        return hashlib.blake2b(digest_size=16)
    if algorithm == "xxh3_128":
        try:
            import xxhash
        except ImportError:
            raise UnverifiableError(
                "this store was written with xxh3_128 checksums: pip install xxhash"
            ) from None
        return xxhash.xxh3_128()
    raise UnverifiableError(f"unknown checksum algorithm {algorithm}")


class UnverifiableError(RuntimeError):
    """The checksums cannot be computed here (an algorithm this install lacks)."""


def file_checksum(path: Path, algorithm: str) -> str:
    hasher = new_hasher(algorithm)
    buffer = bytearray(_READ_BYTES)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buffer):
            hasher.update(view[:n])  # hashlib drops the GIL for large updates
    return str(hasher.hexdigest())


def entry_for(path: Path, algorithm: str, checksum: str | None = None) -> FileEntry:
    """The index entry of a file just written (its checksum computed if not given)."""
    stat = path.stat()
    return FileEntry(
        file=path.name,
        size=stat.st_size,
        checksum=checksum if checksum is not None else file_checksum(path, algorithm),
        mtime_ns=stat.st_mtime_ns,
    )


def read_index(directory: Path) -> StoreIndex:
    """The directory's index; OSError when it has none, IndexFormatError when it is bad."""
    return StoreIndex.from_json((directory / INDEX_NAME).read_text())


def _hash_all(directory: Path, entries: Iterable[FileEntry], algorithm: str) -> list[str]:
    """Problems found by hashing ``entries`` in full, several files at a time."""
    todo = list(entries)
    if not todo:
        return []

    def one(entry: FileEntry) -> str | None:
        try:
            got = file_checksum(directory / entry.file, algorithm)
        except OSError as exc:
            return f"{entry.file}: {exc.strerror or exc}"
        return None if got == entry.checksum else f"{entry.file}: checksum mismatch"

    workers = min(len(todo), os.cpu_count() or 1, 8)
    with ThreadPoolExecutor(workers, thread_name_prefix="sllm-verify") as pool:
        return [p for p in pool.map(one, todo) if p is not None]


def check(directory: Path, index: StoreIndex, verify: Verify = "quick") -> list[str]:
    """What is wrong with the files of ``directory`` against ``index``; empty when it
    may be loaded. See the module docstring for what each level checks."""
    problems: list[str] = []
    to_hash: list[FileEntry] = []
    for entry in [*index.chunks, *index.files]:
        try:
            stat = (directory / entry.file).stat()
        except OSError:
            problems.append(f"{entry.file}: missing")
            continue
        if stat.st_size != entry.size:
            problems.append(f"{entry.file}: {stat.st_size} bytes, {entry.size} written")
        elif verify == "full" or stat.st_mtime_ns != entry.mtime_ns:
            to_hash.append(entry)
    if problems:
        return problems  # no point hashing a model already known to be bad
    return _hash_all(directory, to_hash, index.algorithm)


def check_directory(
    directory: Path, verify: Verify = "quick"
) -> tuple[StoreIndex | None, list[str]]:
    """The index and the problems of a stored model's directory (an absent or
    unreadable index is a problem, not an exception)."""
    try:
        index = read_index(directory)
    except FileNotFoundError:
        return None, ["not stored"]
    except (OSError, IndexFormatError) as exc:
        return None, [f"{INDEX_NAME}: {exc}"]
    try:
        return index, check(directory, index, verify)
    except UnverifiableError as exc:  # stored again, with an algorithm this install has
        return index, [str(exc)]
