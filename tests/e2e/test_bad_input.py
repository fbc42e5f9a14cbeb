"""Bad input at real head and worker processes: oversized bodies, odd names, unknown
deploy fields, a max_tokens the model cannot hold, and features the backend lacks. Every
refusal is a 4xx in OpenAI's error shape that names what is wrong."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import Cluster

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

LIMIT = 4096
CHAT = {"model": "m", "messages": [{"role": "user", "content": "hello there"}], "max_tokens": 3}
JSON = {"content-type": "application/json"}


def assert_error(resp: httpx.Response, status: int, param: str | None = None) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    error: dict[str, Any] = resp.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error"
    if param is not None:
        # A dict key's error is named below its dict (lora_adapters.KEY.[key]).
        assert error["param"] is not None and error["param"].startswith(param), error
    return error


def padded(body: dict[str, Any], size: int) -> bytes:
    """``body`` as JSON with a user message long enough to make ``size`` bytes or more."""
    big = {**body, "messages": [{"role": "user", "content": "x" * size}]}
    return httpx.Request("POST", "http://x", json=big).content


def chunked(data: bytes, size: int = 512) -> Iterator[bytes]:
    # A generator body goes out with Transfer-Encoding: chunked and no Content-Length.
    for start in range(0, len(data), size):
        yield data[start : start + size]


def test_bodies_over_the_limit_get_a_413_before_anything_reads_them(cluster: Cluster) -> None:
    head = cluster.start_head(SLLM_MAX_BODY_BYTES=str(LIMIT))
    worker = cluster.start_worker(SLLM_WORKER_MAX_BODY_BYTES=str(LIMIT))
    cluster.deploy("m")
    big = padded(CHAT, LIMIT * 4)

    for path in ("/v1/chat/completions", "/register"):
        declared = httpx.post(f"{head.url}{path}", content=big, headers=JSON, timeout=10)
        error = assert_error(declared, 413)
        assert error["code"] == "request_too_large" and "SLLM_MAX_BODY_BYTES" in error["message"]
        streamed = httpx.post(f"{head.url}{path}", content=chunked(big), headers=JSON, timeout=10)
        assert "content-length" not in streamed.request.headers
        assert_error(streamed, 413)

    start = {"instance_id": "i-1", "model": "m", "backend": "dummy", "backend_config": {}}
    body = httpx.Request("POST", "http://x", json={**start, "lora_adapters": {"a": "x" * LIMIT}})
    refused = httpx.post(f"{worker.url}/start_instance", content=body.content, headers=JSON)
    assert "SLLM_WORKER_MAX_BODY_BYTES" in assert_error(refused, 413)["message"]

    # Under the limit all goes on as usual, on the same connections' servers.
    ok = httpx.post(f"{head.url}/v1/chat/completions", json=CHAT, timeout=30)
    assert ok.status_code == 200, ok.text
    assert ok.json()["choices"][0]["message"]["role"] == "assistant"


def test_names_with_odd_characters_are_refused_wherever_they_arrive(cluster: Cluster) -> None:
    head = cluster.start_head()
    worker = cluster.start_worker()
    cluster.deploy("m", lora_adapters={"ad": "/adapters/ad"})
    cases: list[tuple[str, dict[str, Any], dict[str, str], str]] = [
        # (url, body, headers, the param the 400 names)
        (f"{head.url}/v1/chat/completions", {**CHAT, "model": "../m"}, {}, "model"),
        (f"{head.url}/v1/chat/completions", {**CHAT, "model": "m x"}, {}, "model"),
        (f"{head.url}/v1/chat/completions", {**CHAT, "model": "m:../ad"}, {}, "model"),
        (f"{head.url}/v1/completions", {"model": "m\n", "prompt": "x"}, {}, "model"),
        (
            f"{head.url}/v1/embeddings",
            {"model": "m", "input": "x", "lora_adapter_name": "a/d"},
            {},
            "lora_adapter_name",
        ),
        (f"{head.url}/v1/chat/completions", CHAT, {"X-Request-Id": "a b"}, "X-Request-Id"),
        (f"{head.url}/v1/chat/completions", CHAT, {"X-Request-Id": "x" * 200}, "X-Request-Id"),
        (f"{head.url}/register", {"model": "a/../b"}, {}, "model"),
        (
            f"{head.url}/register",
            {"model": "ok", "lora_adapters": {"a/b": "/x"}},
            {},
            "lora_adapters",
        ),
        (f"{head.url}/delete", {"model": "../../etc"}, {}, "model"),
        (f"{head.url}/heartbeat", {"node_id": "../w", "url": worker.url}, {}, "node_id"),
        (f"{head.url}/heartbeat", {"node_id": "w", "url": "file:///etc/passwd"}, {}, "url"),
        (f"{worker.url}/confirmation", {"node_id": "a b"}, {}, "node_id"),
        (f"{worker.url}/confirmation", {"node_id": "w", "redis_url": "http://x"}, {}, "redis_url"),
        (
            f"{worker.url}/start_instance",
            {"instance_id": "../../i", "model": "m", "backend": "dummy"},
            {},
            "instance_id",
        ),
        (
            f"{worker.url}/start_instance",
            {"instance_id": "i", "model": "m;rm", "backend": "dummy"},
            {},
            "model",
        ),
        (
            f"{worker.url}/start_instance",
            {"instance_id": "i", "model": "m", "backend": "dummy", "lora_adapters": {"..": "/x"}},
            {},
            "lora_adapters",
        ),
        (f"{worker.url}/stop_instance", {"instance_id": "i/j"}, {}, "instance_id"),
    ]
    for url, body, headers, param in cases:
        resp = httpx.post(url, json=body, headers=headers, timeout=10)
        assert_error(resp, 400, param)
    # Nothing was registered or started by any of it.
    assert [m["model"] for m in cluster.status()["models"]] == ["m"]
    assert httpx.get(f"{worker.url}/health").json()["instances"] == 0

    # Plain names go through, and the request id comes back.
    ok = httpx.post(
        f"{head.url}/v1/chat/completions",
        json={**CHAT, "model": "m:ad"},
        headers={"X-Request-Id": "req_01J9:abc/def+g=="},
        timeout=30,
    )
    assert ok.status_code == 200, ok.text
    assert ok.headers["x-request-id"] == "req_01J9:abc/def+g=="
    assert ok.json()["model"] == "m:ad"


def test_unknown_deploy_fields_are_all_named(cluster: Cluster) -> None:
    head = cluster.start_head()
    config = {"model": "x", "colour": "red", "auto_scaling_config": {"max_instance": 2}}
    for path in ("/register", "/update"):
        error = assert_error(httpx.post(f"{head.url}{path}", json=config), 400)
        assert "colour" in error["message"]
        assert "auto_scaling_config.max_instance" in error["message"]


@pytest.mark.timeout(300)
def test_max_tokens_past_the_context_is_a_400_on_every_backend(
    cluster: Cluster, tmp_path: Path
) -> None:
    pytest.importorskip("transformers")
    from tests.tiny_models import build_tiny_causal_lm

    head = cluster.start_head()
    cluster.start_worker()
    model_dir = build_tiny_causal_lm(tmp_path / "tiny")
    cluster.deploy(
        "tiny",
        backend="transformers",
        backend_config={"pretrained_model_name_or_path": str(model_dir)},
        startup_timeout=150,
    )
    cluster.deploy("m", backend_config={"context_length": 64})
    url = f"{head.url}/v1/chat/completions"
    messages = CHAT["messages"]

    for model, context, timeout in (("tiny", 512, 150), ("m", 64, 60)):
        for stream in (False, True):
            body = {"model": model, "messages": messages, "max_tokens": 100_000}
            if stream:
                body["stream"] = True
            resp = httpx.post(url, json=body, timeout=timeout)
            # Streamed too: the stream's status waits for its first event, the refusal.
            error = assert_error(resp, 400, "max_tokens")
            assert f"context of {context} tokens" in error["message"]

    # Within the context the dummy generates, and stops at its limit or where it draws END.
    ok = httpx.post(url, json={"model": "m", "messages": messages, "max_tokens": 50}, timeout=30)
    assert ok.status_code == 200, ok.text
    assert ok.json()["choices"][0]["finish_reason"] in ("stop", "length")


def test_features_the_backend_lacks_are_refused_not_ignored(cluster: Cluster) -> None:
    head = cluster.start_head()
    cluster.start_worker()
    cluster.deploy("m")
    url = f"{head.url}/v1/chat/completions"
    for extra, param in (
        ({"functions": [{"name": "f"}]}, "functions"),
        ({"logit_bias": {"1": 5}}, "logit_bias"),
        ({"suffix": "x"}, "suffix"),
    ):
        for stream in (False, True):
            resp = httpx.post(url, json={**CHAT, **extra, "stream": stream}, timeout=60)
            error = assert_error(resp, 400, param)
            assert "not supported" in error["message"], error
    # Values that ask for nothing are served.
    nothing = {"functions": [], "logit_bias": {}, "suffix": ""}
    resp = httpx.post(url, json={**CHAT, **nothing}, timeout=60)
    assert resp.status_code == 200, resp.text


def test_configs_refuse_non_finite_numbers_and_status_redeploys_unchanged(
    cluster: Cluster,
) -> None:
    head = cluster.start_head()
    for path in ("/register", "/update"):
        for bad in (
            b'{"model": "x", "auto_scaling_config": {"keep_alive": 1e309}}',
            b'{"model": "x", "startup_timeout": NaN}',
            b'{"model": "x", "backend": "vllm", "backend_config": {"extra_args": [1, -Infinity]}}',
        ):
            error = assert_error(httpx.post(f"{head.url}{path}", content=bad, headers=JSON), 400)
            assert "finite" in error["message"], error

    cluster.deploy("m", backend_config={"ttft": 0.25}, auto_scaling_config={"keep_alive": 1e300})
    shown = cluster.model_status("m")
    assert shown is not None
    # What /status shows is a config: deploying it again (here, as an update and under
    # a new name) stores exactly it.
    config = shown["config"]
    assert httpx.post(f"{head.url}/update", json=config).status_code == 200
    assert httpx.post(f"{head.url}/register", json={**config, "model": "m2"}).status_code == 200
    assert cluster.model_status("m")["config"] == config  # type: ignore[index]
    assert cluster.model_status("m2")["config"] == {**config, "model": "m2"}  # type: ignore[index]


def test_text_that_is_not_valid_unicode_is_a_400_naming_its_field(cluster: Cluster) -> None:
    head = cluster.start_head()
    cluster.start_worker()
    cluster.deploy("m")
    lone = '"a \\ud800 b"'  # JSON's escape of a lone surrogate: no UTF-8 encodes it
    cases = [
        (
            "/v1/chat/completions",
            '{"model": "m", "messages": [{"role": "user", "content": %s}]}',
            "messages.0.content",
        ),
        (
            "/v1/chat/completions",
            '{"model": "m", "stream": true, "messages": [{"role": "user", "content": "hi"}], '
            '"stop": ["x", %s]}',
            "stop.1",
        ),
        ("/v1/completions", '{"model": "m", "prompt": %s, "max_tokens": 3}', "prompt"),
        ("/v1/embeddings", '{"model": "m", "input": ["ok", %s]}', "input.1"),
        ("/v1/responses", '{"model": "m", "input": %s}', "input"),
        (
            "/v1/chat/completions",
            '{"model": "m", "messages": [{"role": "user", "content": "hi"}], "user": %s}',
            "user",
        ),
    ]
    for path, template, param in cases:
        resp = httpx.post(f"{head.url}{path}", content=template % lone, headers=JSON, timeout=30)
        error = assert_error(resp, 400, param)
        assert error["param"] == param and "not valid Unicode" in error["message"], error
    # A pair of surrogates is one valid character and is served.
    pair = '{"model": "m", "messages": [{"role": "user", "content": "smile \\ud83d\\ude00"}]}'
    ok = httpx.post(f"{head.url}/v1/chat/completions", content=pair, headers=JSON, timeout=30)
    assert ok.status_code == 200, ok.text
    # No process met the text: none logged a failure.
    assert "Traceback" not in cluster.logs()
