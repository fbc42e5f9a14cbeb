"""API keys, the admin key, the cluster token and rate limits, through real processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai
import pytest

from sllm.client.launcher import free_port, start_worker
from tests.e2e.conftest import WORKER_ENV, Cluster, wait_until

pytestmark = pytest.mark.e2e

KEY_A = "sk-e2e-alpha-4f1c9b0e77"
KEY_B = "sk-e2e-bravo-92ad31c5d0"
ADMIN = "sk-e2e-admin-c0ffee1234"
TOKEN = "tok-e2e-cluster-5e6d7c8b"
WRONG = "sk-e2e-wrong-000badbad0"
SECRETS = (KEY_A, KEY_B, ADMIN, TOKEN, WRONG)
CHAT = [{"role": "user", "content": "hello there"}]


@pytest.fixture
def guarded(cluster: Cluster) -> Cluster:
    cluster.admin_key = ADMIN
    cluster.start_head(
        SLLM_API_KEYS=f"{KEY_A},{KEY_B}", SLLM_ADMIN_KEY=ADMIN, SLLM_CLUSTER_TOKEN=TOKEN
    )
    cluster.start_worker(SLLM_CLUSTER_TOKEN=TOKEN)
    return cluster


def _assert_no_secrets(cluster: Cluster) -> None:
    texts = {str(p.log): p.log.read_text(errors="replace") for p in cluster.procs}
    texts["/status"] = json.dumps(cluster.status())
    for where, text in texts.items():
        for secret in SECRETS:
            assert secret not in text, f"a key appears in {where}"


def test_api_keys_guard_the_openai_api(guarded: Cluster) -> None:
    guarded.deploy("m")
    assert guarded.head is not None
    url = guarded.head.url

    # The SDK refuses to send no key at all, so that one goes out bare.
    missing = httpx.get(f"{url}/v1/models")
    assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Bearer"
    assert missing.json()["error"]["code"] == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError) as wrong:
        guarded.client(api_key=WRONG).chat.completions.create(
            model="m", messages=CHAT, max_tokens=4
        )
    err = wrong.value
    assert err.status_code == 401 and err.code == "invalid_api_key"
    assert err.response.headers["www-authenticate"] == "Bearer"
    assert isinstance(err.body, dict) and err.body["type"] == "invalid_request_error"
    assert WRONG not in err.message
    # The key is checked before the body: a stranger learns nothing about models.
    resp = httpx.post(f"{url}/v1/chat/completions", json={"model": "nope", "messages": CHAT})
    assert resp.status_code == 401

    client = guarded.client(api_key=KEY_B)
    chat = client.chat.completions.create(model="m", messages=CHAT, max_tokens=6)
    assert chat.choices[0].message.content
    stream = client.chat.completions.create(model="m", messages=CHAT, max_tokens=6, stream=True)
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text == chat.choices[0].message.content
    assert [m.id for m in guarded.client(api_key=KEY_A).models.list().data] == ["m"]
    # The admin key reads models too (sllm models sends it).
    assert [m.id for m in guarded.client(api_key=ADMIN).models.list().data] == ["m"]
    assert httpx.get(f"{url}/health").status_code == 200

    _assert_no_secrets(guarded)


def test_management_needs_the_admin_key(guarded: Cluster, tmp_path: Path) -> None:
    assert guarded.head is not None
    url = guarded.head.url
    config = {"model": "m2", "backend": "dummy"}
    calls = [
        ("POST", "/register", config),
        ("POST", "/update", config),
        ("POST", "/delete", {"model": "m2"}),
        ("GET", "/status", None),
        ("POST", "/instances/m2-00000000/migrate", None),
    ]
    for headers in ({}, {"Authorization": f"Bearer {WRONG}"}, {"Authorization": f"Bearer {KEY_A}"}):
        for method, path, body in calls:
            resp = httpx.request(method, f"{url}{path}", json=body, headers=headers)
            assert resp.status_code == 401, (path, resp.text)
            assert resp.json()["error"]["code"] == "invalid_api_key"
            assert resp.headers["www-authenticate"] == "Bearer"
    admin = {"Authorization": f"Bearer {ADMIN}"}
    for method, path, body in calls:
        resp = httpx.request(method, f"{url}{path}", json=body, headers=admin)
        # Let in: the instance to migrate does not exist.
        assert resp.status_code == (404 if path.endswith("/migrate") else 200), (path, resp.text)

    # The CLI sends --admin-key / SLLM_ADMIN_KEY.
    def cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
        clean = {k: v for k, v in os.environ.items() if k != "SLLM_ADMIN_KEY"}
        return subprocess.run(
            [sys.executable, "-m", "sllm", *args, "--head-url", url],
            env={**clean, **env},
            capture_output=True,
            text=True,
            timeout=60,
        )

    refused = cli("status", "--json")
    assert refused.returncode == 1 and "admin key" in refused.stderr
    assert cli("status", "--json", SLLM_ADMIN_KEY=ADMIN).returncode == 0
    deployed = cli("deploy", "--model", "m3", "--admin-key", ADMIN)
    assert deployed.returncode == 0, deployed.stderr
    listed = cli("models", SLLM_ADMIN_KEY=ADMIN)
    assert listed.returncode == 0 and "m3" in listed.stdout.split()

    _assert_no_secrets(guarded)


def test_worker_without_the_cluster_token_cannot_register(guarded: Cluster) -> None:
    assert guarded.head is not None
    port = free_port()
    stranger = start_worker(port, guarded.head.url, guarded.workdir, dict(WORKER_ENV))
    guarded.procs.append(stranger)
    wait_until(
        lambda: '"POST /heartbeat HTTP/1.1" 401' in guarded.procs[0].log.read_text(),
        10,
        "a refused heartbeat",
    )
    time.sleep(1.0)  # a few more heartbeats, all refused
    assert not guarded.worker_known(stranger.url)
    assert "401" in stranger.log.read_text()
    _assert_no_secrets(guarded)


def test_worker_endpoints_need_the_cluster_token(guarded: Cluster) -> None:
    worker = guarded.procs[1]
    calls = [
        ("/start_instance", {"instance_id": "x", "model": "m", "backend": "dummy"}),
        ("/stop_instance", {"instance_id": "x"}),
        ("/invoke", {}),
        ("/confirmation", {"node_id": "evil", "redis_url": "redis://127.0.0.1:1/0"}),
    ]
    for headers in ({}, {"Authorization": f"Bearer {WRONG}"}, {"Authorization": f"Bearer {ADMIN}"}):
        for path, body in calls:
            resp = httpx.post(f"{worker.url}{path}", json=body, headers=headers)
            assert resp.status_code == 401, (path, resp.text)
            assert resp.headers["www-authenticate"] == "Bearer"
    assert httpx.get(f"{worker.url}/health").status_code == 200
    # With the token the worker answers (404: there is no such instance).
    token = {"Authorization": f"Bearer {TOKEN}"}
    resp = httpx.post(f"{worker.url}/stop_instance", json={"instance_id": "x"}, headers=token)
    assert resp.status_code == 404


def test_head_without_the_cluster_token_cannot_drive_the_worker(cluster: Cluster) -> None:
    cluster.start_head()
    # The head is open, so the worker registers; but it refuses the head's calls.
    worker = cluster.start_worker(SLLM_CLUSTER_TOKEN=TOKEN)
    cluster.deploy("m", auto_scaling_config={"min_instances": 1, "max_instances": 1})
    wait_until(
        lambda: '"POST /start_instance HTTP/1.1" 401' in worker.log.read_text(),
        20,
        "a refused /start_instance",
    )
    model = cluster.model_status("m")
    assert model is not None
    assert not any(i["state"] == "ready" for i in model["instances"])


def test_rate_limits_answer_429_with_retry_after(cluster: Cluster, tmp_path: Path) -> None:
    keys_file = tmp_path / "keys.txt"
    keys_file.write_text(f"# per-key limits\n{KEY_A} rpm=2\n{KEY_B} tpm=100  # small\n")
    cluster.start_head(SLLM_API_KEYS_FILE=str(keys_file), SLLM_RATE_LIMIT_RPM="100")
    limited = cluster.client(api_key=KEY_A)
    limited.models.list()
    limited.models.list()
    with pytest.raises(openai.RateLimitError) as over:
        limited.models.list()
    err = over.value
    assert err.status_code == 429 and err.code == "rate_limit_exceeded"
    # 2 per minute: the next request fits in 30 s, said as whole seconds.
    assert 1 <= int(err.response.headers["retry-after"]) <= 30
    assert "requests per minute" in err.message

    # Tokens: 100 per minute; a request asking for more waits for a full bucket.
    tokens = cluster.client(api_key=KEY_B)
    with pytest.raises(openai.NotFoundError):  # charged, then refused: no such model
        tokens.completions.create(model="nope", prompt="hi", max_tokens=500)
    with pytest.raises(openai.RateLimitError) as over_tokens:
        tokens.completions.create(model="nope", prompt="hi", max_tokens=10)
    assert "tokens per minute" in over_tokens.value.message
    assert int(over_tokens.value.response.headers["retry-after"]) >= 1
    _assert_no_secrets(cluster)


def test_token_limits_charge_numbers_as_validation_reads_them(cluster: Cluster) -> None:
    head = cluster.start_head(SLLM_RATE_LIMIT_TPM="2000")
    url = f"{head.url}/v1/chat/completions"
    messages = [{"role": "user", "content": "hi"}]
    statuses = []
    for extra in ({"max_tokens": "999"}, {"max_tokens": 249, "n": "4"}, {"max_tokens": "10"}):
        body = {"model": "nope", "messages": messages, **extra}
        statuses.append(httpx.post(url, json=body, timeout=10).status_code)
    # Validation reads "999" as 999 and "4" as 4: two requests of about 1,000 tokens fill
    # the 2,000 a minute, and the third waits (charged as 256, six would have passed).
    assert statuses == [404, 404, 429]


def test_without_keys_limits_apply_per_client_address(cluster: Cluster) -> None:
    cluster.start_head(SLLM_RATE_LIMIT_RPM="1")
    client = cluster.client()
    client.models.list()
    with pytest.raises(openai.RateLimitError):
        client.models.list()
