from __future__ import annotations

import pytest
from pydantic import ValidationError

from sllm.config import DeployConfig, WorkerSettings


def test_defaults() -> None:
    cfg = DeployConfig(model="m")
    assert cfg.backend == "dummy" and cfg.auto_scaling_config.min_instances == 0


def test_unknown_fields_are_named() -> None:
    with pytest.raises(ValidationError) as err:
        DeployConfig.model_validate({"model": "m", "auto_scaling_config": {"max_instance": 2}})
    assert "max_instance" in str(err.value)


@pytest.mark.parametrize("name", ["", "../etc", "a b", "-x", "x" * 200])
def test_bad_model_names(name: str) -> None:
    with pytest.raises(ValidationError):
        DeployConfig(model=name)


def test_min_above_max_is_refused() -> None:
    with pytest.raises(ValidationError, match="min_instances"):
        DeployConfig.model_validate(
            {"model": "m", "auto_scaling_config": {"min_instances": 3, "max_instances": 1}}
        )


def test_a_worker_takes_one_head_url_or_several() -> None:
    assert WorkerSettings(head_url="http://h:8343/").head_urls() == ["http://h:8343"]
    several = WorkerSettings(head_url=" http://a:8343, https://b:8343/ ,")
    assert several.head_urls() == ["http://a:8343", "https://b:8343"]
    for bad in ("", " , ", "http://a:8343,b:8343"):
        with pytest.raises(ValidationError, match="head_url"):
            WorkerSettings(head_url=bad)


@pytest.mark.parametrize(("gpus", "given", "heap"), [(0, None, 0.5), (2, None, 0.0), (2, 1.5, 1.5)])
def test_the_warm_heap_defaults_on_where_kv_caches_are_in_host_memory(
    monkeypatch: pytest.MonkeyPatch, gpus: int, given: float | None, heap: float
) -> None:
    from sllm.worker import app

    monkeypatch.setattr(app, "gpu_count", lambda: gpus)
    settings = WorkerSettings(head_url="http://h:8343", warm_heap_gb=given)
    assert app._machine_defaults(settings).warm_heap_gb == heap
