"""Loading a stored model: chunk files read by several threads in large sequential
pieces, tensors made in place over the read bytes, a model skeleton without weights
filled with them.

CPU, three ways (``CpuMode``; ``benchmarks/load.py`` measures them):

* ``map`` (the default): each chunk file is mapped privately (copy-on-write) and
  several threads touch every page of it, so the load reads every byte (from disk if
  need be) and the first request finds nothing left to fault in. No copy at all: the
  tensors are views over the mapping, instances of one model on a worker share its
  pages, a write (none happens in inference) copies the page, and the tensors stay
  valid when the file is deleted. Chunk files are never rewritten in place (stores
  are replaced by rename), which is what makes a private mapping safe.
* ``read``: each chunk file is read by the threads straight into one anonymous
  buffer the model keeps, and every tensor is a view over it: one copy, page cache
  to process memory. The buffers may be given (``into``): a warm process's memory,
  faulted in before it was asked for the model (``sllm.store.arena``), so the load
  costs the copy alone.
* ``copy``: pieces are read into a small pool of reusable buffers and copied into one
  allocation per tensor (two copies; what loaders that own each tensor do).

CUDA: reader threads fill a pool of pinned host buffers and each issues an
asynchronous host-to-device copy on a side stream as soon as its piece is read, so
reading and copying overlap; a buffer goes back to the pool once its copy is done.
Tensors are views over one device buffer per chunk file.
"""

from __future__ import annotations

import bisect
import logging
import mmap
import os
import queue
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from sllm.store.format import FileEntry, StoreError, StoreIndex, TensorEntry
from sllm.store.page_cache import fully_cached, populate

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

CpuMode = Literal["map", "read", "copy"]


class StoreLoadError(StoreError):
    """A stored model cannot be loaded as it is (short file, mismatching skeleton)."""


class Unsupported(StoreLoadError):
    """A model this loader does not build (quantized, fp32-pinned modules): the caller
    loads it with transformers instead."""


@dataclass(frozen=True)
class ReadOptions:
    # Twice the CPUs this process may run on (reads block on page faults and IO), 2 to 8.
    threads: int = max(2, min(8, 2 * len(os.sched_getaffinity(0))))
    # Piece of a chunk file one thread reads at a time; also the pool's buffer size.
    segment_bytes: int = 64 << 20
    cpu_mode: CpuMode = "map"


class BufferPool:
    """A fixed set of equally sized host buffers handed out and given back; pinned
    when they feed a GPU, so host-to-device copies can be asynchronous."""

    def __init__(self, count: int, nbytes: int, *, pin: bool) -> None:
        import torch

        self.nbytes = nbytes
        self._free: queue.SimpleQueue[torch.Tensor] = queue.SimpleQueue()
        for _ in range(count):
            self._free.put(torch.empty(nbytes, dtype=torch.uint8, pin_memory=pin))

    @contextmanager
    def buffer(self) -> Iterator[torch.Tensor]:
        buf = self._free.get()
        try:
            yield buf
        finally:
            self._free.put(buf)


def _bytes_of(tensor: torch.Tensor) -> memoryview:
    """The bytes of a contiguous CPU uint8 tensor, writable in place."""
    array: Any = tensor.numpy()  # numpy arrays are buffers; mypy's py3.11 typeshed disagrees
    return memoryview(array)


def _read_exactly(fd: int, into: memoryview, offset: int, file: str) -> None:
    """pread until ``into`` is full; a file that ends early is a corrupt store."""
    done = 0
    while done < len(into):
        n = os.preadv(fd, [into[done:]], offset + done)
        if n == 0:
            raise StoreLoadError(f"{file} ends at {offset + done}, before its recorded size")
        done += n


def _segments(chunks: list[FileEntry], segment: int) -> list[tuple[int, int, int]]:
    """(chunk number, offset, length) of every piece, file by file in order, so the
    threads read each file front to back between them."""
    return [
        (i, start, min(segment, chunk.size - start))
        for i, chunk in enumerate(chunks)
        for start in range(0, chunk.size, segment)
    ]


@contextmanager
def _open_all(directory: Path, chunks: list[FileEntry]) -> Iterator[list[int]]:
    with ExitStack() as stack:
        fds = []
        for chunk in chunks:
            fd = os.open(directory / chunk.file, os.O_RDONLY)
            stack.callback(os.close, fd)
            # Tell the kernel the whole file is wanted: readahead runs ahead of the threads.
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
            fds.append(fd)
        yield fds


def _run(threads: int, jobs: list[tuple[int, int, int]], job: Callable[..., None]) -> None:
    with ThreadPoolExecutor(max(1, min(threads, len(jobs))), "sllm-load") as pool:
        # Consuming the results re-raises the first job's failure here.
        list(pool.map(lambda j: job(*j), jobs))


def _typed(buf: torch.Tensor, entry: TensorEntry) -> torch.Tensor:
    """The tensor ``entry`` describes, as a view over ``buf`` (its chunk's bytes)."""
    import torch

    raw = buf[entry.offset : entry.offset + entry.nbytes]
    return raw.view(getattr(torch, entry.dtype)).reshape(entry.shape)


def _chunk_tensors(index: StoreIndex) -> list[list[TensorEntry]]:
    number = {c.file: i for i, c in enumerate(index.chunks)}
    per_chunk: list[list[TensorEntry]] = [[] for _ in index.chunks]
    for t in index.tensors:
        per_chunk[number[t.file]].append(t)
    for entries in per_chunk:
        entries.sort(key=lambda t: t.offset)
    return per_chunk


def read_tensors(
    directory: Path,
    index: StoreIndex,
    device: str = "cpu",
    options: ReadOptions | None = None,
    into: list[torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """Every stored tensor by name, on ``device``, in the stored dtype. ``into``: one
    CPU uint8 buffer per chunk file, of its size, to read the chunks into (read mode)."""
    import torch

    opts = options or ReadOptions()
    target = torch.device(device)
    started = time.perf_counter()
    with _open_all(directory, index.chunks) as fds:
        if target.type == "cuda":
            tensors = _read_cuda(index, fds, target, opts)
        elif target.type == "cpu" and into is not None:
            tensors = _read_cpu_views(index, fds, opts, into)
        elif target.type == "cpu" and opts.cpu_mode == "map":
            tensors = _map_cpu(index, fds, opts)
        elif target.type == "cpu" and opts.cpu_mode == "read":
            tensors = _read_cpu_views(index, fds, opts)
        elif target.type == "cpu":
            tensors = _read_cpu_copy(index, fds, opts)
        else:
            raise Unsupported(f"device {device}")
    elapsed = time.perf_counter() - started
    log.debug(
        "read %.2f GB in %.2f s (%.2f GB/s) to %s",
        index.nbytes / 1e9,
        elapsed,
        index.nbytes / 1e9 / max(elapsed, 1e-9),
        device,
    )
    return tensors


def _read_cpu_views(
    index: StoreIndex, fds: list[int], opts: ReadOptions, into: list[Any] | None = None
) -> dict[str, Any]:
    import torch

    buffers = (
        into if into is not None else [torch.empty(c.size, dtype=torch.uint8) for c in index.chunks]
    )
    if [b.numel() for b in buffers] != [c.size for c in index.chunks]:
        raise ValueError("one buffer per chunk file, of its size")
    views = [_bytes_of(b) for b in buffers]

    def job(i: int, start: int, length: int) -> None:
        _read_exactly(fds[i], views[i][start : start + length], start, index.chunks[i].file)

    _run(opts.threads, _segments(index.chunks, opts.segment_bytes), job)
    number = {c.file: i for i, c in enumerate(index.chunks)}
    return {t.name: _typed(buffers[number[t.file]], t) for t in index.tensors}


def _map_cpu(index: StoreIndex, fds: list[int], opts: ReadOptions) -> dict[str, Any]:
    import numpy as np
    import torch

    def mapped(fd: int, chunk: FileEntry) -> mmap.mmap | None:
        if not chunk.size:
            return None  # mmap refuses an empty file
        try:
            return mmap.mmap(
                fd, chunk.size, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ | mmap.PROT_WRITE
            )
        except ValueError:  # shorter than recorded: past its end would lie SIGBUS
            raise StoreLoadError(f"{chunk.file} is shorter than its recorded size") from None

    maps = [mapped(fd, c) for fd, c in zip(fds, index.chunks, strict=True)]
    for m in maps:
        if m is not None:
            # Aggressive readahead: every page is wanted, in order.
            m.madvise(mmap.MADV_SEQUENTIAL)

    pages = [np.frombuffer(m, dtype=np.uint8) if m is not None else None for m in maps]
    cached = [fully_cached(fd, c.size) for fd, c in zip(fds, index.chunks, strict=True)]

    def job(i: int, start: int, length: int) -> None:
        array = pages[i]
        assert array is not None
        # A file wholly in the page cache is mapped without touching its pages: 4-5 ms
        # for 1.5 GB on the 2-core VM against 10-14 ms touched. Pages read from disk are
        # touched: on a VM the first access to a page just read can be slow (populated,
        # the first pass over 1.5 GB took 0.2-1.3 s in some runs), and that belongs to
        # the load, not to the first request. Touching reads one byte of each page: the
        # fault maps it (and its neighbours), reading it from disk first if need be.
        if cached[i] and populate(array.ctypes.data + start, length):
            return
        int(array[start : start + length : mmap.PAGESIZE].sum())  # numpy drops the GIL

    _run(opts.threads, _segments(index.chunks, opts.segment_bytes), job)
    for m in maps:
        if m is not None:
            # Sequential also marks pages as soon reclaimable: not what weights in use are.
            m.madvise(mmap.MADV_NORMAL)
    # The tensors hold the mappings alive (torch.frombuffer keeps its buffer).
    empty = torch.empty(0, dtype=torch.uint8)
    buffers = [empty if m is None else torch.frombuffer(m, dtype=torch.uint8) for m in maps]
    number = {c.file: i for i, c in enumerate(index.chunks)}
    return {t.name: _typed(buffers[number[t.file]], t) for t in index.tensors}


def _scatter(
    entries: list[TensorEntry],
    starts: list[int],
    start: int,
    piece: torch.Tensor,
    copy: Callable[[TensorEntry, int, torch.Tensor], None],
) -> None:
    """Hand each tensor overlapping the piece [start, start + len) of a chunk its part:
    ``copy(entry, byte offset inside the tensor, bytes)``."""
    end = start + piece.numel()
    i = max(0, bisect.bisect_right(starts, start) - 1)
    while i < len(entries) and entries[i].offset < end:
        t = entries[i]
        lo, hi = max(start, t.offset), min(end, t.offset + t.nbytes)
        if lo < hi:
            copy(t, lo - t.offset, piece[lo - start : hi - start])
        i += 1


def _read_cpu_copy(index: StoreIndex, fds: list[int], opts: ReadOptions) -> dict[str, Any]:
    import torch

    owned = {t.name: torch.empty(t.nbytes, dtype=torch.uint8) for t in index.tensors}
    per_chunk = _chunk_tensors(index)
    starts = [[t.offset for t in entries] for entries in per_chunk]
    threads = max(1, opts.threads)
    pool = BufferPool(threads, opts.segment_bytes, pin=False)

    def copy(t: TensorEntry, at: int, piece: torch.Tensor) -> None:
        owned[t.name][at : at + piece.numel()].copy_(piece)

    def job(i: int, start: int, length: int) -> None:
        with pool.buffer() as buf:
            _read_exactly(fds[i], _bytes_of(buf)[:length], start, index.chunks[i].file)
            _scatter(per_chunk[i], starts[i], start, buf[:length], copy)

    _run(threads, _segments(index.chunks, opts.segment_bytes), job)
    return {
        t.name: owned[t.name].view(getattr(torch, t.dtype)).reshape(t.shape) for t in index.tensors
    }


def _read_cuda(
    index: StoreIndex, fds: list[int], device: torch.device, opts: ReadOptions
) -> dict[str, Any]:
    import torch

    dest = [torch.empty(c.size, dtype=torch.uint8, device=device) for c in index.chunks]
    threads = max(1, opts.threads)
    # One buffer per thread: a thread holds its buffer from the read until its copy is
    # done, so more would sit idle; the copies of the others overlap its next read.
    pool = BufferPool(threads, opts.segment_bytes, pin=True)
    stream = torch.cuda.Stream(device)
    # dest was allocated on the current stream: the copies wait for what it queued there.
    stream.wait_stream(torch.cuda.current_stream(device))

    def job(i: int, start: int, length: int) -> None:
        with pool.buffer() as buf:
            _read_exactly(fds[i], _bytes_of(buf)[:length], start, index.chunks[i].file)
            with torch.cuda.stream(stream):  # the current stream is per thread
                dest[i][start : start + length].copy_(buf[:length], non_blocking=True)
                done = torch.cuda.Event()
                done.record(stream)
            done.synchronize()  # the buffer is reused only once the GPU has read it

    _run(threads, _segments(index.chunks, opts.segment_bytes), job)
    torch.cuda.current_stream(device).wait_stream(stream)
    number = {c.file: i for i, c in enumerate(index.chunks)}
    return {t.name: _typed(dest[number[t.file]], t) for t in index.tensors}


# -- the model ---------------------------------------------------------------------------


def empty_skeleton(auto_class: Any, config: Any, dtype: Any, trust_remote_code: bool) -> Any:
    """``auto_class`` built from ``config`` with its parameters on the meta device."""
    from accelerate import init_empty_weights
    from transformers.initialization import no_init_weights

    # no_init_weights: the random init of every meta parameter costs more than the read
    # of the weights (0.2 s for a 1 GB Llama); the values are replaced anyway.
    with init_empty_weights(include_buffers=False), no_init_weights():
        return auto_class.from_config(config, dtype=dtype, trust_remote_code=trust_remote_code)


def _skeleton(directory: Path, auto_class: Any, dtype: Any, trust_remote_code: bool) -> Any:
    """The model with its parameters on the meta device (no memory, no random init);
    buffers are real, so the non-persistent ones (rotary frequencies, position ids)
    are computed by the model's own code as they are in from_pretrained."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(directory, trust_remote_code=trust_remote_code)
    if getattr(config, "quantization_config", None):
        raise Unsupported("quantized checkpoints load through transformers")
    model = empty_skeleton(auto_class, config, dtype, trust_remote_code)
    import torch

    # from_pretrained keeps these modules in float32 under a half-precision dtype; the
    # skeleton would not, so such models take transformers' own path.
    if getattr(model, "_keep_in_fp32_modules_strict", None) and dtype != torch.float32:
        raise Unsupported("a model with float32-pinned modules")
    if getattr(model, "_keep_in_fp32_modules", None) and dtype == torch.float16:
        raise Unsupported("a model with float32-pinned modules")
    return model


def _fill(
    model: Any, tensors: dict[str, torch.Tensor], aliases: dict[str, str], device: Any
) -> None:
    """Put the stored tensors in place of the skeleton's parameters and persistent
    buffers. Names the skeleton ties (one Parameter under two names) stay one object,
    and so do names the index records as aliases of one stored tensor."""
    import torch

    expected = model.state_dict(keep_vars=True)
    stored = set(tensors) | set(aliases)
    missing, unexpected = expected.keys() - stored, stored - expected.keys()
    if missing or unexpected:
        raise StoreLoadError(
            f"the stored tensors do not match {type(model).__name__}: "
            f"missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}"
        )
    made: dict[str, Any] = {}  # stored name -> the new Parameter or buffer
    by_object: dict[int, Any] = {}  # id of the skeleton's tensor -> its replacement
    for name, old in expected.items():
        stored_name = aliases.get(name, name)
        new = by_object.get(id(old), made.get(stored_name))
        if new is None:
            value = tensors[stored_name]
            if value.dtype != old.dtype:  # the dtype asked for, as from_pretrained casts
                value = value.to(old.dtype)
            if value.device != torch.device(device):
                value = value.to(device)
            is_param = isinstance(old, torch.nn.Parameter)
            new = torch.nn.Parameter(value, requires_grad=old.requires_grad) if is_param else value
        made[stored_name] = by_object[id(old)] = new
        owner_name, _, attr = name.rpartition(".")
        owner = model.get_submodule(owner_name)
        if attr in owner._parameters:
            owner._parameters[attr] = new
        else:
            owner._buffers[attr] = new


def load_model(
    directory: Path,
    index: StoreIndex,
    auto_class: Any,
    *,
    dtype: Any,
    device: str = "cpu",
    trust_remote_code: bool = False,
    options: ReadOptions | None = None,
    into: list[torch.Tensor] | None = None,
) -> Any:
    """The model stored in ``directory``, in ``dtype`` on ``device``, in eval mode:
    what ``auto_class.from_pretrained`` returns for its source. ``into``: as for
    ``read_tensors``."""
    import torch
    from transformers import GenerationConfig

    started = time.perf_counter()
    model = _skeleton(directory, auto_class, dtype, trust_remote_code)
    if type(model).__name__ != index.model_class:
        built = type(model).__name__
        raise StoreLoadError(f"stored {index.model_class}, the config builds {built}")
    skeleton = time.perf_counter()
    tensors = read_tensors(directory, index, device, options=options, into=into)
    read = time.perf_counter()
    _fill(model, tensors, index.aliases, device)
    del tensors
    model.to(device)  # what is left on the CPU: the non-persistent buffers
    leftover = [n for n, p in [*model.named_parameters(), *model.named_buffers()] if p.is_meta]
    if leftover:
        raise StoreLoadError(f"not filled: {leftover[:5]}")
    if (
        getattr(model, "can_generate", lambda: False)()
        and (directory / "generation_config.json").is_file()
    ):
        model.generation_config = GenerationConfig.from_pretrained(directory)
    model.config._name_or_path = str(directory)
    model.eval()
    log.info(
        "loaded %s (%.2f GB) from the store in %.2f s (skeleton %.2f s, read %.2f s) to %s%s",
        index.model_class,
        index.nbytes / 1e9,
        time.perf_counter() - started,
        skeleton - started,
        read - skeleton,
        torch.device(device),
        " (the warm process's memory)" if into is not None else "",
    )
    return model
