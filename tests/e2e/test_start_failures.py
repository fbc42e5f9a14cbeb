"""A model whose instances cannot start: after two starts that fail the same way, its
waiting requests get the backend's own message at once, `sllm status` says why, and an
update of the model lets it start again."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import openai
import pytest

from tests.e2e.conftest import Cluster, wait_until
from tests.tiny_models import build_tiny_causal_lm

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]


def test_a_model_that_fails_to_start_the_same_way_fails_fast_until_updated(
    cluster: Cluster, tmp_path: Path
) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    # A config.json transformers cannot read: every start fails the same way.
    (broken / "config.json").write_text('{"model_type": "no-such-architecture"}')
    cluster.start_head()
    cluster.start_worker()
    config = {
        "backend": "transformers",
        "backend_config": {"pretrained_model_name_or_path": str(broken)},
    }
    cluster.deploy("m", **config)
    client = cluster.client()
    started = time.monotonic()
    with pytest.raises(openai.APIStatusError) as failed:
        client.completions.create(model="m", prompt="hi", max_tokens=2)
    took = time.monotonic() - started
    assert failed.value.status_code == 503 and failed.value.code == "model_unschedulable"
    assert "failed to start 2 times the same way" in str(failed.value)
    assert "no-such-architecture" in str(failed.value), str(failed.value)
    assert took < 60  # not the request's timeout (60 s here, 600 by default)

    status = cluster.model_status("m")
    assert status is not None and "no-such-architecture" in status["unschedulable"]
    [(failures_node, failures)] = status["start_failures"].items()
    assert failures["count"] == 2
    # Refused at once from now on, no start tried.
    started = time.monotonic()
    with pytest.raises(openai.APIStatusError) as again:
        client.completions.create(model="m", prompt="hi", max_tokens=2)
    assert again.value.status_code == 503 and time.monotonic() - started < 2

    def note() -> str:
        return cluster.model_status("m")["unschedulable"] or ""  # type: ignore[index]

    # A new worker may start it: the note goes (until that one fails the same way).
    cluster.start_worker()
    wait_until(lambda: not note(), 20, "the note cleared by a new worker")
    assert list(cluster.model_status("m")["start_failures"]) == [failures_node]  # type: ignore[index]
    cluster.procs[-1].stop()
    wait_until(note, 30, "the note back once that worker is gone")

    fixed = {"pretrained_model_name_or_path": str(build_tiny_causal_lm(tmp_path / "lm"))}
    assert cluster.head is not None
    resp = httpx.post(
        f"{cluster.head.url}/update",
        json={"model": "m", **config, "backend_config": fixed},
        headers=cluster.admin_headers(),
        timeout=10,
    )
    assert resp.status_code == 200, resp.text
    wait_until(lambda: not note(), 20, "the note cleared by the update")
    reply = client.completions.create(model="m", prompt="hi", max_tokens=2)
    assert reply.choices[0].text is not None
