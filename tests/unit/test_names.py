"""Names that arrive over the network: one rule per kind, the same in every model."""

from __future__ import annotations

import re

import pytest
from pydantic import TypeAdapter, ValidationError

from sllm.config import DeployConfig
from sllm.edge import names
from sllm.edge.protocol import ChatCompletionRequest

pytestmark = pytest.mark.timeout(30)

# Ids and adapter names have no '/', so "a..b" is a plain file name for them; model
# names have '/', so for them any ".." is refused.
ODD = ["", "../x", "a/../b", "..", "a b", "a\n", "-a", ".a", "a;b", "a\x00", "ä", "a" * 300]


@pytest.mark.parametrize("value", ODD)
def test_odd_names_are_no_adapter_node_or_instance(value: str) -> None:
    for check in (names.is_adapter_name, names.is_node_id, names.is_instance_id):
        assert not check(value), (check, value)


@pytest.mark.parametrize("value", ["m", "org/model-1.5", "Qwen2.5_0.5B", "a.b/c_d-e", "x."])
def test_plain_model_names_pass(value: str) -> None:
    assert names.is_model_name(value)


@pytest.mark.parametrize("value", [*ODD, "a..b", "a/..", "a:b", "/abs"])
def test_odd_model_names_are_refused(value: str) -> None:
    assert not names.is_model_name(value)


def test_the_patterns_agree_with_the_checks() -> None:
    # The JSON-schema patterns (what clients and Schemathesis read) and the checks the
    # servers run must say the same of every name.
    samples = [*ODD, "m", "org/m", "a.b", "a.", "x/y.z", "m:ad", "m:a.d", "m:", ":a", "m:a:b"]
    for value in samples:
        target = re.fullmatch(names.TARGET_PATTERN, value) is not None
        base, sep, adapter = value.partition(":")
        expected = names.is_model_name(base) and (not sep or names.is_adapter_name(adapter))
        if len(value) <= names.MODEL_MAX:  # lengths are maxLength's job, not the pattern's
            assert target == expected, value
            model = re.fullmatch(names.MODEL_PATTERN, value) is not None
            assert model == names.is_model_name(value), value


def test_request_ids_allow_the_usual_shapes() -> None:
    for value in ["0b9c6f3e-7d1a-4b5e-9f0a-2c3d4e5f6a7b", "req_01J9", "a:b/c+d==", "x@y"]:
        assert names.is_request_id(value)
    for value in ["a b", "a\tb", 'a"b', "x" * 129, "é"]:
        assert not names.is_request_id(value)


def test_pydantic_types_enforce_and_document_the_rule() -> None:
    adapter = TypeAdapter(names.InstanceId)
    assert adapter.validate_python("m-1f2e3d4c") == "m-1f2e3d4c"
    with pytest.raises(ValidationError):
        adapter.validate_python("../etc")
    with pytest.raises(ValidationError):
        adapter.validate_python("a\n")  # '$' in the pattern must not let a newline through
    assert adapter.json_schema()["pattern"] == names.ID_PATTERN


@pytest.mark.parametrize(
    ("model", "adapter"),
    [("../m", None), ("m:../a", None), ("m x", None), ("m", "a/b"), ("m:", None)],
)
def test_openai_requests_refuse_odd_models_and_adapters(model: str, adapter: str | None) -> None:
    with pytest.raises(ValidationError):
        ChatCompletionRequest(
            model=model, messages=[{"role": "user", "content": "x"}], lora_adapter_name=adapter
        )


def test_openai_requests_keep_plain_names() -> None:
    req = ChatCompletionRequest(
        model="org/m:ad", messages=[{"role": "user", "content": "x"}], lora_adapter_name=""
    )
    assert req.target() == ("org/m", "ad")


def test_deploy_configs_document_their_name_rules() -> None:
    schema = DeployConfig.model_json_schema()
    assert schema["properties"]["model"]["pattern"] == names.MODEL_PATTERN
    assert (
        schema["properties"]["lora_adapters"]["propertyNames"]["pattern"] == names.ADAPTER_PATTERN
    )
    with pytest.raises(ValidationError, match=re.escape("no '..'")):
        DeployConfig(model="a..b")
