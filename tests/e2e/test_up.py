"""`sllm up` as a newcomer runs it: one process that owns a whole cluster."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import openai
import psutil
import pytest

from sllm.client.launcher import free_port

pytestmark = pytest.mark.e2e

SLLM = [sys.executable, "-m", "sllm"]


def _in_the_foreground() -> None:
    # As a terminal runs it: a shell without job control (a script's `cmd &`) starts
    # background commands with SIGINT ignored, and `sllm up` rightly keeps it ignored
    # then, so the Ctrl-C these tests send would never arrive.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class Up:
    def __init__(self, tmp_path: Path, *args: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        argv = [*SLLM, "up", "--port", str(self.port), "--data-dir", str(tmp_path), *args]
        self.proc = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            preexec_fn=_in_the_foreground,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def wait_for(self, text: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(text in line for line in self.lines):
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        pytest.fail(f"`sllm up` never printed {text!r}:\n" + "\n".join(self.lines))

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*SLLM, *args, "--head-url", self.url], capture_output=True, text=True, timeout=60
        )

    def descendants(self) -> list[psutil.Process]:
        return psutil.Process(self.proc.pid).children(recursive=True)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        self._reader.join(10)
        assert self.proc.stdout is not None
        self.proc.stdout.close()

    def interrupt(self) -> int:
        self.proc.send_signal(signal.SIGINT)
        return self.proc.wait(60)


@pytest.fixture
def up_no_demo(tmp_path: Path) -> Iterator[Up]:
    up = Up(tmp_path, "--no-demo")
    try:
        yield up
    finally:
        up.close()


def test_up_deploy_answer_status_and_a_clean_stop(up_no_demo: Up) -> None:
    up = up_no_demo
    up.wait_for("Ready in", 60)
    assert any(f"OpenAI base URL: {up.url}/v1" in line for line in up.lines)

    deployed = up.cli("deploy", "--model", "m", "--backend", "dummy")
    assert deployed.returncode == 0, deployed.stderr
    with openai.OpenAI(base_url=f"{up.url}/v1", api_key="unused", max_retries=0) as client:
        reply = client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "hello"}], max_tokens=4
        )
    assert reply.choices[0].finish_reason in ("stop", "length") and reply.system_fingerprint

    shown = up.cli("status", "--json")
    assert shown.returncode == 0, shown.stderr
    status = json.loads(shown.stdout)
    assert [m["model"] for m in status["models"]] == ["m"]
    assert [w["node_id"] for w in status["workers"]] == ["local"]
    assert up.cli("models").stdout.split() == ["m"]

    example = Path(__file__).resolve().parents[2] / "examples" / "openai_client.py"
    ran = subprocess.run(
        [
            sys.executable,
            str(example),
            "--base-url",
            f"{up.url}/v1",
            "--model",
            "m",
            "--embedding-model",
            "m",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ran.returncode == 0, ran.stderr
    assert "embeddings: 2 vectors" in ran.stdout

    children = up.descendants()
    commands = [" ".join(p.cmdline()) for p in children]
    # Redis, head, worker and the backend the request started: the stop must reach all.
    for part in ("redis-server", "sllm head", "sllm worker", "sllm.backends.dummy"):
        assert any(part in c for c in commands), (part, commands)

    assert up.interrupt() == 0
    _, alive = psutil.wait_procs(children, timeout=10)
    assert alive == [], [p.cmdline() for p in alive]


@pytest.mark.timeout(400)
def test_up_serves_the_demo_model_and_stops_on_sigterm(tmp_path: Path) -> None:
    up = Up(tmp_path)
    try:
        # The first start of SmolLM2 dequantizes its GGUF file (about 30 s here).
        up.wait_for("Ready in", 300)
        serving = next(line for line in up.lines if "'demo' on the" in line)
        with openai.OpenAI(base_url=f"{up.url}/v1", api_key="unused", max_retries=0) as client:
            reply = client.chat.completions.create(
                model="demo",
                messages=[{"role": "user", "content": "What is the capital of France?"}],
                max_tokens=30,
                temperature=0,
            )
        answer = reply.choices[0].message.content or ""
        if "SmolLM2" in serving:
            assert "Paris" in answer, answer
        else:  # a worker without the transformers extra: up must say why
            assert "dummy backend" in serving and "not a language model" in serving
        children = up.descendants()
        up.proc.send_signal(signal.SIGTERM)
        assert up.proc.wait(60) == 0
        _, alive = psutil.wait_procs(children, timeout=10)
        assert alive == []
    finally:
        up.close()


def test_up_refuses_a_taken_port(tmp_path: Path, up_no_demo: Up) -> None:
    up_no_demo.wait_for("Ready in", 60)
    second = subprocess.run(
        [*SLLM, "up", "--port", str(up_no_demo.port), "--data-dir", str(tmp_path / "b")],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert second.returncode == 1
    assert f"port {up_no_demo.port}" in second.stderr and "--port" in second.stderr
