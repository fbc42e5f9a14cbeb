"""A worker's model cache in two tiers, below the GPU of a running instance:

* **disk**: the store under ``<storage>/store`` (see ``catalog``), kept under a size
  limit;
* **memory**: copies of stored models in a RAM-backed directory (tmpfs, ``/dev/shm``
  by default), made when an instance of the model stops, so that its next start maps
  its weights from RAM instead of reading them from disk. A tmpfs file outlives the
  backend that loaded it, and the loader maps it privately: the weights are never
  copied again.

Both tiers evict the least recently used models first, never one that an instance on
this worker serves. A stored copy is named for its source directory, not for what was
deployed: the backend that loads it records the deployed source next to it
(``<copy>.use.json``) with the time, which is how the heartbeat can say which
deployed models a worker has, and how recent their use was.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from sllm.store.integrity import check_directory
from sllm.store.locking import locked

log = logging.getLogger(__name__)

Tier = Literal["memory", "disk"]
# Set by the worker for its backends: the memory tier's directory.
MEMORY_ENV = "SLLM_MEMORY_CACHE"
_USE_SUFFIX = ".use.json"
# A directory that is being written or deleted: never listed.
_TRANSIENT = (".partial", ".evicting")


@dataclass(frozen=True)
class Cached:
    """One stored model in one tier."""

    name: str  # the stored copy's directory name, the same in both tiers
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


def memory_copy(memory_root: Path, stored: Path) -> Path | None:
    """The memory tier's copy of the stored model ``stored``, when there is a sound one.
    An unsound copy is removed: the caller loads from disk instead."""
    copy = memory_root / stored.name
    if not (copy / "index.json").is_file():
        return None
    index, problems = check_directory(copy, "quick")
    if index is not None and not problems:
        return copy
    log.warning("memory copy %s is unsound (%s): removing it", copy, problems)
    _remove(copy)
    return None


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


# -- the worker's side -------------------------------------------------------------------


def default_memory_root(storage: Path) -> Path | None:
    """A directory on /dev/shm of this user's, one per storage path; None without it."""
    shm = Path("/dev/shm")
    if not shm.is_dir():
        return None
    key = hashlib.sha256(str(storage.resolve()).encode()).hexdigest()[:12]
    return shm / f"sllm-{os.getuid()}" / key


class ModelCache:
    """Lists, promotes and evicts stored models. Blocking (file IO and copies): the
    worker calls it in a thread."""

    def __init__(
        self,
        storage: Path,
        memory_root: Path | None,
        memory_limit: int,
        disk_limit: int | None = None,
    ) -> None:
        self.store_root = storage / "store"
        self.memory_root = memory_root if memory_limit > 0 else None
        self.memory_limit = memory_limit
        # None: keep a tenth of the disk free.
        self.disk_limit = disk_limit

    def _list(self, root: Path | None, tier: Tier) -> list[Cached]:
        if root is None or not root.is_dir():
            return []
        out = []
        for path in root.iterdir():
            if not path.is_dir() or path.name.endswith(_TRANSIENT):
                continue
            if not (path / "index.json").is_file():
                continue
            # Uses are recorded beside the disk copy, for both tiers.
            sources, last_used = _read_use(self.store_root / path.name)
            try:
                size = _dir_bytes(path)
            except OSError:
                continue  # removed while listed
            out.append(Cached(path.name, path, tier, size, sources, last_used))
        return out

    def entries(self) -> list[Cached]:
        return [*self._list(self.memory_root, "memory"), *self._list(self.store_root, "disk")]

    def _pinned(self, entries: Iterable[Cached], in_use: set[str]) -> set[str]:
        return {e.name for e in entries if in_use.intersection(e.sources)}

    def _disk_limit(self, stored_bytes: int) -> int:
        if self.disk_limit is not None:
            return self.disk_limit
        usage = shutil.disk_usage(self.store_root)
        return stored_bytes + usage.free - usage.total // 10

    def evict(self, in_use: set[str]) -> list[Cached]:
        """Bring both tiers within their limits; ``in_use``: sources an instance here
        serves. What was removed."""
        removed: list[Cached] = []
        memory = self._list(self.memory_root, "memory")
        for entry in evictions(memory, self.memory_limit, self._pinned(memory, in_use)):
            _remove(entry.path)
            removed.append(entry)
        disk = self._list(self.store_root, "disk")
        limit = self._disk_limit(sum(e.bytes for e in disk)) if disk else 0
        for entry in evictions(disk, limit, self._pinned(disk, in_use)):
            # The lock a storing process holds: never delete what is being stored again.
            with locked(entry.path):
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
        """Copy the most recently used stored model of ``source`` into the memory tier
        (the instance serving it has stopped), making room by eviction. None when there
        is no memory tier, nothing stored for it, or it does not fit."""
        if self.memory_root is None:
            return None
        stored = [e for e in self._list(self.store_root, "disk") if source in e.sources]
        if not stored:
            return None
        latest = max(stored, key=lambda e: e.last_used)
        target = self.memory_root / latest.name
        if (target / "index.json").is_file():
            return target
        if latest.bytes > self.memory_limit:
            log.info("%s (%.2f GB) is larger than the memory tier", source, latest.bytes / 1e9)
            return None
        memory = self._list(self.memory_root, "memory")
        room = self.memory_limit - latest.bytes
        pinned = self._pinned(memory, in_use)
        for entry in evictions(memory, room, pinned):
            _remove(entry.path)
        self.memory_root.mkdir(parents=True, exist_ok=True)
        if shutil.disk_usage(self.memory_root).free < latest.bytes:
            log.warning("no room in %s for %s", self.memory_root, latest.name)
            return None
        partial = target.with_name(f"{target.name}.partial")
        shutil.rmtree(partial, ignore_errors=True)
        started = time.monotonic()
        try:
            shutil.copytree(latest.path, partial)
            partial.rename(target)
        except OSError as exc:
            log.warning("cannot keep %s in memory: %s", latest.name, exc)
            shutil.rmtree(partial, ignore_errors=True)
            return None
        log.info(
            "kept %s in the memory tier (%.2f GB in %.2f s)",
            source,
            latest.bytes / 1e9,
            time.monotonic() - started,
        )
        return target
