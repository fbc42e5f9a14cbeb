"""A worker's model cache in two tiers, below the GPU of a running instance:

* **disk**: the store under ``<storage>/store`` (see ``catalog``), kept under a size
  limit;
* **memory**: stored models whose pages the worker holds in RAM after their instance
  stopped: their chunk files mapped and locked (``mlock``) in the page cache, so the
  next start maps them without reading the disk, and the kernel never reclaims them
  meanwhile. A backend loads such a model from the same files as from disk (the
  page cache keeps its large pages, which a copy elsewhere, in tmpfs, lost: weights
  there made every forward pass slower) and nothing is held twice.

Both tiers evict the least recently used models first, never one that an instance on
this worker serves. A stored copy is named for its source directory, not for what was
deployed: the backend that loads it records the deployed source next to it
(``<copy>.use.json``) with the time, which is how the heartbeat can say which
deployed models a worker has, and how recent their use was.

Locking needs ``CAP_IPC_LOCK`` or a large enough ``RLIMIT_MEMLOCK``
(``ulimit -l``); without either the memory tier stays empty and says why once.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import logging
import mmap
import os
import shutil
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from sllm.store.integrity import read_index
from sllm.store.locking import locked

log = logging.getLogger(__name__)

Tier = Literal["memory", "disk"]
_USE_SUFFIX = ".use.json"
# A directory that is being written or deleted: never listed.
_TRANSIENT = (".partial", ".evicting")


@dataclass(frozen=True)
class Cached:
    """One stored model in one tier."""

    name: str  # the stored copy's directory name
    path: Path
    tier: Tier
    bytes: int
    sources: tuple[str, ...]  # what was deployed with it, as deployed
    last_used: float


# -- pure decisions ----------------------------------------------------------------------


def evictions(entries: Sequence[Cached], limit: int, pinned: set[str]) -> list[Cached]:
    """What to remove so that ``entries`` fit in ``limit`` bytes: the least recently
    used first, never a pinned name. Fewer than needed when the pinned ones alone
    exceed the limit."""
    total = sum(e.bytes for e in entries)
    out: list[Cached] = []
    for entry in sorted(entries, key=lambda e: (e.last_used, e.name)):
        if total <= limit:
            break
        if entry.name in pinned:
            continue
        out.append(entry)
        total -= entry.bytes
    return out


def to_restore(disk: Sequence[Cached], limit: int) -> list[Cached]:
    """What a memory tier of ``limit`` bytes holds when it starts: the most recently
    used stored models that fit, newest first, each source's newest copy only (what
    it would hold had it never stopped, as far as the record of use tells)."""
    out: list[Cached] = []
    seen: set[str] = set()
    room = limit
    for entry in sorted(disk, key=lambda e: (e.last_used, e.name), reverse=True):
        if seen.intersection(entry.sources):
            continue  # an older copy of a source a newer one serves
        seen.update(entry.sources)
        if entry.bytes <= room:
            out.append(entry)
            room -= entry.bytes
    return out


def fastest(entries: Iterable[Cached]) -> dict[str, Cached]:
    """Each deployed source at its fastest tier."""
    best: dict[str, Cached] = {}
    for entry in entries:
        for source in entry.sources:
            have = best.get(source)
            if have is None or (have.tier == "disk" and entry.tier == "memory"):
                best[source] = entry
    return best


# -- the record of use, written by the loading backend -------------------------------------


def _use_file(stored: Path) -> Path:
    return stored.with_name(stored.name + _USE_SUFFIX)


def _read_use(stored: Path) -> tuple[tuple[str, ...], float]:
    try:
        record = json.loads(_use_file(stored).read_text())
        return tuple(str(s) for s in record["sources"]), float(record["last_used"])
    except (OSError, ValueError, KeyError, TypeError):
        # Stored by `sllm store save`, or before uses were recorded: no deployed name.
        return (), 0.0


def record_use(stored: Path, source: str, now: float | None = None) -> None:
    """``source`` (as deployed) was loaded from ``stored`` now. Written atomically; a
    lost race between two loads loses one source name until the next load."""
    sources, _ = _read_use(stored)
    record = {"sources": sorted({*sources, source}), "last_used": now or time.time()}
    partial = _use_file(stored).with_suffix(f".{os.getpid()}.tmp")
    try:
        partial.write_text(json.dumps(record))
        partial.replace(_use_file(stored))
    except OSError as exc:  # a read-only store still loads
        log.warning("cannot record the use of %s: %s", stored, exc)


def _remove(path: Path) -> None:
    """Remove a stored copy so that no reader ever sees half of it: renamed away first.
    Files a backend has mapped stay valid until it unmaps them."""
    doomed = path.with_name(path.name + ".evicting")
    try:
        path.rename(doomed)
    except OSError:
        return  # gone already
    shutil.rmtree(doomed, ignore_errors=True)


def _dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.iterdir() if p.is_file())


# -- pages held in RAM -------------------------------------------------------------------

_LIBC = ctypes.CDLL(None, use_errno=True)
_LIBC.mmap.restype = ctypes.c_void_p
_LIBC.mmap.argtypes = [
    ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long,
]  # fmt: skip
_LIBC.mlock.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_LIBC.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_MAP_FAILED = ctypes.c_void_p(-1).value


class Pinned:
    """The chunk files of one stored model mapped shared and read-only, and locked: their
    pages stay in the page cache (read from disk now if they were not) until
    ``release``. Mapped by this process only to hold them; never read through."""

    def __init__(self, files: Sequence[Path]) -> None:
        self._maps: list[tuple[int, int]] = []
        try:
            for path in files:
                self._pin(path)
        except OSError:
            self.release()
            raise

    def _pin(self, path: Path) -> None:
        fd = os.open(path, os.O_RDONLY)
        try:
            size = os.fstat(fd).st_size
            if not size:
                return
            address = _LIBC.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
            if address in (None, _MAP_FAILED):
                raise OSError(ctypes.get_errno(), f"mmap of {path} failed")
        finally:
            os.close(fd)  # the mapping holds the file
        self._maps.append((address, size))
        if _LIBC.mlock(address, size) != 0:
            code = ctypes.get_errno()
            raise OSError(code, f"mlock of {path}: {os.strerror(code)}")

    def release(self) -> None:
        for address, size in self._maps:
            _LIBC.munmap(address, size)
        self._maps.clear()


def _chunk_files(stored: Path) -> list[Path]:
    return [stored / c.file for c in read_index(stored).chunks]


# -- the worker's side -------------------------------------------------------------------


class ModelCache:
    """Lists, pins and evicts stored models. Blocking (file IO, page-ins): the worker
    calls it in a thread, promotions and evictions one at a time; listing may run
    beside them (it only asks whether a model is pinned)."""

    def __init__(self, storage: Path, memory_limit: int, disk_limit: int | None = None) -> None:
        self.store_root = storage / "store"
        self.memory_limit = memory_limit
        # Host memory that sleeping instances hold their weights in: the fastest tier,
        # and within the same limit, so the memory tier keeps what is left.
        self.asleep_bytes = 0
        # None: keep a tenth of the disk free.
        self.disk_limit = disk_limit
        self._pinned: dict[str, Pinned] = {}
        self._cannot_lock = False
        self._short_of_disk = False

    def _disk(self) -> list[Cached]:
        if not self.store_root.is_dir():
            return []
        out = []
        for path in self.store_root.iterdir():
            if not path.is_dir() or path.name.endswith(_TRANSIENT):
                continue
            if not (path / "index.json").is_file():
                continue
            sources, last_used = _read_use(path)
            try:
                size = _dir_bytes(path)
            except OSError:
                continue  # removed while listed
            out.append(Cached(path.name, path, "disk", size, sources, last_used))
        return out

    def entries(self) -> list[Cached]:
        """Every stored model on disk, and again in memory for those held there."""
        disk = self._disk()
        return [*self._in_memory(disk), *disk]

    def _in_memory(self, disk: list[Cached]) -> list[Cached]:
        return [
            Cached(e.name, e.path, "memory", e.bytes, e.sources, e.last_used)
            for e in disk
            if e.name in self._pinned
        ]

    @staticmethod
    def _served(entries: Iterable[Cached], in_use: set[str]) -> set[str]:
        return {e.name for e in entries if in_use.intersection(e.sources)}

    def _disk_limit(self, disk: list[Cached]) -> int:
        if self.disk_limit is not None:
            return self.disk_limit
        usage = shutil.disk_usage(self.store_root)
        room = sum(e.bytes for e in disk) + usage.free - usage.total // 10
        # A disk that others filled past the tenth kept free would otherwise lose every
        # stored model, the one just stored too, and each cold start would write it
        # again: the most recently used one stays, and the operator hears why once.
        newest = max(disk, key=lambda e: (e.last_used, e.name))
        short = room < newest.bytes
        if short and not self._short_of_disk:
            log.warning(
                "less than a tenth of %s's disk is free: keeping only the most recently "
                "used stored model (set SLLM_DISK_CACHE_GB to choose the limit)",
                self.store_root,
            )
        self._short_of_disk = short
        return max(room, newest.bytes)

    @property
    def memory_room(self) -> int:
        """What the memory tier may hold: its limit less what sleeping instances hold."""
        return max(0, self.memory_limit - self.asleep_bytes)

    def _unpin(self, name: str) -> None:
        pinned = self._pinned.pop(name, None)
        if pinned is not None:
            pinned.release()

    def evict(self, in_use: set[str]) -> list[Cached]:
        """Bring both tiers within their limits; ``in_use``: sources an instance here
        serves. What was removed."""
        removed: list[Cached] = []
        disk = self._disk()
        memory = self._in_memory(disk)
        for entry in evictions(memory, self.memory_room, self._served(memory, in_use)):
            self._unpin(entry.name)
            removed.append(entry)
        limit = self._disk_limit(disk) if disk else 0
        for entry in evictions(disk, limit, self._served(disk, in_use)):
            # The lock a storing process holds: never delete what is being stored again.
            with locked(entry.path):
                self._unpin(entry.name)
                _remove(entry.path)
                with contextlib.suppress(OSError):
                    _use_file(entry.path).unlink()
            removed.append(entry)
        for entry in removed:
            log.info(
                "evicted %s from the %s tier (%.2f GB)", entry.name, entry.tier, entry.bytes / 1e9
            )
        return removed

    def keep_in_memory(self, source: str, in_use: set[str]) -> Path | None:
        """Hold the most recently used stored model of ``source`` in memory (the
        instance serving it has stopped), making room by eviction. None when there is
        nothing stored for it, it does not fit, or pages cannot be locked here."""
        disk = self._disk()
        stored = [e for e in disk if source in e.sources]
        if not stored or self.memory_room <= 0 or self._cannot_lock:
            return None
        latest = max(stored, key=lambda e: e.last_used)
        if latest.name in self._pinned:
            return latest.path
        if latest.bytes > self.memory_room:
            log.info("%s (%.2f GB) is larger than the memory tier", source, latest.bytes / 1e9)
            return None
        memory = self._in_memory(disk)
        for entry in evictions(
            memory, self.memory_room - latest.bytes, self._served(memory, in_use)
        ):
            self._unpin(entry.name)
        return latest.path if self._pin(latest) else None

    def _pin(self, entry: Cached) -> bool:
        """Lock ``entry``'s pages in memory; False (logged) when they cannot be."""
        started = time.monotonic()
        try:
            self._pinned[entry.name] = Pinned(_chunk_files(entry.path))
        except (OSError, ValueError) as exc:  # ValueError: an unreadable index
            # This process may not lock this much.
            if isinstance(exc, OSError) and exc.errno in (errno.EPERM, errno.EAGAIN, errno.ENOMEM):
                self._cannot_lock = True
                log.warning(
                    "no memory tier: locking pages failed (%s); give the worker CAP_IPC_LOCK "
                    "or raise its `ulimit -l`",
                    exc,
                )
            else:
                log.warning("cannot hold %s in memory: %s", entry.name, exc)
            return False
        log.info(
            "holding %s in memory (%.2f GB, %.2f s)",
            ", ".join(entry.sources) or entry.name,
            entry.bytes / 1e9,
            time.monotonic() - started,
        )
        return True

    def restore(self) -> list[Cached]:
        """When the worker starts: hold in memory again the most recently used stored
        models that fit (``to_restore``), so that a restarted worker's hot models start
        from memory, not disk. What is held."""
        held: list[Cached] = []
        for entry in to_restore(self._disk(), self.memory_room):
            if self._cannot_lock:
                break
            if entry.name not in self._pinned and self._pin(entry):
                held.append(entry)
        return held

    def close(self) -> None:
        for name in list(self._pinned):
            self._unpin(name)
