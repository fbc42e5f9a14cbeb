"""Live migration with real processes: a stream moved to another instance on purpose
(``POST /instances/{id}/migrate``) reads as one stream, identical to an unmoved one;
a destination that dies leaves it where it was; a source that dies hands it to the
resume path."""

from __future__ import annotations

import concurrent.futures
import signal
import threading
import time
from typing import Any

import httpx
import pytest

from sllm.client.launcher import Child
from tests.e2e.conftest import wait_until
from tests.e2e.test_drain import sllm
from tests.faults.conftest import Cluster
from tests.faults.test_stream_resume import MESSAGES, events, text_of, worker_serving
from tests.integration.test_store import NO_SMOLLM2

pytestmark = pytest.mark.timeout(120)

CHAT = "/v1/chat/completions"
# Words a second of the dummy: streams long enough to be moved mid-way.
SPEED = 40.0


def two_instances(cluster: Cluster, **knobs: Any) -> list[Child]:
    cluster.start_head()
    workers = [cluster.start_worker(), cluster.start_worker()]
    cluster.deploy(
        "m",
        backend_config={"tokens_per_second": SPEED, **knobs},
        auto_scaling_config={"min_instances": 2, "max_instances": 2, "keep_alive": 60},
    )
    cluster.wait_ready("m", 2)
    return workers


def body_for(path: str, tokens: int = 60) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": "m",
        "max_tokens": tokens,
        "seed": 5,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    chat = path == CHAT
    body.update({"messages": MESSAGES} if chat else {"prompt": "once upon a time by the sea"})
    return body


def migrate(cluster: Cluster, instance_id: str) -> dict[str, Any]:
    assert cluster.head is not None
    resp = httpx.post(
        f"{cluster.head.url}/instances/{instance_id}/migrate",
        headers=cluster.admin_headers(),
        timeout=10,
    )
    assert resp.status_code == 200, resp.text
    answer: dict[str, Any] = resp.json()
    return answer


def all_events(head: Child, bodies: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """The events of streamed completions, run at once."""
    with concurrent.futures.ThreadPoolExecutor(len(bodies)) as pool:
        return list(pool.map(lambda b: list(events(head, "/v1/completions", b)), bodies))


def scale(cluster: Cluster, scaling: dict[str, Any]) -> None:
    """Update model m's scaling (its backend_config as deployed)."""
    assert cluster.head is not None
    config = {"model": "m", "backend": "dummy", "backend_config": {"tokens_per_second": SPEED}}
    resp = httpx.post(
        f"{cluster.head.url}/update",
        json={**config, "auto_scaling_config": scaling},
        headers=cluster.admin_headers(),
        timeout=10,
    )
    assert resp.status_code == 200, resp.text


def words(got: list[dict[str, Any]], chat: bool) -> int:
    return len("".join(text_of(e, chat) for e in got).split())


def check_one_stream(got: list[dict[str, Any]], whole: list[dict[str, Any]], chat: bool) -> None:
    """``got`` reads as the unmoved ``whole``: the same text and usage, one id, one
    finish, one opening chunk."""
    assert all("error" not in e for e in got), got[-1]
    assert "".join(text_of(e, chat) for e in got) == "".join(text_of(e, chat) for e in whole)
    assert got[-1]["usage"] == whole[-1]["usage"]
    assert len({e["id"] for e in got}) == 1
    finishes = [c["finish_reason"] for e in got for c in e["choices"] if c["finish_reason"]]
    assert len(finishes) == 1
    if chat:
        assert sum(1 for e in got for c in e["choices"] if "role" in c["delta"]) == 1


def fingerprints(got: list[dict[str, Any]]) -> list[str]:
    """The instances the stream came from, in order, each run of chunks once."""
    runs: list[str] = []
    for event in got:
        fp = event.get("system_fingerprint")
        if fp and (not runs or runs[-1] != fp):
            runs.append(fp)
    return runs


@pytest.mark.parametrize("path", [CHAT, "/v1/completions"])
def test_a_stream_moves_mid_answer_and_reads_as_one(cluster: Cluster, path: str) -> None:
    two_instances(cluster)
    head = cluster.head
    assert head is not None
    chat = path == CHAT
    whole = list(events(head, path, body_for(path)))
    got: list[dict[str, Any]] = []
    asked: dict[str, Any] = {}
    for event in events(head, path, body_for(path)):
        got.append(event)
        if not asked and words(got, chat) >= 8:
            asked = migrate(cluster, event["system_fingerprint"])
    assert len(asked["moves"]) == 1 and not asked["staying"], asked
    check_one_stream(got, whole, chat)
    runs = fingerprints(got)
    assert len(runs) == 2 and runs[1] == next(iter(asked["moves"].values())), runs
    # Visible: the dashboard's list, the metrics (a warm-up round: the dummy keeps
    # prefixes), the client's gap.
    data = httpx.get(f"{head.url}/dashboard/data", headers=cluster.admin_headers(), timeout=5)
    [entry] = data.json()["migrations"]
    assert (entry["from"], entry["to"], entry["reason"]) == (runs[0], runs[1], "operator")
    assert entry["outcome"] == "moved" and entry["rounds"] >= 1 and entry["gap"] < 1.0, entry
    metrics = httpx.get(f"{head.url}/metrics", headers=cluster.admin_headers(), timeout=5).text
    assert 'sllm_migrations_total{model="m",outcome="moved",reason="operator"} 1.0' in metrics
    assert 'sllm_migration_gap_seconds_count{model="m"} 1.0' in metrics


def answering(cluster: Cluster) -> str:
    """The instance of model m that runs a request, once one does."""

    def busy() -> str | None:
        instances = (cluster.model_status("m") or {}).get("instances", [])
        return next((i["instance_id"] for i in instances if i["outstanding"]), None)

    found: str = wait_until(busy, 10, "a request under way", interval=0.05)
    return found


@pytest.mark.parametrize("path", [CHAT, "/v1/completions"])
def test_an_answer_moves_mid_way_and_reads_as_one(cluster: Cluster, path: str) -> None:
    """Not streamed: the source's backend ends the answer at a token, the gateway goes
    on from its text on the destination and joins the two into one answer."""
    two_instances(cluster)
    head = cluster.head
    assert head is not None
    body = {**body_for(path), "stream": False}
    del body["stream_options"]
    unmoved = httpx.post(f"{head.url}{path}", json=body, timeout=30).json()
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        later = pool.submit(httpx.post, f"{head.url}{path}", json=body, timeout=30)
        source = answering(cluster)
        time.sleep(0.5)  # some 20 words into its 60
        asked = migrate(cluster, source)
        moved = later.result().json()
    assert len(asked["moves"]) == 1 and not asked["unmovable"], asked
    [destination] = asked["moves"].values()
    assert moved["system_fingerprint"] == destination != source
    assert "sllm_moved" not in moved
    text = "message" if path == CHAT else "text"
    got, want = moved["choices"][0], unmoved["choices"][0]
    assert got[text] == want[text] and got["finish_reason"] == want["finish_reason"]
    assert moved["usage"] == unmoved["usage"]
    metrics = httpx.get(f"{head.url}/metrics", headers=cluster.admin_headers(), timeout=5).text
    assert 'sllm_migrations_total{model="m",outcome="moved",reason="operator"} 1.0' in metrics
    data = httpx.get(f"{head.url}/dashboard/data", headers=cluster.admin_headers(), timeout=5)
    [entry] = data.json()["migrations"]
    assert (entry["from"], entry["to"], entry["outcome"]) == (source, destination, "moved")


def test_an_answer_of_several_choices_is_not_moved(cluster: Cluster) -> None:
    two_instances(cluster)
    head = cluster.head
    assert head is not None
    body = {**body_for("/v1/completions"), "stream": False, "n": 2}
    del body["stream_options"]
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        later = pool.submit(httpx.post, f"{head.url}/v1/completions", json=body, timeout=30)
        source = answering(cluster)
        asked = migrate(cluster, source)
        answer = later.result().json()
    assert not asked["moves"] and len(asked["unmovable"]) == 1, asked
    assert {c["index"] for c in answer["choices"]} == {0, 1}
    assert answer["system_fingerprint"] == source


def test_a_stream_moves_twice_in_a_row(cluster: Cluster) -> None:
    two_instances(cluster)
    head = cluster.head
    assert head is not None
    whole = list(events(head, CHAT, body_for(CHAT)))
    got: list[dict[str, Any]] = []
    asks = 0
    for event in events(head, CHAT, body_for(CHAT)):
        got.append(event)
        if words(got, True) >= 8 * (asks + 1) and asks < 2:
            if asks == 0:
                migrate(cluster, event["system_fingerprint"])
            else:  # the second time as an operator does, with the CLI
                done = sllm("migrate", event["system_fingerprint"], "--head-url", head.url)
                assert done.returncode == 0, done.stderr
                assert "1 asked to move, 0 staying" in done.stdout, done.stdout
            asks += 1
    check_one_stream(got, whole, True)
    runs = fingerprints(got)
    assert len(runs) == 3 and runs[0] == runs[2] != runs[1], runs


@pytest.mark.parametrize("dies", ["destination", "source"])
def test_an_instance_that_dies_while_the_stream_moves(cluster: Cluster, dies: str) -> None:
    """The destination dies during its warm-up: the stream stays where it was. The
    source dies then: the resume path takes the stream over."""
    # Each prompt word costs a prefill: the destination's warm-up (prompt and some
    # 10 words of answer) takes seconds, the time to kill one of them.
    workers = two_instances(cluster, prefill_per_word=0.15)
    head = cluster.head
    assert head is not None
    whole = list(events(head, CHAT, body_for(CHAT, 100)))
    got: list[dict[str, Any]] = []
    for event in events(head, CHAT, body_for(CHAT, 100)):
        got.append(event)
        if len(got) > 1 and words(got, True) >= 8 and words(got[:-1], True) < 8:
            asked = migrate(cluster, event["system_fingerprint"])
            destination = next(iter(asked["moves"].values()))
            victim = destination if dies == "destination" else event["system_fingerprint"]
            kill = worker_serving(cluster, workers, victim).popen.send_signal
            threading.Timer(0.4, kill, [signal.SIGKILL]).start()
    check_one_stream(got, whole, True)
    assert len(fingerprints(got)) == (1 if dies == "destination" else 2)


def test_a_client_that_hangs_up_while_its_stream_moves_leaves_nothing_running(
    cluster: Cluster,
) -> None:
    two_instances(cluster, prefill_per_word=0.05)
    head = cluster.head
    assert head is not None
    got: list[dict[str, Any]] = []
    for event in events(head, CHAT, body_for(CHAT, 400)):
        got.append(event)
        if words(got, True) >= 8:
            migrate(cluster, event["system_fingerprint"])
            break  # the client hangs up as the move begins

    def idle() -> bool:
        status = cluster.model_status("m") or {}
        return all(i["outstanding"] == 0 for i in status.get("instances", []))

    wait_until(idle, 15, "both instances idle")
    time.sleep(1.0)  # a warm-up or continuation queued late would show now
    assert idle(), cluster.model_status("m")


def test_a_stream_of_several_choices_is_not_moved(cluster: Cluster) -> None:
    two_instances(cluster)
    head = cluster.head
    assert head is not None
    body = {**body_for(CHAT), "n": 2}
    got: list[dict[str, Any]] = []
    for event in events(head, CHAT, body):
        got.append(event)
        if len(got) == 10:
            migrate(cluster, event["system_fingerprint"])
    assert all("error" not in e for e in got)
    assert len(fingerprints(got)) == 1
    metrics = httpx.get(f"{head.url}/metrics", headers=cluster.admin_headers(), timeout=5).text
    assert 'sllm_migrations_total{model="m",outcome="not_movable",reason="operator"} 1.0' in metrics


def test_scale_in_moves_four_long_streams_and_stops_the_instance_in_seconds(
    cluster: Cluster,
) -> None:
    """Two instances, each with two long streams; the load wants one instance (four
    requests, threshold 4): one is emptied into the other and stops, and every stream
    reads as if nothing happened."""
    two_instances(cluster)
    head = cluster.head
    assert head is not None
    prompts = [f"story number {i} about the sea" for i in range(4)]

    def body(prompt: str) -> dict[str, Any]:
        return {**body_for("/v1/completions", 150), "prompt": prompt}

    wholes = all_events(head, [body(p) for p in prompts])
    got: list[list[dict[str, Any]]] = [[] for _ in prompts]

    def read(i: int) -> None:
        got[i].extend(events(head, "/v1/completions", body(prompts[i])))

    readers = [threading.Thread(target=read, args=(i,)) for i in range(4)]
    for i, reader in enumerate(readers):  # one at a time: two go to each instance
        reader.start()
        wait_until(lambda i=i: len(got[i]) >= 2, 20, f"stream {i} under way")
    before = {i["instance_id"] for i in cluster.wait_ready("m", 2)}
    where = [stream[-1]["system_fingerprint"] for stream in got]
    assert sorted(where.count(i) for i in before) == [2, 2], where
    scaled_in = time.monotonic()
    scaling = {
        "min_instances": 1,
        "max_instances": 2,
        "keep_alive": 1,
        "queue_per_instance_threshold": 4,
        "max_concurrency": 4,
    }
    scale(cluster, scaling)
    left = wait_until(
        lambda: len(cluster.model_status("m")["instances"]) == 1 and time.monotonic(),
        15,
        "one instance left",
    )
    for reader in readers:
        reader.join(60)
    assert left - scaled_in < 10, "the busy instance stopped in seconds, not at its streams' end"
    assert any(r.is_alive() for r in readers) is False
    for stream, whole in zip(got, wholes, strict=True):
        check_one_stream(stream, whole, False)
    (kept,) = {i["instance_id"] for i in cluster.model_status("m")["instances"]}
    # The streams of the instance that stopped moved to the one kept; the others stayed.
    for stream, was in zip(got, where, strict=True):
        assert fingerprints(stream) == ([was] if was == kept else [was, kept]), stream


def test_a_drained_worker_moves_its_running_stream_instead_of_waiting(cluster: Cluster) -> None:
    workers = two_instances(cluster)
    head = cluster.head
    assert head is not None
    whole = list(events(head, CHAT, body_for(CHAT, 150)))
    got: list[dict[str, Any]] = []
    node = ""
    drained_during_the_stream = False

    def drain_state() -> str | None:
        entry = next(w for w in cluster.status()["workers"] if w["node_id"] == node)
        state: str | None = entry["drain"]
        return state

    for event in events(head, CHAT, body_for(CHAT, 150)):
        got.append(event)
        if not node and words(got, True) >= 8:
            source = event["system_fingerprint"]
            assert worker_serving(cluster, workers, source) in workers
            node = next(
                w["node_id"]
                for w in cluster.status()["workers"]
                if any(i["instance_id"] == source for i in w["instances"])
            )
            resp = httpx.post(
                f"{head.url}/workers/{node}/drain", headers=cluster.admin_headers(), timeout=10
            )
            assert resp.status_code == 200, resp.text
        elif node and len(got) % 10 == 0 and not drained_during_the_stream:
            drained_during_the_stream = drain_state() == "drained"
    check_one_stream(got, whole, True)
    runs = fingerprints(got)
    assert len(runs) == 2 and runs[0] == source, runs
    # The stream went on elsewhere: the worker ran nothing long before it ended.
    assert drained_during_the_stream


def test_a_new_instance_takes_over_part_of_an_overloaded_ones_streams(cluster: Cluster) -> None:
    """Six long streams on one instance; a second starts (min_instances 2): the first
    sheds half its lead (three streams) to it, and every stream reads as one."""
    cluster.start_head()
    cluster.start_worker()
    cluster.deploy(
        "m",
        backend_config={"tokens_per_second": SPEED},
        auto_scaling_config={"min_instances": 1, "max_instances": 2, "keep_alive": 60},
    )
    cluster.wait_ready("m", 1)
    head = cluster.head
    assert head is not None
    prompts = [f"story number {i} about the sea" for i in range(6)]

    def body(prompt: str) -> dict[str, Any]:
        # 8 s of words: time for the second instance to start on a loaded machine.
        return {**body_for("/v1/completions", 320), "prompt": prompt}

    got: list[list[dict[str, Any]]] = [[] for _ in prompts]

    def read(i: int) -> None:
        got[i].extend(events(head, "/v1/completions", body(prompts[i])))

    readers = [threading.Thread(target=read, args=(i,)) for i in range(6)]
    for reader in readers:
        reader.start()
    wait_until(lambda: all(len(g) >= 3 for g in got), 20, "six streams under way")
    scale(cluster, {"min_instances": 2, "max_instances": 2, "keep_alive": 60})
    for reader in readers:
        reader.join(60)
    moved = [len(fingerprints(stream)) for stream in got]
    assert sorted(moved) == [1, 1, 1, 2, 2, 2], moved
    wholes = all_events(head, [body(p) for p in prompts])
    for stream, whole in zip(got, wholes, strict=True):
        check_one_stream(stream, whole, False)


@pytest.mark.timeout(400)
@NO_SMOLLM2
def test_a_demo_model_stream_moves_between_transformers_instances_as_it_would_have_run(
    cluster: Cluster,
) -> None:
    """The transformers backend keeps prefixes (continuous batching's shared pages), so
    the destination warms up first; the greedy text is the unmoved run's, streamed or
    not."""
    cluster.start_head()
    cluster.start_worker()
    cluster.deploy(
        "m",
        backend="transformers",
        backend_config={"pretrained_model_name_or_path": "smollm2-135m"},
        auto_scaling_config={"min_instances": 2, "max_instances": 2, "keep_alive": 60},
        startup_timeout=300,
    )
    cluster.wait_ready("m", 2, timeout=300)
    head = cluster.head
    assert head is not None
    story = [{"role": "user", "content": "Write a long story about a lighthouse keeper."}]
    body = {**body_for(CHAT, 48), "messages": story, "temperature": 0, "ignore_eos": True}
    del body["seed"]
    whole = list(events(head, CHAT, body))
    got: list[dict[str, Any]] = []
    asked: dict[str, Any] = {}
    for event in events(head, CHAT, body):
        got.append(event)
        if not asked and words(got, True) >= 10:
            asked = migrate(cluster, event["system_fingerprint"])
    check_one_stream(got, whole, True)
    assert len(fingerprints(got)) == 2
    data = httpx.get(f"{head.url}/dashboard/data", headers=cluster.admin_headers(), timeout=5)
    [entry] = data.json()["migrations"]
    assert entry["outcome"] == "moved" and entry["rounds"] >= 1, entry

    # Not streamed: cut at a token on the source, continued on the destination.
    answer = {**body, "stream": False}
    del answer["stream_options"]
    unmoved = httpx.post(f"{head.url}{CHAT}", json=answer, timeout=120).json()
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        later = pool.submit(httpx.post, f"{head.url}{CHAT}", json=answer, timeout=120)
        source = answering(cluster)
        time.sleep(1.5)  # some tokens into its 48
        asked = migrate(cluster, source)
        moved = later.result().json()
    assert len(asked["moves"]) == 1, asked
    assert moved["system_fingerprint"] != source
    assert moved["choices"][0]["message"] == unmoved["choices"][0]["message"]
    assert moved["usage"] == unmoved["usage"]
