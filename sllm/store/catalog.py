"""Where a model's stored copy lives under the worker's storage path, making sure it
is there and sound before it is loaded, and the one call the transformers backend
makes instead of ``from_pretrained``.

``<storage>/store/<name>-<key>``: the key hashes the source directory's path, the
size and mtime of each of its files and the auto class the model is loaded with, so
a changed source is stored again. Processes that start the same model at once take
turns through a lock file; the first stores it, the others find it stored.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from sllm.store import arena
from sllm.store.format import VERSION, StoreError, StoreIndex
from sllm.store.ingest import ingest
from sllm.store.integrity import Verify, check_directory
from sllm.store.loader import Unsupported, load_model
from sllm.store.locking import locked
from sllm.store.peer_fetch import TOKEN_ENV, PeerFetchError, fetch, peers_from_env
from sllm.store.tiers import record_use

log = logging.getLogger(__name__)

Task = Literal["auto", "generate", "embed"]


__all__ = ["StoreError", "ensure_stored", "load_pretrained", "save", "store_dir", "verify"]


def store_root(storage: Path) -> Path:
    return storage / "store"


def _label(source: Path) -> str:
    # A hub snapshot is .../models--owner--name/snapshots/<commit>: name it for the repo.
    name = source.parts[-3] if source.parent.name == "snapshots" else source.name
    return re.sub(r"[^\w.-]", "_", name)[:80] or "model"


def store_dir(source: Path, storage: Path, auto_class: str) -> Path:
    """Where ``source``, loaded with ``auto_class``, is stored under ``storage``."""
    source = source.resolve()
    files = [
        (p.relative_to(source).as_posix(), p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(source.rglob("*"))
        if p.is_file() and not any(s.startswith(".") for s in p.relative_to(source).parts)
    ]
    identity = {"version": VERSION, "source": str(source), "class": auto_class, "files": files}
    key = hashlib.sha256(json.dumps(identity).encode()).hexdigest()[:16]
    return store_root(storage) / f"{_label(source)}-{key}"


def ensure_stored(
    source: Path,
    storage: Path,
    auto_class: Any,
    *,
    trust_remote_code: bool = False,
    verify: Verify = "quick",
    deployed: str | None = None,
    while_waiting: Callable[[], None] | None = None,
) -> tuple[Path, StoreIndex]:
    """The stored copy of ``source`` and its index, checked at level ``verify``;
    stored now when absent, and stored again when the copy there fails the check:
    fetched from a peer that holds ``deployed`` (the name it was deployed as) when the
    worker named any (``SLLM_STORE_PEERS``), else ingested from ``source``.
    ``while_waiting``: as for ``locked``."""
    target = store_dir(source, storage, auto_class.__name__)
    index, problems = check_directory(target, verify)
    if index is not None and not problems:
        return target, index
    with locked(target, while_waiting):
        index, problems = check_directory(target, verify)  # stored while we waited?
        if index is not None and not problems:
            return target, index
        if problems != ["not stored"]:
            log.warning("stored copy %s is unsound (%s): storing it again", target, problems)
        if deployed is None or not _fetched(deployed, auto_class.__name__, target):
            ingest(source, target, auto_class, trust_remote_code=trust_remote_code)
        index, problems = check_directory(target, "quick")
        if index is None or problems:
            raise StoreError(f"{target} does not verify right after storing: {problems}")
        return target, index


def _fetched(deployed: str, auto_class: str, target: Path) -> bool:
    """Whether a peer the worker named gave ``target`` a sound copy of ``deployed``."""
    for peer in peers_from_env():
        try:
            fetch(peer, deployed, auto_class, target, token=os.environ.get(TOKEN_ENV))
            return True
        except PeerFetchError as exc:
            log.warning("%s; trying the next peer or the source", exc)
    return False


def _quantized(path: Path) -> bool:
    """Quantized weights are not plain tensors: they load through their quantizer."""
    try:
        config = json.loads((path / "config.json").read_text())
    except (OSError, ValueError):
        return False  # from_pretrained will say what is wrong
    return bool(config.get("quantization_config"))


def load_pretrained(
    auto_class: Any,
    path: Path,
    storage: Path,
    device: str,
    *,
    dtype: Any,
    trust_remote_code: bool = False,
    device_map: Any = None,
    source: str | None = None,
    while_waiting: Callable[[], None] | None = None,
) -> Any:
    """``auto_class.from_pretrained(path, ...)``, through the store: stored on first
    use, loaded from the stored copy after (whose pages the worker may hold in memory:
    ``tiers``). ``source``: the name it was deployed as, recorded beside the stored
    copy. Models spread over several GPUs (``device_map``) and models the loader does
    not build take transformers' path; so does any model whose copy cannot be written
    (a read-only or full disk). ``while_waiting``: as for ``locked``."""
    if device_map is None and _quantized(path):
        log.info("%s is quantized: loading with transformers, not through the store", path)
    elif device_map is None:
        try:
            directory, index = ensure_stored(
                path,
                storage,
                auto_class,
                trust_remote_code=trust_remote_code,
                deployed=source,
                while_waiting=while_waiting,
            )
            if source is not None:
                record_use(directory, source)
            return load_model(
                directory,
                index,
                auto_class,
                dtype=dtype,
                device=device,
                trust_remote_code=trust_remote_code,
                # A warm process's faulted-in memory, where it has some (else mapped).
                into=arena.claim([c.size for c in index.chunks]) if device == "cpu" else None,
            )
        except (OSError, StoreError) as exc:
            reason = "not supported" if isinstance(exc, Unsupported) else "failed"
            log.warning("sllm store %s for %s (%s): loading with transformers", reason, path, exc)
    model = auto_class.from_pretrained(
        path, dtype=dtype, trust_remote_code=trust_remote_code, device_map=device_map
    )
    if device_map is None:
        model.to(device)
    return model


# -- the CLI's entry points ---------------------------------------------------------------


def source_dir(source: str, storage: Path) -> Path:
    """The directory of safetensors the backend would load ``source`` from."""
    from sllm.backends.model_source import expand_user, loadable_dir, resolve

    local = expand_user(source)
    if local.exists():  # the operator's own path on the command line: relative is fine
        source = str(local.resolve())
    return loadable_dir(resolve(source, storage), storage)


def auto_class_for(path: Path, task: Task) -> Any:
    """The auto class the transformers backend loads ``path`` with (as its ``task``)."""
    from transformers import AutoModel, AutoModelForCausalLM

    if task == "auto":
        config = json.loads((path / "config.json").read_text())
        causal = any(a.endswith("ForCausalLM") for a in config.get("architectures") or [])
        task = "generate" if causal else "embed"
    return AutoModelForCausalLM if task == "generate" else AutoModel


def save(
    source: str, storage: Path, task: Task = "auto", trust_remote_code: bool = False
) -> tuple[Path, StoreIndex]:
    """``sllm store save``: store ``source`` (any name the backend takes) now, recorded
    as used by ``source`` so that the worker reports it under that name."""
    path = source_dir(source, storage)
    directory, index = ensure_stored(
        path,
        storage,
        auto_class_for(path, task),
        trust_remote_code=trust_remote_code,
        deployed=source,
    )
    record_use(directory, source)
    return directory, index


def save_command(
    source: str,
    storage: Path,
    task: str,
    trust_remote_code: bool,
    onnx_precision: str | None = None,
) -> list[str]:
    """``sllm store save`` of ``source`` as a command, for a child process to run: storing
    computes (dequantizing, hashing, converting) in a process of its own. With
    ``onnx_precision``: converted to ONNX at that precision (``onnx_store``)."""
    argv = [
        sys.executable, "-m", "sllm", "store", "save", "--storage-path", str(storage),
        "--task", task,
    ]  # fmt: skip
    if trust_remote_code:
        argv.append("--trust-remote-code")
    if onnx_precision is not None:
        argv += ["--format", "onnx", "--precision", onnx_precision]
    return [*argv, "--", source]  # a source is never read as an option


def save_in_child(argv: list[str], source: str) -> int:
    """Run a ``save_command`` for ``source`` in a child process, its output on this
    process's stderr (a backend's log); its exit code. A backend calls it before it
    serves: bounded by the instance's startup timeout, as the worker then kills the
    instance's process group, this child with it."""
    started = time.monotonic()
    done = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=sys.stderr, check=False)
    log.info(
        "sllm store save of %s%s: exit %d in %.1f s",
        source,
        " (onnx)" if "onnx" in argv else "",
        done.returncode,
        time.monotonic() - started,
    )
    return done.returncode


def verify(source: str, storage: Path, task: Task = "auto") -> tuple[Path, list[str]]:
    """``sllm store verify``: hash every file of the stored copy of ``source``."""
    path = source_dir(source, storage)
    target = store_dir(path, storage, auto_class_for(path, task).__name__)
    return target, check_directory(target, "full")[1]
