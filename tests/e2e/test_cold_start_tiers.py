"""A transformers model through its cache tiers with real processes: stored on the
worker when it is deployed (before any request), started from disk, held in memory
after it scales to zero and started from there, each placement counted by tier, and
held in memory again by a restarted worker."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import Cluster, wait_until
from tests.tiny_models import build_tiny_causal_lm

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]


def tier_of(cluster: Cluster, source: str, url: str | None = None) -> str | None:
    """The source's tier on the worker at ``url`` (default: the only worker)."""
    workers = cluster.status()["workers"]
    [worker] = [w for w in workers if w["url"] == url] if url else workers
    return next((c["tier"] for c in worker.get("cache") or [] if c["source"] == source), None)


def placements(cluster: Cluster, tier: str) -> float:
    assert cluster.head is not None
    text = httpx.get(f"{cluster.head.url}/metrics", timeout=5).text
    found = re.search(rf'sllm_placements_total{{model="tiny",tier="{tier}"}} ([\d.]+)', text)
    return float(found.group(1)) if found else 0.0


def test_a_model_is_stored_on_deploy_then_held_in_memory_after_scale_to_zero(
    cluster: Cluster, tmp_path: Path
) -> None:
    source = str(build_tiny_causal_lm(tmp_path / "tiny"))
    cluster.start_head()
    worker = cluster.start_worker()
    cluster.deploy(
        "tiny",
        backend="transformers",
        backend_config={"pretrained_model_name_or_path": source},
        auto_scaling_config={"min_instances": 0, "max_instances": 1, "keep_alive": 1},
    )
    # Stored by the worker before any request, and no instance started for it.
    wait_until(lambda: tier_of(cluster, source) == "disk", 120, "the model stored on deploy")
    assert cluster.model_status("tiny")["instances"] == []  # type: ignore[index]

    client = cluster.client()
    reply = client.completions.create(model="tiny", prompt="hello", max_tokens=3)
    assert reply.usage is not None and reply.usage.completion_tokens > 0
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
    reply = client.completions.create(model="tiny", prompt="hello again", max_tokens=3)
    assert reply.usage is not None and reply.usage.completion_tokens > 0
    assert placements(cluster, "memory") == 1
    stored = [p for p in (cluster.workdir / "models" / "store").iterdir() if p.is_dir()]
    assert len(stored) == 1, stored

    # A worker restarted on the same storage holds it in memory again, with no instance
    # having run there.
    worker.stop()
    restarted = cluster.start_worker()
    wait_until(
        lambda: tier_of(cluster, source, restarted.url) == "memory", 30, "the memory tier back"
    )
