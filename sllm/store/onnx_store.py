"""A model converted to ONNX for the onnx backend, kept in the store like the sllm format.

ONNX Runtime GenAI's model builder turns a transformers model that generates (a
dequantized GGUF file's too) into ``model.onnx``, its weights in ``model.onnx.data`` at
the asked precision, and ``genai_config.json`` with the tokenizer beside them; an
embedding model (an encoder) is exported by torch's exporter (``onnx_encoder``). Either
runs in a child process: it imports torch and transformers, which a process that
serves the model never does.

The copy lives at ``<storage>/store/<name>-<key>`` as the sllm format does, the key
also hashing the precision, and is written the same way: into ``<target>.partial``,
every file's checksum read back, the index last, then one rename (``ingest.commit``).
Its index lists the weights file as the one chunk (what the memory tier maps and
locks) and the rest as side files, so verification and tiers treat it like any stored
model. No peer fetch yet: each worker converts its own copy.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Literal

from sllm.store.catalog import store_dir
from sllm.store.format import INDEX_NAME, StoreError, StoreIndex
from sllm.store.ingest import commit, partial_dir
from sllm.store.integrity import check, check_directory, entry_for, preferred_algorithm
from sllm.store.locking import locked
from sllm.store.onnx_encoder import ENCODER_FILE

log = logging.getLogger(__name__)

Precision = Literal["int4", "int8", "fp16", "fp32"]
# auto: int4 for a model that generates (the fastest on a CPU), fp32 for an embedding
# model (the only precision its export has).
Asked = Literal["auto", "int4", "int8", "fp16", "fp32"]
# The class an ONNX copy is stored "for": it keys the copy apart from the sllm format's.
MODEL_CLASS = "OnnxRuntimeGenAI"
# Weights the builder writes beside model.onnx; the chunk the memory tier locks.
WEIGHTS = "model.onnx.data"
# Copied from the source: the model's sampling defaults (the builder drops them).
_KEPT = ("generation_config.json",)
# A 135M model converts in 20 s on 2 cores; 7B models take tens of minutes.
CONVERT_TIMEOUT = 3600.0


class ConversionError(StoreError):
    """The model builder (or the encoder's export) could not convert the model."""


def generates(source: Path) -> bool:
    """Whether the model directory ``source`` holds a model that generates (its config
    names a ``*ForCausalLM``), not an encoder."""
    try:
        config = json.loads((source / "config.json").read_text())
    except (OSError, ValueError):
        return True  # the builder will say what is wrong
    return any(str(a).endswith("ForCausalLM") for a in config.get("architectures") or [])


def precision_of(source: Path, asked: Asked) -> Precision:
    """The precision ``source`` is converted at when ``asked``."""
    if asked != "auto":
        return asked
    return "int4" if generates(source) else "fp32"


def auto_class(precision: Precision) -> str:
    return f"{MODEL_CLASS}-{precision}"


def onnx_dir(source: Path, storage: Path, precision: Precision) -> Path:
    """Where ``source`` converted at ``precision`` is stored under ``storage``."""
    return store_dir(source, storage, auto_class(precision))


def stored(source: Path, storage: Path, precision: Precision) -> Path | None:
    """The sound stored conversion of ``source``, or None; never converts."""
    target = onnx_dir(source, storage, precision)
    index, problems = check_directory(target, "quick")
    return target if index is not None and not problems else None


def ensure_converted(source: Path, storage: Path, precision: Precision) -> tuple[Path, StoreIndex]:
    """The stored conversion of ``source``: converted now when absent or unsound, by
    one process at a time (the others wait for it and find it stored)."""
    target = onnx_dir(source, storage, precision)
    with locked(target):
        index, problems = check_directory(target, "quick")
        if index is not None and not problems:
            return target, index
        if problems != ["not stored"]:
            log.warning("stored copy %s is unsound (%s): converting again", target, problems)
        return target, convert(source, target, precision)


def convert(source: Path, target: Path, precision: Precision) -> StoreIndex:
    """Convert ``source`` into ``target`` atomically (see the module docstring)."""
    started = time.monotonic()
    partial = partial_dir(target)
    scratch = target.with_name(f"{target.name}.builder-cache")
    for leftover in (partial, scratch):  # a crashed earlier attempt
        shutil.rmtree(leftover, ignore_errors=True)
    if generates(source):
        argv = [
            sys.executable, "-m", "onnxruntime_genai.models.builder",
            "-i", str(source), "-o", str(partial), "-p", precision, "-e", "cpu",
            "-c", str(scratch),
        ]  # fmt: skip
        made = "genai_config.json"
    elif precision != "fp32":
        raise ConversionError(
            f"{source} is an embedding model: it converts at fp32 only (quantizing an "
            "encoder is not built yet)"
        )
    else:
        argv = [sys.executable, "-m", "sllm.store.onnx_encoder", str(source), str(partial)]
        made = ENCODER_FILE
    log.info("converting %s to ONNX (%s) at %s", source, precision, target)
    try:
        done = subprocess.run(
            argv,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=CONVERT_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired:  # run killed and reaped it
        shutil.rmtree(partial, ignore_errors=True)
        raise ConversionError(
            f"converting {source} took over {CONVERT_TIMEOUT:.0f} s: stopped"
        ) from None
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    if done.returncode != 0 or not (partial / made).is_file():
        shutil.rmtree(partial, ignore_errors=True)
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise ConversionError(f"the ONNX export cannot convert {source}: {last}")
    for name in _KEPT:
        if (source / name).is_file() and not (partial / name).exists():
            shutil.copyfile(source / name, partial / name)
    index = _index(partial, source, precision)
    problems = check(partial, index, "full")
    if problems:
        raise ConversionError(f"{target.name}: written files do not read back: {problems}")
    commit(partial, target, index)
    log.info(
        "converted %s to ONNX %s: %.2f GB in %.1f s at %s",
        source,
        precision,
        sum(c.size for c in index.chunks) / 1e9,
        time.monotonic() - started,
        target,
    )
    return index


def _index(partial: Path, source: Path, precision: Precision) -> StoreIndex:
    algorithm = preferred_algorithm()
    paths = sorted(p for p in partial.rglob("*") if p.is_file() and p.name != INDEX_NAME)
    if any(p.parent != partial for p in paths):
        raise ConversionError(f"the ONNX model builder wrote sub-directories in {partial}")
    entries = [entry_for(p, algorithm) for p in paths]
    return StoreIndex(
        algorithm=algorithm,
        model_class=MODEL_CLASS,
        auto_class=auto_class(precision),
        alignment=1,
        tensors=[],
        chunks=[e for e in entries if e.file == WEIGHTS],
        files=[e for e in entries if e.file != WEIGHTS],
        source={"path": str(source), "precision": precision},
    )


def save(source: str, storage: Path, asked: Asked) -> tuple[Path, StoreIndex]:
    """``sllm store save --format onnx``: convert ``source`` (any name the backends take)
    now, recorded as used by ``source`` so that the worker reports it under that name."""
    from sllm.store.catalog import source_dir
    from sllm.store.tiers import record_use

    path = source_dir(source, storage)
    directory, index = ensure_converted(path, storage, precision_of(path, asked))
    record_use(directory, source)
    return directory, index
