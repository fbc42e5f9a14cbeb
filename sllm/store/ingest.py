"""Writing a model into the sllm checkpoint format, atomically.

The state dict comes from transformers' own ``from_pretrained`` of the source (in the
checkpoint's dtype), so every way a checkpoint can be laid out (safetensors or .bin,
sharded, renamed keys, dequantized GGUF) is handled by the code that defines the
model, and the stored names are exactly the loaded model's.

Everything is written into ``<target>.partial``: chunk files and side files are
fsynced, all checksums are verified by reading the files back, the index is written
last, and only then is the directory renamed to ``<target>``. A crash at any point
leaves at most a ``.partial`` directory, which no loader reads and the next ingest
removes.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from sllm.store.format import (
    DEFAULT_ALIGNMENT,
    DEFAULT_CHUNK_BYTES,
    INDEX_NAME,
    FileEntry,
    StoreError,
    StoreIndex,
    TensorEntry,
    chunk_name,
    plan_layout,
)
from sllm.store.integrity import check, entry_for, new_hasher, preferred_algorithm
from sllm.store.tokenizer_config import quicker_copy

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

# Files of a model directory that are weights (the store has its own copy) or that
# point at them; everything else (config, tokenizer, custom code, sentence-transformers
# modules) is copied beside the chunk files, the tokenizer config made quicker to load
# (tokenizer_config.py).
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".h5", ".msgpack", ".onnx")
_WEIGHT_INDEXES = (".safetensors.index.json", ".bin.index.json")


class IngestError(StoreError):
    """The written files did not read back as written."""


@dataclass(frozen=True)
class Layout:
    alignment: int = DEFAULT_ALIGNMENT
    chunk_bytes: int = DEFAULT_CHUNK_BYTES


def partial_dir(target: Path) -> Path:
    return target.with_name(target.name + ".partial")


def side_files(source: Path) -> list[Path]:
    """The source's non-weight files, relative to it (hidden ones skipped)."""
    found = []
    for path in sorted(source.rglob("*")):
        relative = path.relative_to(source)
        if any(part.startswith(".") for part in relative.parts) or not path.is_file():
            continue
        name = path.name
        if name.endswith(_WEIGHT_SUFFIXES) or name.endswith(_WEIGHT_INDEXES):
            continue
        found.append(relative)
    return found


def _stored_tensors(
    state: dict[str, torch.Tensor],
) -> tuple[list[tuple[str, torch.Tensor]], dict[str, str]]:
    """The tensors to write, one per distinct tensor, and the names that share one
    (tied weights: the same storage, offset, shape and strides)."""
    first: dict[tuple[Any, ...], str] = {}
    unique: list[tuple[str, torch.Tensor]] = []
    aliases: dict[str, str] = {}
    for name, tensor in state.items():
        key = (
            tensor.device,
            tensor.untyped_storage().data_ptr(),
            tensor.storage_offset(),
            tuple(tensor.shape),
            tuple(tensor.stride()),
            tensor.dtype,
        )
        if tensor.numel() and key in first:
            aliases[name] = first[key]
        else:
            first[key] = name
            unique.append((name, tensor))
    return unique, aliases


def _raw_bytes(tensor: torch.Tensor) -> memoryview:
    import torch

    flat = tensor.detach().to("cpu").contiguous().reshape(-1)
    array: Any = flat.view(torch.uint8).numpy()  # a buffer; mypy's py3.11 typeshed disagrees
    return memoryview(array)


def _write_all(f: BinaryIO, data: memoryview | bytes, hasher: Any) -> None:
    hasher.update(data)
    view = memoryview(data)
    while view:  # a raw write may take less than it was given
        n = f.write(view)
        view = view[n or 0 :]


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_chunks(
    partial: Path, tensors: list[tuple[str, torch.Tensor]], layout: Layout, algorithm: str
) -> tuple[list[TensorEntry], list[FileEntry]]:
    by_name = dict(tensors)
    sizes = [(name, t.numel() * t.element_size()) for name, t in tensors]
    placements, chunk_sizes = plan_layout(sizes, layout.alignment, layout.chunk_bytes)
    entries: list[TensorEntry] = []
    chunks: list[FileEntry] = []
    for number, size in enumerate(chunk_sizes):
        path = partial / chunk_name(number)
        hasher = new_hasher(algorithm)
        with open(path, "wb", buffering=0) as f:
            at = 0
            for p in (p for p in placements if p.chunk == number):
                _write_all(f, bytes(p.offset - at), hasher)  # alignment padding
                _write_all(f, _raw_bytes(by_name[p.name]), hasher)
                at = p.offset + p.nbytes
                t = by_name[p.name]
                dtype = str(t.dtype).removeprefix("torch.")
                shape = tuple(t.shape)
                entries.append(TensorEntry(p.name, dtype, shape, path.name, p.offset, p.nbytes))
            _write_all(f, bytes(size - at), hasher)
            os.fsync(f.fileno())
        chunks.append(entry_for(path, algorithm, hasher.hexdigest()))
    return entries, chunks


def _copy_side_file(source: Path, relative: Path, partial: Path, algorithm: str) -> FileEntry:
    copied = partial / relative
    copied.parent.mkdir(parents=True, exist_ok=True)
    quicker = quicker_copy(source / relative)
    if quicker is None:
        shutil.copyfile(source / relative, copied)  # a hub snapshot's symlink: its content
    else:
        copied.write_text(quicker, encoding="utf-8")
    with open(copied, "rb") as f:
        os.fsync(f.fileno())
    entry = entry_for(copied, algorithm)
    return FileEntry(relative.as_posix(), entry.size, entry.checksum, entry.mtime_ns)


def write_store(
    state: dict[str, torch.Tensor],
    source: Path | None,
    target: Path,
    *,
    model_class: str,
    auto_class: str,
    layout: Layout | None = None,
    provenance: dict[str, Any] | None = None,
) -> StoreIndex:
    """Write ``state`` (and ``source``'s side files) as a stored model at ``target``,
    replacing whatever is there, atomically."""
    started = time.monotonic()
    algorithm = preferred_algorithm()
    partial = partial_dir(target)
    shutil.rmtree(partial, ignore_errors=True)  # a crashed earlier attempt
    partial.mkdir(parents=True)
    tensors, aliases = _stored_tensors(state)
    entries, chunks = _write_chunks(partial, tensors, layout or Layout(), algorithm)
    files = []
    if source is not None:
        files = [_copy_side_file(source, r, partial, algorithm) for r in side_files(source)]
    index = StoreIndex(
        algorithm=algorithm,
        model_class=model_class,
        auto_class=auto_class,
        alignment=(layout or Layout()).alignment,
        tensors=entries,
        chunks=chunks,
        files=files,
        aliases=aliases,
        source=provenance or {},
    )
    index.validate()
    problems = check(partial, index, "full")  # every byte read back against its checksum
    if problems:
        raise IngestError(f"{target.name}: written files do not read back: {problems}")
    commit(partial, target, index)
    log.info(
        "stored %s: %.2f GB in %d chunk file(s) in %.1f s at %s",
        model_class,
        index.nbytes / 1e9,
        len(chunks),
        time.monotonic() - started,
        target,
    )
    return index


def commit(partial: Path, target: Path, index: StoreIndex) -> None:
    """Make ``partial`` (its files written, synced and verified against ``index``) the
    stored copy at ``target``: the index written last, then one rename."""
    (partial / INDEX_NAME).write_text(index.to_json())
    with open(partial / INDEX_NAME, "rb") as f:
        os.fsync(f.fileno())
    for directory in {partial, *(partial / d for d in _side_dirs(index.files))}:
        _fsync_dir(directory)
    if target.exists():  # a corrupt or stale copy: out of the way first, then gone
        stale = target.with_name(f"{target.name}.stale-{os.getpid()}")
        target.rename(stale)
        shutil.rmtree(stale, ignore_errors=True)
    partial.rename(target)  # the commit point
    _fsync_dir(target.parent)


def _side_dirs(files: list[FileEntry]) -> set[str]:
    """Sub-directories holding side files (their entries must reach the disk too)."""
    return {str(Path(f.file).parent) for f in files if Path(f.file).parent != Path(".")}


def ingest(
    source: Path,
    target: Path,
    auto_class: Any,
    *,
    trust_remote_code: bool = False,
    layout: Layout | None = None,
) -> StoreIndex:
    """Load ``source`` once with ``auto_class.from_pretrained`` in its own dtype and
    store it at ``target``."""
    import transformers

    log.info("storing %s in the sllm format (once) at %s", source, target)
    model = auto_class.from_pretrained(
        source, dtype="auto", trust_remote_code=trust_remote_code, device_map=None
    )
    state = model.state_dict()
    provenance = {"path": str(source), "transformers": transformers.__version__}
    return write_store(
        state,
        source,
        target,
        model_class=type(model).__name__,
        auto_class=auto_class.__name__,
        layout=layout,
        provenance=provenance,
    )
