"""Which backends exist, and which this machine can run."""

from __future__ import annotations

from sllm.backends.base import Backend, BackendUnavailable
from sllm.backends.dummy import DummyKnobs
from sllm.backends.transformers_knobs import TransformersKnobs
from sllm.backends.vllm_backend import VLLM_ENTRYPOINT, VllmBackend
from sllm.backends.vllm_flags import VllmKnobs

_BUILT: dict[str, Backend] = {
    "dummy": Backend(
        name="dummy",
        module="sllm.backends.dummy",
        lora=True,
        knobs=DummyKnobs,
        warm_prime=("sllm.backends.server:prime", "sllm.backends.dummy"),
    ),
    "transformers": Backend(
        name="transformers",
        module="sllm.backends.transformers_backend",
        lora=True,
        knobs=TransformersKnobs,
        requires=("torch", "transformers"),
        install_hint="pip install 'sllm[transformers]'",
        warm_prime=(
            "sllm.backends.server:prime",
            "sllm.backends.transformers_backend:prime",
            "sllm.store.arena:prefault",
            "sllm.backends.warm_heap:prefault",
        ),
    ),
    "vllm": VllmBackend(
        name="vllm",
        module=VLLM_ENTRYPOINT,
        lora=True,
        runtime_adapters=True,
        continues=False,
        knobs=VllmKnobs,
        install_hint="pip install 'sllm[vllm]'",
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


def warm_primes() -> list[str]:
    """What a warm process primes: for every backend this machine can run that starts
    from one, so that any of them can take it."""
    return list(dict.fromkeys(p for n in available_backends() for p in _BUILT[n].warm_prime))
