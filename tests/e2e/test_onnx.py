"""The onnx backend in a real cluster: a model converted to ONNX by the worker when it
is deployed (before any request), answered through the OpenAI SDK, then, scaled to
zero, started again from the worker's memory tier."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e.conftest import Cluster, wait_until
from tests.e2e.test_cold_start_tiers import placements, tier_of
from tests.tiny_models import build_tiny_causal_lm

pytest.importorskip("onnxruntime_genai")
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]


def test_an_onnx_model_is_converted_on_deploy_then_starts_from_disk_and_memory(
    cluster: Cluster, tmp_path: Path
) -> None:
    source = str(build_tiny_causal_lm(tmp_path / "tiny"))
    cluster.start_head()
    worker = cluster.start_worker()
    cluster.deploy(
        "tiny",
        backend="onnx",
        backend_config={"pretrained_model_name_or_path": source},
        auto_scaling_config={"min_instances": 0, "max_instances": 1, "keep_alive": 1},
    )
    # Converted by the worker before any request, and no instance started for it.
    wait_until(lambda: tier_of(cluster, source) == "disk", 120, "the model converted on deploy")
    assert cluster.model_status("tiny")["instances"] == []  # type: ignore[index]
    client = cluster.client()
    stream = client.chat.completions.create(
        model="tiny",
        messages=[{"role": "user", "content": "hello"}],
        max_tokens=6,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    usage = chunks[-1].usage
    assert usage is not None and 0 < usage.completion_tokens <= 6
    reply = client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "hello"}], max_tokens=6, temperature=0
    )
    assert reply.choices[0].message.content == text
    stored = [p for p in (cluster.workdir / "models" / "store").iterdir() if p.is_dir()]
    assert len(stored) == 1 and (stored[0] / "model.onnx").is_file(), stored
    assert placements(cluster, "disk") == 1

    wait_until(
        lambda: cluster.model_status("tiny")["instances"] == [],  # type: ignore[index]
        30,
        "scale to zero",
    )
    log = worker.log_tail(400)
    if "no memory tier" in log:  # a machine where this process may not lock memory
        assert "CAP_IPC_LOCK" in log
        return
    wait_until(lambda: tier_of(cluster, source) == "memory", 30, "the model held in memory")
    again = client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "hello"}], max_tokens=6, temperature=0
    )
    assert again.choices[0].message.content == text
    assert placements(cluster, "memory") == 1
