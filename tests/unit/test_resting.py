"""Which models an autoscaler pass passes over (head/resting.py)."""

from __future__ import annotations

from typing import Any

from sllm.config import DeployConfig
from sllm.head.placement import Requirement
from sllm.head.resting import RestingModels, in_play, partition
from sllm.kv.records import ModelRecord


def record(name: str, state: str = "active", **config: Any) -> ModelRecord:
    return ModelRecord(name, {"model": name, **config}, state)


def config_of(model: ModelRecord) -> DeployConfig:
    return DeployConfig.model_validate(model.config)


def test_models_that_want_instances_are_deleted_or_failed_are_watched() -> None:
    models = [
        record("idle"),
        record("gpu", backend="vllm", num_gpus=1),
        record("kept", auto_scaling_config={"min_instances": 1}),
        record("going", state="deleting"),
        ModelRecord("failing", {"model": "failing"}, "active", start_failures={"w": {}}),
    ]
    part = partition(models, config_of)
    assert part.watched == {"kept", "going", "failing"}
    assert {need: [m.name for m in ms] for need, ms in part.resting.items()} == {
        Requirement("dummy"): ["idle"],
        Requirement("vllm", gpus=1): ["gpu"],
    }


def test_the_models_in_play_keep_their_order() -> None:
    models = [record(n) for n in "abcde"]
    assert [m.name for m in in_play(models, frozenset({"d"}), {"b", "e"})] == ["b", "d", "e"]


def test_resting_models_are_marked_again_only_when_a_version_or_reason_changes() -> None:
    rest = RestingModels()
    models = [record("a")]
    assert rest.update("v1", models, config_of)
    assert not rest.update("v1", models, config_of)
    reasons = {Requirement("dummy"): ""}
    assert rest.to_mark(reasons)
    rest.marked(reasons)
    assert not rest.to_mark(reasons)
    assert rest.to_mark({Requirement("dummy"): "no worker runs dummy"})
    assert rest.update("v2", models, config_of)
    assert rest.to_mark(reasons)
    # No version known (a Redis an older sllm filled): every pass looks at them all.
    assert rest.update(None, models, config_of)
    assert rest.update(None, models, config_of)
    rest.marked(reasons)
    assert rest.to_mark(reasons)
