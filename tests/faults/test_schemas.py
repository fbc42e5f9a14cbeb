"""Schemathesis against the head's and the worker's OpenAPI schemas, on real processes.

Real ``sllm head`` and ``sllm worker`` processes around a real Redis, with a warm dummy
model, so generated requests run the whole path (gateway, queue, dispatcher, worker,
backend) and streamed answers come through a real server, as SSE. Every answer must be
no 5xx and must match what the schema declares: its status, its content type and its
body (each SSE event of a stream too).

Checks left out, because the API cannot meet them by design:
- ``positive_data_acceptance``: a request the schema allows may still be refused, and
  rightly: a model that is not deployed (404), ``min_instances`` above
  ``max_instances`` (400), an adapter the model lacks (404), an instance that is not on
  the worker (404). JSON Schema cannot say these.
- ``negative_data_rejection``: pydantic validates in lax mode, as OpenAI's API does
  accept ``"5"`` for ``5`` and ``1.0`` for ``1``, so some data the schema calls invalid
  is accepted on purpose.
- ``ignored_auth``, ``use_after_free``, ``ensure_resource_availability``: these run
  without keys (tests/e2e/test_auth.py covers auth) and statelessly.

Bounds that keep this a one-minute CI test on two loaded cores, and the cluster sane:
``EXAMPLES`` cases per operation and generation mode (``SLLM_SCHEMA_EXAMPLES=300`` for a
deeper run), no shrinking (a failure shows its request as generated), deploy configs
with ``min_instances`` set to 0 so generated models never start backends, a warm model
with a small context, and generated OpenAI requests sent to it two times in three, half
of those streamed (a made-up model name is a 404, which says little).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

import httpx
import hypothesis
import hypothesis.errors
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase
from hypothesis import strategies as st
from schemathesis import Case, GenerationMode
from schemathesis.checks import CheckFunction, not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.e2e.conftest import Cluster, wait_until

pytestmark = pytest.mark.timeout(240)

CHECKS: list[CheckFunction] = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
]
EXAMPLES = int(os.environ.get("SLLM_SCHEMA_EXAMPLES", "40"))
WARM = "echo"
GENERATION = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/responses")

# How a generated case is steered, by a number Hypothesis draws in [0, 3).
Steer = Callable[[Case, int], None]
# Headers that frame the HTTP message: the client sets them from what it sends. Negative
# generation adds headers of random names, once "content-length: k*9siI2b": no longer an
# HTTP request, which uvicorn refuses (400, text/plain) before any route or schema.
FRAMING = {"content-length", "transfer-encoding", "host", "connection"}


def leave_framing_to_the_client(case: Case) -> None:
    if case.headers:
        for name in [n for n in case.headers if n.lower() in FRAMING]:
            del case.headers[name]


def fuzz(schema_url: str, base_url: str, steer: Steer, examples: int = EXAMPLES) -> list[str]:
    """Run every operation of the schema ``examples`` times in each generation mode;
    the failures, one text each (empty when none)."""
    schema = schemathesis.openapi.from_url(schema_url)
    failures: list[str] = []
    for result in schema.get_all_operations():
        operation = result.ok()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @hypothesis.settings(
                max_examples=examples,
                deadline=None,
                database=None,
                phases=[Phase.explicit, Phase.generate],
                suppress_health_check=list(HealthCheck),
                print_blob=True,
            )
            @hypothesis.given(
                case=operation.as_strategy(generation_mode=mode), pick=st.integers(0, 2)
            )
            def one(case: Case, pick: int) -> None:
                leave_framing_to_the_client(case)
                steer(case, pick)
                case.call_and_validate(base_url=base_url, checks=CHECKS, timeout=30)

            try:
                one()
            except hypothesis.errors.Unsatisfiable:
                # Nothing to make invalid: the operation takes no parameters or body.
                assert mode is GenerationMode.NEGATIVE, operation.label
            # Every operation runs, then all failures show (Schemathesis raises groups).
            except (Exception, FailureGroup) as exc:
                failures.append(f"{operation.label} ({mode.value}): {exc}")
    return failures


def steer_head(case: Case, pick: int) -> None:
    body = case.body
    if not isinstance(body, dict):
        return
    if case.path in GENERATION and pick:
        # A third as generated, a third to the warm model, a third streamed from it
        # (Hypothesis mostly leaves the optional `stream` out).
        body["model"] = WARM
        if pick == 2 and case.path != "/v1/embeddings":
            body["stream"] = True
    if case.path in ("/register", "/update"):
        scaling = body.get("auto_scaling_config")
        if isinstance(scaling, dict):
            # Valid whatever max_instances is, and no backend starts for a made-up model.
            scaling["min_instances"] = 0
        if body.get("model") == WARM:
            body["model"] = f"{WARM}-other"


def steer_nothing(case: Case, pick: int) -> None:
    """The worker's operations are fuzzed as generated: random backends are refused
    before a process starts, and ids match no instance (the head's own calls are
    covered end to end elsewhere)."""


def _ready(cluster: Cluster, model: str) -> bool:
    status = cluster.model_status(model)
    return status is not None and any(i["state"] == "ready" for i in status["instances"])


def _cluster_with_warm_model(cluster: Cluster) -> None:
    cluster.start_head()
    cluster.start_worker()
    cluster.deploy(
        WARM,
        auto_scaling_config={"min_instances": 1, "max_instances": 1},
        # A small context keeps every answer quick: n = 16 streams of a long max_tokens
        # are thousands of SSE events, each through Redis.
        backend_config={"context_length": 256},
    )
    wait_until(lambda: _ready(cluster, WARM), 30, f"{WARM} to be ready")


def test_the_head_answers_every_generated_request_as_its_schema_says(cluster: Cluster) -> None:
    _cluster_with_warm_model(cluster)
    assert cluster.head is not None
    started = time.monotonic()
    failures = fuzz(f"{cluster.head.url}/openapi.json", cluster.head.url, steer_head)
    print(f"head: {time.monotonic() - started:.1f} s")
    assert not failures, "\n\n".join(failures) + "\n" + cluster.logs()
    # Still serving after all of it.
    assert _ready(cluster, WARM)


def test_the_worker_answers_every_generated_request_as_its_schema_says(
    cluster: Cluster,
) -> None:
    _cluster_with_warm_model(cluster)
    worker = cluster.procs[-1]
    started = time.monotonic()
    failures = fuzz(f"{worker.url}/openapi.json", worker.url, steer_nothing)
    print(f"worker: {time.monotonic() - started:.1f} s")
    assert not failures, "\n\n".join(failures) + "\n" + cluster.logs()
    assert httpx.get(f"{worker.url}/health", timeout=5).status_code == 200
