"""The vLLM backend through real head and worker processes, launched against the
project's stand-in for vLLM's server (tests/vllm_standin.py; vLLM itself cannot be
installed on a CPU machine): launch, readiness, proxying with streaming and vLLM's own
sampling fields, runtime LoRA adapters, a dying process, and a model no worker can run."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from sllm.backends.vllm_backend import ENTRYPOINT_ENV
from tests.e2e.conftest import Cluster, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

CONFIG: dict[str, Any] = {
    "backend": "vllm",
    "backend_config": {
        "pretrained_model_name_or_path": "org/tiny",
        "max_lora_rank": 8,
        "extra_args": ["--standin-startup-delay", "1"],
    },
    "lora_adapters": {"a1": "/adapters/a1"},
}
VLLM_FIELDS = {"top_k": 5, "min_p": 0.1, "repetition_penalty": 1.1, "logprobs": True}


@pytest.fixture
def vllm_cluster(cluster: Cluster) -> Cluster:
    cluster.start_head()
    cluster.start_worker(**{ENTRYPOINT_ENV: "tests.vllm_standin"})
    return cluster


def test_vllm_instances_start_serve_and_load_adapters(vllm_cluster: Cluster) -> None:
    worker = vllm_cluster.status()["workers"][0]
    assert "vllm" in worker["backends"]
    vllm_cluster.deploy("m", **CONFIG)
    client = vllm_cluster.client()

    chat = client.chat.completions.create(
        model="m",
        messages=[{"role": "user", "content": "hello"}],
        max_tokens=5,
        extra_body=VLLM_FIELDS,
    )
    assert chat.choices[0].message.content
    assert chat.model_extra is not None
    assert chat.model_extra["standin_received"] == VLLM_FIELDS

    stream = client.completions.create(
        model="m", prompt="once upon", max_tokens=6, stream=True, extra_body={"top_k": 3}
    )
    chunks = list(stream)
    assert len(chunks) == 6
    assert all(c.model_extra and c.model_extra["standin_received"] == {"top_k": 3} for c in chunks)

    def ask(model: str, **extra: Any) -> str:
        reply = client.completions.create(
            model=model, prompt="once upon", max_tokens=6, extra_body=extra or None
        )
        return reply.choices[0].text

    # Loaded through vLLM's runtime endpoint once the instance was ready.
    assert ask("m:a1") != ask("m")
    assert ask("m", lora_adapter_name="a1") == ask("m:a1")
    assert [m.id for m in client.models.list().data] == ["m", "m:a1"]
    # The context vLLM lists (max_model_len) reaches the head with the next heartbeat.
    wait_until(
        lambda: client.models.retrieve("m:a1").model_extra["max_model_len"] == 2048,  # type: ignore[index]
        10,
        "vLLM's max_model_len",
    )

    # vLLM would ignore the field and start over: a resume is restated with its
    # continuation options, the produced text's tokens (its /tokenize) off the limit.
    resumed = client.completions.create(
        model="m", prompt="once upon", max_tokens=6, extra_body={"sllm_continue_from": " a time"}
    )
    assert resumed.model_extra is not None
    assert resumed.model_extra["standin_prompt"] == "once upon a time"
    assert len(resumed.choices[0].text.split()) == 4
    went_on = client.chat.completions.create(
        model="m",
        messages=[{"role": "user", "content": "hello"}],
        max_tokens=6,
        extra_body={"sllm_continue_from": "Hi there"},
    )
    assert went_on.model_extra is not None
    assert went_on.model_extra["standin_prompt"] == "hello Hi there"
    assert went_on.model_extra["standin_received"] == {
        "continue_final_message": True,
        "add_generation_prompt": False,
    }

    head = vllm_cluster.head
    assert head is not None
    updated = httpx.post(
        f"{head.url}/update",
        json={"model": "m", **CONFIG, "lora_adapters": {"a2": "/adapters/a2"}},
        timeout=30,
    )
    assert updated.status_code == 200, updated.text
    assert list(updated.json()["adapters"].values()) == ["updated"]
    assert ask("m:a2")
    with pytest.raises(openai.NotFoundError):
        ask("m:a1")


def test_a_dying_vllm_process_fails_its_instance_and_is_replaced(vllm_cluster: Cluster) -> None:
    vllm_cluster.deploy("m", **CONFIG, auto_scaling_config={"min_instances": 1})

    def ready() -> list[str]:
        instances = vllm_cluster.model_status("m")["instances"]
        return [i["instance_id"] for i in instances if i["state"] == "ready"]

    first = wait_until(ready, 30, "the first instance")
    client = vllm_cluster.client()
    with pytest.raises(openai.APIStatusError) as died:
        client.completions.create(model="m", prompt="STANDIN-DIE now", max_tokens=2)
    # Each attempt killed an instance: the request fails after max_attempts.
    assert died.value.status_code == 502 and died.value.code == "attempts_exhausted"
    replacement = wait_until(lambda: (r := ready()) and r != first and r, 60, "a replacement")
    assert len(replacement) == 1
    assert client.completions.create(model="m", prompt="hi", max_tokens=2).choices[0].text


def test_a_model_no_worker_can_run_is_refused_at_once(cluster: Cluster) -> None:
    cluster.start_head()
    # No GPU here: whether vLLM's CPU build is installed or not, no worker runs this.
    cluster.start_worker()
    cluster.deploy("m", **CONFIG, num_gpus=1)
    wait_until(lambda: cluster.model_status("m")["unschedulable"], 10, "the status note")
    assert "no live worker" in cluster.model_status("m")["unschedulable"]
    client = cluster.client()
    started = time.monotonic()
    with pytest.raises(openai.APIStatusError) as refused:
        client.completions.create(model="m", prompt="hi", max_tokens=2)
    assert refused.value.status_code == 503 and refused.value.code == "model_unschedulable"
    assert time.monotonic() - started < 2


def sleepy_config(tmp_path: Path) -> dict[str, Any]:
    """A model in sleep mode that sleeps one second after its last request; its weights
    (a file the stand-in never reads) have a size the worker can count."""
    weights = tmp_path / "tiny"
    weights.mkdir(exist_ok=True)
    (weights / "model.safetensors").write_bytes(b"\0" * 1_000_000)
    return {
        "backend": "vllm",
        "backend_config": {
            "pretrained_model_name_or_path": str(weights),
            "sleep_mode": True,
            "extra_args": ["--standin-wake-delay", "0.5"],
        },
        "auto_scaling_config": {"keep_alive": 1},
    }


def instances(cluster: Cluster, model: str) -> list[tuple[str, str]]:
    status = cluster.model_status(model)
    return [(i["instance_id"], i["state"]) for i in status["instances"]] if status else []


def test_an_idle_instance_sleeps_and_the_next_request_wakes_it(
    vllm_cluster: Cluster, tmp_path: Path
) -> None:
    vllm_cluster.deploy("s", **sleepy_config(tmp_path))
    client = vllm_cluster.client()
    assert client.completions.create(model="s", prompt="hi", max_tokens=2).choices[0].text
    [(first, _)] = instances(vllm_cluster, "s")
    wait_until(lambda: instances(vllm_cluster, "s") == [(first, "sleeping")], 20, "sleep")

    # Asleep, it serves nothing (the stand-in would answer 503); a request wakes it, and
    # the same instance answers: no new process was started.
    reply = client.completions.create(model="s", prompt="hi again", max_tokens=3)
    assert reply.choices[0].text
    assert instances(vllm_cluster, "s") == [(first, "ready")]
    worker_url = vllm_cluster.status()["workers"][0]["url"]
    text = httpx.get(f"{worker_url}/metrics", timeout=5).text
    assert re.search(r'sllm_sleep_seconds_count\{change="wake",model="s"\} 1\.0', text), text
    head = vllm_cluster.head
    assert head is not None
    head_text = httpx.get(f"{head.url}/metrics", timeout=5).text
    assert re.search(r'sllm_placements_total\{model="s",tier="sleeping"\} 1\.0', head_text)

    # Deleted while asleep, the model's instance stops and the model goes.
    wait_until(lambda: instances(vllm_cluster, "s") == [(first, "sleeping")], 20, "sleep again")
    resp = httpx.post(
        f"{head.url}/delete", json={"model": "s"}, headers=vllm_cluster.admin_headers(), timeout=10
    )
    assert resp.status_code == 200, resp.text
    wait_until(lambda: vllm_cluster.model_status("s") is None, 20, "the model gone")
    wait_until(lambda: vllm_cluster.status()["workers"][0]["instances"] == [], 20, "the stop")


def test_an_instance_without_room_to_sleep_is_stopped(cluster: Cluster, tmp_path: Path) -> None:
    cluster.start_head()
    # No host memory given to keep models in: nothing may sleep.
    cluster.start_worker(**{ENTRYPOINT_ENV: "tests.vllm_standin", "SLLM_MEMORY_CACHE_GB": "0"})
    cluster.deploy("s", **sleepy_config(tmp_path))
    client = cluster.client()
    assert client.completions.create(model="s", prompt="hi", max_tokens=2).choices[0].text
    wait_until(lambda: instances(cluster, "s") == [], 20, "the stop")
    assert cluster.head is not None
    assert "cannot sleep" in cluster.head.log.read_text()
    assert client.completions.create(model="s", prompt="hi", max_tokens=2).choices[0].text
