"""The store's lock: one writer at a time, and work done while waiting for it."""

from __future__ import annotations

import threading
from pathlib import Path

from sllm.store.locking import locked


def test_work_is_done_while_another_holder_has_the_lock_and_not_when_it_is_free(
    tmp_path: Path,
) -> None:
    target = tmp_path / "model"
    events: list[str] = []
    held = threading.Event()
    release = threading.Event()

    def holder() -> None:  # another open file: flock treats it as another process
        with locked(target):
            held.set()
            release.wait(10)
            events.append("released")

    def meanwhile() -> None:
        events.append("meanwhile")
        release.set()

    thread = threading.Thread(target=holder)
    thread.start()
    assert held.wait(10)
    with locked(target, meanwhile):
        events.append("locked")
    thread.join(10)
    assert events == ["meanwhile", "released", "locked"]

    events.clear()
    with locked(target, meanwhile):  # free: nothing to wait for, nothing done
        events.append("locked")
    assert events == ["locked"]
