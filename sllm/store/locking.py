"""One process at a time writes or deletes a stored model: a lock file beside it,
released by the kernel when its holder dies."""

from __future__ import annotations

import contextlib
import fcntl
from collections.abc import Callable, Iterator
from pathlib import Path


@contextlib.contextmanager
def locked(target: Path, while_waiting: Callable[[], None] | None = None) -> Iterator[None]:
    """``while_waiting`` runs when another process holds the lock, before this one
    waits for it: work that would come after the wait anyway, done meanwhile."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.with_name(target.name + ".lock"), "a") as f:
        if while_waiting is not None and not _taken_at_once(f.fileno()):
            while_waiting()
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)  # held already if taken at once
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def _taken_at_once(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True
