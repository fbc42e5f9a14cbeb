"""The sllm checkpoint format: what lies in a stored model's directory, and where.

A stored model is one directory::

    index.json            this module's StoreIndex: every tensor's file, offset, size
    chunk-00000.bin ...   tensor bytes, each tensor at an aligned offset
    config.json ...       the source's other files (config, generation config,
                          tokenizer, custom code) copied beside them

Tensors are packed in state-dict order into a few large chunk files so that loading
is a handful of long sequential reads that threads can split, and each tensor starts
on an ``alignment`` boundary so it can be used in place as a view over the read
buffer (and so reads can use O_DIRECT-sized pieces). Everything here is pure: no
torch, no IO beyond (de)serialising JSON text.
"""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any

FORMAT = "sllm-store"
VERSION = 1
INDEX_NAME = "index.json"
# Page size: every tensor can be a view over a page-aligned read buffer, whatever its dtype.
DEFAULT_ALIGNMENT = 4096
# Large enough that a model is a few files read end to end, small enough that the
# files of one model spread over the reader threads and a re-check stays short.
DEFAULT_CHUNK_BYTES = 1 << 30

# Element sizes of the dtypes a state dict may hold, by torch's attribute name.
ITEMSIZE: dict[str, int] = {
    "float64": 8,
    "float32": 4,
    "float16": 2,
    "bfloat16": 2,
    "float8_e4m3fn": 1,
    "float8_e5m2": 1,
    "complex64": 8,
    "int64": 8,
    "int32": 4,
    "int16": 2,
    "int8": 1,
    "uint8": 1,
    "bool": 1,
}


class StoreError(RuntimeError):
    """A model cannot be stored or loaded soundly; callers fall back to transformers."""


class IndexFormatError(ValueError):
    """The index is not one this version reads, or contradicts itself."""


def align_up(offset: int, alignment: int) -> int:
    """The first multiple of ``alignment`` at or after ``offset``."""
    if alignment <= 0 or alignment & (alignment - 1):
        raise ValueError(f"alignment must be a power of two, not {alignment}")
    return (offset + alignment - 1) & -alignment


def chunk_name(number: int) -> str:
    return f"chunk-{number:05d}.bin"


@dataclass(frozen=True)
class Placement:
    """Where layout planning puts one tensor's bytes."""

    name: str
    chunk: int
    offset: int
    nbytes: int


def plan_layout(
    sizes: list[tuple[str, int]],
    alignment: int = DEFAULT_ALIGNMENT,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
) -> tuple[list[Placement], list[int]]:
    """Pack tensors, in the order given, into chunk files of at most ``chunk_bytes``
    (a tensor larger than that gets a file of its own); each starts at a multiple of
    ``alignment``. Returns the placements and each chunk file's size, padded to the
    alignment so that whole-file reads stay aligned too."""
    if chunk_bytes < alignment:
        raise ValueError("chunk_bytes must be at least the alignment")
    placements: list[Placement] = []
    chunk_sizes: list[int] = []
    used = 0  # bytes of the open chunk, tensors and padding, before its tail padding
    seen: set[str] = set()
    for name, nbytes in sizes:
        if nbytes < 0:
            raise ValueError(f"{name}: negative size")
        if name in seen:
            raise ValueError(f"{name}: placed twice")
        seen.add(name)
        offset = align_up(used, alignment)
        if not chunk_sizes or (used and offset + nbytes > chunk_bytes):
            if chunk_sizes:
                chunk_sizes[-1] = align_up(used, alignment)
            chunk_sizes.append(0)
            offset = 0
        placements.append(Placement(name, len(chunk_sizes) - 1, offset, nbytes))
        used = offset + nbytes
        chunk_sizes[-1] = used
    if chunk_sizes:
        chunk_sizes[-1] = align_up(used, alignment)
    return placements, chunk_sizes


@dataclass(frozen=True)
class TensorEntry:
    name: str
    dtype: str
    shape: tuple[int, ...]
    file: str
    offset: int
    nbytes: int


@dataclass(frozen=True)
class FileEntry:
    """A chunk file or a copied side file: its size and checksum, and its mtime as
    written, which lets the cheap check at load notice a rewritten file."""

    file: str
    size: int
    checksum: str
    mtime_ns: int


@dataclass
class StoreIndex:
    """The whole of ``index.json``."""

    algorithm: str  # checksum algorithm of every FileEntry
    model_class: str  # the class whose state dict this is, e.g. LlamaForCausalLM
    auto_class: str  # the transformers auto class it was loaded with
    alignment: int
    tensors: list[TensorEntry]
    chunks: list[FileEntry]
    files: list[FileEntry]
    # Tied weights: name -> the stored tensor it shares (one copy on disk, one in memory).
    aliases: dict[str, str] = field(default_factory=dict)
    source: dict[str, Any] = field(default_factory=dict)  # what it was made from, for people

    def to_json(self) -> str:
        body = {"format": FORMAT, "version": VERSION, **asdict(self)}
        return json.dumps(body, indent=1)

    @classmethod
    def from_json(cls, text: str) -> StoreIndex:
        try:
            raw = json.loads(text)
        except ValueError as exc:
            raise IndexFormatError(f"index is not JSON: {exc}") from None
        if not isinstance(raw, dict) or raw.get("format") != FORMAT:
            raise IndexFormatError("not an sllm store index")
        if raw.get("version") != VERSION:
            raise IndexFormatError(f"index version {raw.get('version')}, this sllm reads {VERSION}")
        try:
            index = cls(
                algorithm=str(raw["algorithm"]),
                model_class=str(raw["model_class"]),
                auto_class=str(raw["auto_class"]),
                alignment=int(raw["alignment"]),
                tensors=[
                    TensorEntry(**{**t, "shape": tuple(int(d) for d in t["shape"])})
                    for t in raw["tensors"]
                ],
                chunks=[FileEntry(**c) for c in raw["chunks"]],
                files=[FileEntry(**f) for f in raw["files"]],
                aliases={str(k): str(v) for k, v in raw.get("aliases", {}).items()},
                source=dict(raw.get("source", {})),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise IndexFormatError(f"malformed index: {exc!r}") from None
        index.validate()
        return index

    def validate(self) -> None:
        """Every tensor lies inside its chunk file, aligned, sized for its dtype and
        shape, without overlapping another; every alias names a stored tensor."""
        sizes = {c.file: c.size for c in self.chunks}
        spans: dict[str, list[tuple[int, int, str]]] = {name: [] for name in sizes}
        names: set[str] = set()
        for t in self.tensors:
            if t.name in names:
                raise IndexFormatError(f"{t.name} stored twice")
            names.add(t.name)
            if t.dtype not in ITEMSIZE:
                raise IndexFormatError(f"{t.name}: unknown dtype {t.dtype}")
            if t.nbytes != math.prod(t.shape) * ITEMSIZE[t.dtype]:
                raise IndexFormatError(f"{t.name}: {t.nbytes} bytes do not fit {t.dtype}{t.shape}")
            if t.file not in sizes:
                raise IndexFormatError(f"{t.name}: no chunk file {t.file}")
            if t.offset % self.alignment or t.offset < 0:
                raise IndexFormatError(f"{t.name}: offset {t.offset} not aligned")
            if t.offset + t.nbytes > sizes[t.file]:
                raise IndexFormatError(f"{t.name}: runs past the end of {t.file}")
            spans[t.file].append((t.offset, t.offset + t.nbytes, t.name))
        for file, ranges in spans.items():
            ranges.sort()
            for (_, end, name), (start, _, other) in itertools.pairwise(ranges):
                if start < end:
                    raise IndexFormatError(f"{name} and {other} overlap in {file}")
        for alias, target in self.aliases.items():
            if target not in names or alias in names:
                raise IndexFormatError(f"alias {alias} -> {target} does not name one stored tensor")

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)
