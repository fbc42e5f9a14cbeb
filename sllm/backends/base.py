"""How the worker launches an instance of each backend, and which backends exist."""

from __future__ import annotations

import importlib.util
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class LaunchSpec:
    """Everything a backend process needs to serve one instance."""

    instance_id: str
    model: str
    port: int
    backend_config: dict[str, Any] = field(default_factory=dict)
    num_gpus: int = 0
    lora_adapters: dict[str, str] = field(default_factory=dict)
    storage_path: Path = Path(".")


class BackendUnavailable(Exception):
    """This machine cannot run the backend; the message says what to install."""


@dataclass(frozen=True)
class Backend:
    """A backend that runs as ``python -m <module>`` with the common flags."""

    name: str
    module: str
    health_path: str = "/health"
    # Whether it serves ``lora_adapters`` (as MODEL:ADAPTER).
    lora: bool = False

    def command(self, spec: LaunchSpec) -> list[str]:
        return [
            sys.executable,
            "-m",
            self.module,
            "--host",
            "127.0.0.1",
            "--port",
            str(spec.port),
            "--model",
            spec.model,
            "--instance-id",
            spec.instance_id,
            "--config",
            json.dumps(spec.backend_config),
            "--storage-path",
            str(spec.storage_path),
            "--lora-adapters",
            json.dumps(spec.lora_adapters),
        ]

    # Python packages the backend imports; a worker without them cannot run it.
    requires: tuple[str, ...] = ()
    install_hint: str = ""

    def unavailable_reason(self) -> str | None:
        """None when this machine can run the backend, else why not."""
        missing = [p for p in self.requires if importlib.util.find_spec(p) is None]
        if missing:
            return (
                f"the {self.name} backend needs {', '.join(missing)}, not installed on this "
                f"worker: {self.install_hint}"
            )
        return None


_BUILT: dict[str, Backend] = {
    "dummy": Backend(name="dummy", module="sllm.backends.dummy", lora=True),
    "transformers": Backend(
        name="transformers",
        module="sllm.backends.transformers_backend",
        lora=True,
        requires=("torch", "transformers"),
        install_hint="pip install 'sllm[transformers]'",
    ),
}

_PLANNED = {
    "vllm": "the vLLM backend is not built yet in this version of sllm",
}


def get_backend(name: str) -> Backend:
    """The backend called ``name``; BackendUnavailable names what is missing."""
    if name in _BUILT:
        return _BUILT[name]
    if name in _PLANNED:
        raise BackendUnavailable(_PLANNED[name])
    raise BackendUnavailable(f"unknown backend {name!r}; known: {', '.join(sorted(_BUILT))}")


def available_backends() -> list[str]:
    """Backends this machine can run, for the worker's heartbeat."""
    return sorted(n for n, b in _BUILT.items() if b.unavailable_reason() is None)
