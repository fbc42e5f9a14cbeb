"""Storing a newly deployed model before its first start, when the head asks: ``sllm
store save`` in a child process of the worker (converting a model is CPU-heavy Python,
kept off the worker's event loop), one per source at a time, each owned, bounded in
time and reaped."""

from __future__ import annotations

import asyncio
import logging
import os
import re
from collections.abc import Callable
from pathlib import Path

from sllm.client.procs import backend_environment, die_with_parent, kill_and_reap, open_log
from sllm.store.catalog import save_command

log = logging.getLogger(__name__)

# Downloading and converting a large model takes long; far longer is a hang.
STORE_TIMEOUT = 3600.0


class StoreAhead:
    def __init__(self, storage: Path, log_dir: Path, on_stored: Callable[[], None]) -> None:
        self._storage = storage
        self._log_dir = log_dir
        self._on_stored = on_stored
        self._running: dict[str, asyncio.Task[None]] = {}

    def storing(self) -> list[str]:
        return sorted(self._running)

    def request(
        self, source: str, task: str, trust_remote_code: bool, onnx_precision: str | None = None
    ) -> bool:
        """Start storing ``source`` (converted to ONNX at ``onnx_precision``, when given);
        False when it is being stored so already."""
        copy = source if onnx_precision is None else f"{source} (onnx {onnx_precision})"
        if copy in self._running:
            return False
        argv = save_command(source, self._storage, task, trust_remote_code, onnx_precision)
        job = asyncio.create_task(self._store(copy, argv))
        self._running[copy] = job
        job.add_done_callback(lambda _: self._running.pop(copy, None))
        return True

    async def _store(self, source: str, argv: list[str]) -> None:
        log_path = self._log_dir / f"store-{re.sub(r'[^A-Za-z0-9._-]', '_', source)[:100]}.log"
        log_file = await asyncio.to_thread(open_log, log_path)
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log_file,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=die_with_parent(os.getpid()),
                env=backend_environment(),
            )
        except OSError as exc:
            log.warning("cannot store %s ahead: %s", source, exc)
            return
        finally:
            log_file.close()
        log.info("storing %s ahead of its first start (pid %d, log %s)", source, proc.pid, log_path)
        try:
            code = await asyncio.wait_for(proc.wait(), STORE_TIMEOUT)
        except (TimeoutError, asyncio.CancelledError) as exc:
            await kill_and_reap(proc)
            if isinstance(exc, asyncio.CancelledError):
                raise
            log.warning("storing %s took over %.0f s: stopped", source, STORE_TIMEOUT)
            return
        if code == 0:
            log.info("stored %s ahead of its first start", source)
            self._on_stored()
        else:
            log.warning("storing %s failed (exit %d): see %s", source, code, log_path)

    async def close(self) -> None:
        jobs = list(self._running.values())
        for job in jobs:
            job.cancel()
        await asyncio.gather(*jobs, return_exceptions=True)
