"""`sllm status` tables read /status's JSON as the head writes it."""

from __future__ import annotations

from rich.console import Console

from sllm.client.status_view import status_tables

STATUS = {
    "models": [
        {
            "model": "chat",
            "backend": "dummy",
            "state": "active",
            "queue_length": 3,
            "in_flight": 2,
            "instances": [
                {
                    "instance_id": "chat-1",
                    "node_id": "n1",
                    "state": "ready",
                    "outstanding": 2,
                    "ready_at": 990.0,
                    "last_finished": None,
                    "reason": None,
                },
                {
                    "instance_id": "chat-2",
                    "node_id": "n2",
                    "state": "starting",
                    "outstanding": 0,
                    "ready_at": None,
                    "last_finished": None,
                    "reason": None,
                },
            ],
            "unschedulable": None,
            "config": {"auto_scaling_config": {"min_instances": 0, "max_instances": 4}},
        }
    ],
    "workers": [
        {
            "node_id": "n1",
            "url": "http://10.0.0.5:8001",
            "healthy": True,
            "seconds_since_heartbeat": 4.2,
            "instances": [{"instance_id": "chat-1"}],
            "resources": {
                "cpu_count": 8,
                "memory_total": 32 * 2**30,
                "memory_available": 20 * 2**30,
                "cpu_percent": 25.0,
                "gpus": [
                    {
                        "index": 0,
                        "name": "H100",
                        "memory_free": 70 * 2**30,
                        "memory_total": 80 * 2**30,
                    }
                ],
                "sllm_memory": {"host": 3 * 2**30, "gpu": 2 * 2**30},
            },
            "warm_processes": 1,
            "cache": [{"source": "smollm2-135m", "tier": "memory", "bytes": 2**29}],
        }
    ],
}


def render(status: dict[str, object]) -> str:
    console = Console(record=True, width=200)
    for table in status_tables(status, now=1000.0):
        console.print(table)
    return console.export_text()


def test_models_instances_and_workers_are_shown() -> None:
    text = render(STATUS)
    chat_row = next(line for line in text.splitlines() if "│ chat " in line and "dummy" in line)
    for cell in ("active", "1/2", "0..4", "3", "2"):
        assert f" {cell} " in chat_row
    assert "chat-1" in text and "chat-2" in text and "starting" in text
    assert "10s ago" in text  # chat-1 ready at 990, now 1000
    worker_row = next(line for line in text.splitlines() if "│ n1 " in line and "ok" in line)
    # Used / total, in GiB, as the dashboard shows them; and what sllm itself holds.
    assert "12.0 / 32.0" in worker_row and "0: 10.0 / 80.0" in worker_row
    assert "25% of 8" in worker_row and " 3.0 + GPU 2.0 " in worker_row
    stored = next(line for line in text.splitlines() if "smollm2-135m" in line)
    assert "memory" in stored and "0.5" in stored


def test_the_tables_fit_a_100_column_terminal_and_fold_on_a_narrower_one() -> None:
    for width in (100, 60):
        console = Console(record=True, width=width)
        for table in status_tables(STATUS, now=1000.0):
            console.print(table)
        text = console.export_text()
        assert max(len(line) for line in text.splitlines()) <= width
        if width >= 100:  # nothing folded: whole values on their lines
            assert "chat-2" in text and "12.0 / 32.0" in text and "smollm2-135m" in text


def test_a_worker_says_why_it_cannot_run_a_backend() -> None:
    why = "the installed vllm is the CUDA build and this worker has no NVIDIA GPU"
    worker = {**STATUS["workers"][0], "unavailable": {"vllm": why}}  # type: ignore[index]
    text = render({**STATUS, "workers": [worker]})
    row = next(line for line in text.splitlines() if "│ vllm " in line)
    assert "n1" in row and why in row
    assert "cannot run" not in render(STATUS)


def test_an_empty_cluster_says_what_to_do() -> None:
    text = render({"models": [], "workers": []})
    assert "sllm deploy CONFIG.json" in text and "sllm worker --head-url" in text


def test_a_redis_that_refuses_writes_comes_first_and_a_suspect_worker_says_so() -> None:
    refusal = "OutOfMemoryError: command not allowed when used memory > 'maxmemory'."
    worker = {**STATUS["workers"][0], "healthy": False, "suspect": "health probe refused"}  # type: ignore[index]
    text = render({**STATUS, "workers": [worker], "redis": {"writable": False, "refusal": refusal}})
    first = text.index("refuses writes")
    assert first < text.index("Models") and refusal in text
    assert any("│ n1 " in line and "suspect" in line for line in text.splitlines())
    writable = render({**STATUS, "redis": {"writable": True, "refusal": None}})
    assert "refuses writes" not in writable


def test_a_draining_worker_says_so() -> None:
    worker = {**STATUS["workers"][0], "drain": "draining"}  # type: ignore[index]
    rows = render({**STATUS, "workers": [worker]}).splitlines()
    assert any("│ n1 " in line and "draining" in line for line in rows)
    assert "draining" not in render(STATUS)
