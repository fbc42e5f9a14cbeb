"""Cold start of the demo model (SmolLM2-135M-Instruct, transformers, onnx or vLLM
backend) from each cache tier: time from a request for a model at zero instances to its
first token, through a real cluster on this machine (Redis, head, worker), split into
the phases the head and worker measure; against a fresh ``python -c`` that loads the
same model with plain transformers (``--backend onnx``: plain ONNX Runtime GenAI, the
store's int4 conversion) and generates one token (``--backend vllm``: against plain
vLLM's OpenAI server started fresh, to ready and to its first token). With ``--backend
onnx`` the ``none`` tier converts the model in the instance's start (no store ahead).

    python benchmarks/cold_start.py [--backend transformers|onnx|vllm] [--repeat 5]
                                    [--json OUT]
                                    [--warm-heap-gb N]

The worker runs with its defaults but for ``--warm-heap-gb`` when one is given here.

Tiers, in the order they are measured:

* ``none``: the first request, sent right after the deploy: nothing is stored yet (the
  worker began storing the model when it was deployed: the GGUF file dequantized, the
  weights stored; the instance waits for that, then loads); once.
* ``memory``: the worker held the model's pages in memory when its instance stopped
  (scale to zero after ``keep_alive``).
* ``disk (page cache)``: a worker with no memory tier (``SLLM_MEMORY_CACHE_GB=0``,
  started for these); the stored files are in the page cache, as they are on a worker
  that loaded the model recently but holds nothing.
* ``disk (evicted)``: the same, with the stored files' pages evicted first
  (posix_fadvise DONTNEED), so the weights come from the disk (on a VM the host may
  still cache it).

Phases: ``placement`` (head: decision until the worker accepted the start),
``process_start`` (worker: spawn, or hand-over to a warm process, until the backend
began loading), ``weight_load`` (the backend's whole build: tokenizer, weights,
batching set-up and its warm-up generation, of which ``warm_up`` is shown apart), and
``first_token`` (ready until the worker saw the first output). What is left of the
client's time (the request waiting for the autoscaler, readiness polling, reports
through Redis, dispatch) is ``other``.

With ``--backend vllm`` the tiers are ``none`` (first request after deploy: the model is
dequantized and stored, the instance starts in a fresh interpreter, and the worker's
pool of vLLM processes begins to fill), ``memory`` (from a warm vLLM process, the model
held in memory), and ``fresh process`` (a worker without warm processes: a new
interpreter imports vLLM). The instance's own steps come from the milestones
``sllm.backends.vllm_server`` writes in its log: ``process_start`` (spawn or hand-over
until sllm's entry runs), ``imports`` (vLLM's and the store's; none left in a warm
process), ``store`` (the store's check), ``engine_build`` (vLLM's config, its engine's
processes, the model's skeleton), ``weight_load``, ``kv_cache`` (the weights' processing
and the cache's sizing), ``warm_up`` (the cache's allocation, and a warm-up run where vLLM
makes one), ``server`` (the API server's set-up until the worker saw it ready).
With ``--num-gpus`` a fourth tier, ``sleeping``: a second model in vLLM's sleep mode,
its idle instance put to sleep (weights in host memory), woken by the request; its
``wake`` phase is the worker's ``sllm_sleep_seconds`` of the wake. The other tiers' model
runs without sleep mode, so that it scales to zero.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import psutil
from plain_starts import plain_onnx, plain_transformers
from prometheus_client.parser import text_string_to_metric_families

from sllm.backends.vllm_flags import VllmKnobs, cpu_kv_cache_bytes, vllm_args
from sllm.client.launcher import (
    Child,
    free_port,
    start_head,
    start_redis,
    start_worker,
    wait_warm_pools,
)
from sllm.worker.hardware import cpu_has_bf16

MODEL = "demo"
SOURCE = "smollm2-135m"
KEEP_ALIVE = 1.0
PHASES = ("placement", "process_start", "weight_load", "first_token")
VLLM_PHASES = (
    "placement",
    "process_start",
    "imports",
    "store",
    "engine_build",
    "weight_load",
    "kv_cache",
    "warm_up",
    "server",
    "first_token",
)
# Steps of a vLLM instance's start, each ending at the milestone of that name.
VLLM_STEPS = (
    ("process_start", "entry"),
    ("imports", "imported"),
    ("store", "stored"),
    ("engine_build", "load_begin"),
    ("weight_load", "load_end"),
    ("kv_cache", "kv_cache"),
    ("warm_up", "engine"),
)
# sllm's defaults; plain vLLM gets the flags and the KV cache sllm's instance gets.
# Without sleep mode (on by default with GPUs), so that an idle instance stops.
VLLM_CONFIG: dict[str, Any] = {"sleep_mode": False}
SLEEPY = "demo-sleeps"


def _sums(url: str, family_name: str, label: str, model: str) -> dict[str, float]:
    """A histogram's sums by ``label``, for ``model``, from a /metrics page."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    sums: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        if family.name != family_name:
            continue
        for sample in family.samples:
            if sample.name.endswith("_sum") and sample.labels.get("model") == model:
                sums[sample.labels[label]] = sample.value
    return sums


def _cold_start_sums(url: str) -> dict[str, float]:
    """sllm_cold_start_seconds_sum by phase."""
    return _sums(url, "sllm_cold_start_seconds", "phase", MODEL)


def _sleep_sums(url: str) -> dict[str, float]:
    """sllm_sleep_seconds_sum of the sleeping model, by change (sleep, wake)."""
    return _sums(url, "sllm_sleep_seconds", "change", SLEEPY)


def _wait(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"waited {timeout:g} s for {what}")
        time.sleep(0.1)


ENV = {"SLLM_LOG_LEVEL": "warning"}


class Bench:
    def __init__(
        self, work: Path, warm_heap_gb: float | None, backend: str, num_gpus: int = 0
    ) -> None:
        self.work = work
        self.warm_heap_gb = warm_heap_gb
        self.backend = backend
        # Made once: building an httpx client (its TLS context) took 40-75 ms here, which
        # httpx.stream() paid inside each measured request.
        self.client = httpx.Client(timeout=900)
        self.redis = start_redis(free_port(), work / "redis")
        self.head = start_head(free_port(), self.redis.url, work / "head.log", ENV)
        self.worker = self._worker(memory_tier=True)
        self.config: dict[str, Any] = {
            "model": MODEL,
            "backend": backend,
            "num_gpus": num_gpus,
            "backend_config": {
                "pretrained_model_name_or_path": SOURCE,
                **(VLLM_CONFIG if backend == "vllm" else {}),
            },
            "auto_scaling_config": {
                "min_instances": 0,
                "max_instances": 1,
                "keep_alive": KEEP_ALIVE,
            },
            "startup_timeout": 600,
        }
        _wait(lambda: bool(self.status()["workers"]), 30, "the worker's registration")
        httpx.post(f"{self.head.url}/register", json=self.config, timeout=30).raise_for_status()

    def _worker(self, *, memory_tier: bool = True, warm: bool = True) -> Child:
        env = {**ENV, "SLLM_HEARTBEAT_INTERVAL": "1"}
        if self.backend == "vllm":
            env["SLLM_LOG_LEVEL"] = "info"  # its "starting INSTANCE" line times the spawn
        if not warm:
            env["SLLM_WARM_PROCESSES"] = "0"
        if self.warm_heap_gb is not None:
            env["SLLM_WARM_HEAP_GB"] = str(self.warm_heap_gb)
        if not memory_tier:
            env["SLLM_MEMORY_CACHE_GB"] = "0"
        return start_worker(free_port(), self.head.url, self.work, env)

    def replace_worker(self, *, memory_tier: bool = True, warm: bool = True) -> None:
        """A new worker in place of the first: without a memory tier, or without warm
        processes."""
        _wait(lambda: self.instances() == 0, 120, "scale to zero")
        self.worker.stop()
        self.worker = self._worker(memory_tier=memory_tier, warm=warm)
        wait_warm_pools(self.head, [self.worker])

    def close(self) -> None:
        self.client.close()
        for child in (self.worker, self.head, self.redis):
            child.stop()

    def status(self) -> dict[str, Any]:
        data: dict[str, Any] = httpx.get(f"{self.head.url}/status", timeout=10).json()
        return data

    def instances(self, name: str = MODEL) -> int:
        return len(self.states(name))

    def states(self, name: str = MODEL) -> list[str]:
        model = next(m for m in self.status()["models"] if m["model"] == name)
        return [i["state"] for i in model["instances"]]

    @property
    def stored(self) -> list[Path]:
        return [p for p in (self.work / "models" / "store").glob("*") if p.is_dir()]

    def _live_worker(self) -> dict[str, Any]:
        return next(w for w in self.status()["workers"] if w["url"] == self.worker.url)

    def tier(self) -> str | None:
        cache = self._live_worker().get("cache") or []
        return next((c["tier"] for c in cache if c["source"] == SOURCE), None)

    def first_token(self, name: str = MODEL) -> float:
        """Seconds from sending a streamed chat request to its first content."""
        body = {
            "model": name,
            "messages": [{"role": "user", "content": "Say hello."}],
            "max_tokens": 4,
            "stream": True,
        }
        started = time.perf_counter()
        with self.client.stream("POST", f"{self.head.url}/v1/chat/completions", json=body) as resp:
            resp.raise_for_status()
            lines = resp.iter_lines()
            for line in lines:
                if line.startswith("data: ") and '"content"' in line:
                    first = time.perf_counter() - started
                    break
            else:
                raise RuntimeError("the stream ended without content")
            for _ in lines:  # the rest of the stream
                pass
        return first

    def _instance_logs(self) -> set[Path]:
        return set(self.work.glob("instances-*/*.log"))

    @staticmethod
    def _warm_up(logs: set[Path]) -> float:
        """The backend's warm-up generation, from the new instance's log."""
        for log in logs:
            found = re.findall(r"warmed up in ([\d.]+) s", log.read_text())
            if found:
                return float(found[-1])
        return 0.0

    def cold(self, tier: str) -> dict[str, Any]:
        """One cold start: scaled to zero first, the tier prepared, then one request."""
        _wait(lambda: self.instances() == 0, 120, "scale to zero")
        want = None if tier == "none" else "disk" if tier.startswith("disk") else "memory"
        _wait(lambda: self.tier() == want, 120, f"the worker to report the {want} tier")
        if tier == "disk (evicted)":
            for stored in self.stored:
                for f in stored.iterdir():
                    fd = os.open(f, os.O_RDONLY)
                    try:
                        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                    finally:
                        os.close(fd)
        # Not beside the previous start's replacement warm process importing torch.
        wait_warm_pools(self.head, [self.worker])
        before = {**_cold_start_sums(self.worker.url), **_cold_start_sums(self.head.url)}
        logs_before = self._instance_logs()
        seconds = self.first_token()
        after = {**_cold_start_sums(self.worker.url), **_cold_start_sums(self.head.url)}
        phases = {p: after.get(p, 0.0) - before.get(p, 0.0) for p in PHASES}
        new_logs = self._instance_logs() - logs_before
        if self.backend == "vllm":
            phases = self._vllm_phases(phases, new_logs)
            phases["other"] = seconds - sum(phases[p] for p in VLLM_PHASES)
        else:
            phases["warm_up"] = self._warm_up(new_logs)
            phases["other"] = seconds - sum(phases[p] for p in PHASES)
        return {"tier": tier, "seconds": seconds, "phases": phases}

    def from_sleep(self, repeat: int) -> list[dict[str, Any]]:
        """The sleeping tier: a model in sleep mode, started once, then ``repeat`` times
        put to sleep by its keep_alive and woken by a request."""
        _wait(lambda: self.instances() == 0, 120, "scale to zero")
        config = {**self.config, "model": SLEEPY}
        config["backend_config"] = {**config["backend_config"], "sleep_mode": True}
        httpx.post(f"{self.head.url}/register", json=config, timeout=30).raise_for_status()
        self.first_token(SLEEPY)
        runs = []
        for _ in range(repeat):
            _wait(lambda: self.states(SLEEPY) == ["sleeping"], 120, "the instance to sleep")
            before = _sleep_sums(self.worker.url)
            seconds = self.first_token(SLEEPY)
            wake = _sleep_sums(self.worker.url).get("wake", 0.0) - before.get("wake", 0.0)
            phases = dict.fromkeys(VLLM_PHASES, 0.0) | {"wake": wake}
            phases["other"] = seconds - wake
            runs.append({"tier": "sleeping", "seconds": seconds, "phases": phases})
        return runs

    def _vllm_phases(self, measured: dict[str, float], logs: set[Path]) -> dict[str, float]:
        """The worker's and head's figures, the instance's own steps from its log's
        milestones in between: the worker's ``process_start`` is spawn until ready for
        a backend that does not report its load."""
        [log] = logs
        instance = log.stem
        started = _worker_start(self.worker.log.read_text(), instance)
        marks = dict(re.findall(r"sllm milestone (\w+) ([\d.]+)", log.read_text()))
        ready = started + measured["process_start"]
        phases = {"placement": measured["placement"], "first_token": measured["first_token"]}
        at = started
        for phase, mark in VLLM_STEPS:
            end = float(marks[mark]) if mark in marks else at  # spawned engines log none
            phases[phase] = end - at
            at = end
        phases["server"] = ready - at
        return phases


def _worker_start(worker_log: str, instance: str) -> float:
    """Epoch when the worker began starting ``instance``, from its log line."""
    [stamp] = re.findall(
        rf"^(\S+ \S+) \S+ \S+: starting {re.escape(instance)}[ :]", worker_log, re.M
    )
    return time.mktime(time.strptime(stamp[:19], "%Y-%m-%d %H:%M:%S")) + int(stamp[20:]) / 1000


def plain_vllm(path: Path, work: Path, num_gpus: int) -> dict[str, float]:
    """vLLM's OpenAI server started fresh on the dequantized model with the flags sllm
    gives its instance (on a CPU: eager; the same KV cache and context): seconds to
    ready (its model listed) and to the first token of one streamed request sent then."""
    port = free_port()
    knobs = VllmKnobs(pretrained_model_name_or_path=str(path), **VLLM_CONFIG)
    on_cpu = num_gpus == 0
    flags = vllm_args(knobs, MODEL, port, num_gpus, False, on_cpu=on_cpu, cpu_bf16=cpu_has_bf16())
    if on_cpu:  # as sllm's entry sizes it (vLLM's own default takes 0.9 x RAM)
        config = json.loads((path / "config.json").read_text())
        dtype = flags[flags.index("--dtype") + 1]
        available = psutil.virtual_memory().available
        flags += [
            "--kv-cache-memory-bytes",
            str(cpu_kv_cache_bytes(config, dtype, None, available)),
        ]
    argv = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", *flags]
    url = f"http://127.0.0.1:{port}"
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Say hello."}],
        "max_tokens": 4,
        "stream": True,
    }
    with open(work / f"plain-vllm-{port}.log", "wb") as log, httpx.Client(timeout=900) as client:
        started = time.perf_counter()
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        try:

            def listed() -> bool:
                if proc.poll() is not None:
                    raise RuntimeError(f"plain vLLM exited with {proc.returncode} (see {log.name})")
                try:
                    return client.get(f"{url}/v1/models").status_code == 200
                except httpx.HTTPError:
                    return False

            _wait(listed, 600, "plain vLLM")
            ready = time.perf_counter() - started
            with client.stream("POST", f"{url}/v1/chat/completions", json=body) as resp:
                for line in resp.iter_lines():
                    if '"content"' in line:
                        break
            first = time.perf_counter() - started
        finally:
            proc.terminate()
            proc.wait(30)
    return {"ready": ready, "first_token": first}


def run(repeat: int, warm_heap_gb: float | None, backend: str, num_gpus: int) -> dict[str, Any]:
    if backend == "vllm":
        return run_vllm(repeat, num_gpus)
    with tempfile.TemporaryDirectory() as tmp:
        bench = Bench(Path(tmp), warm_heap_gb, backend, num_gpus)
        runs: list[dict[str, Any]] = []
        try:
            runs.append(bench.cold("none"))
            runs += [bench.cold("memory") for _ in range(repeat)]
            bench.replace_worker(memory_tier=False)
            for tier in ("disk (page cache)", "disk (evicted)"):
                runs += [bench.cold(tier) for _ in range(repeat)]
        finally:
            bench.close()
        models = Path(tmp) / "models"
        if backend == "onnx":
            converted = next((models / "store").glob("*/genai_config.json")).parent
            baseline = [plain_onnx(converted) for _ in range(repeat)]
        else:
            dequantized = next((models / "gguf").glob("*/config.json")).parent
            baseline = [plain_transformers(dequantized) for _ in range(repeat)]
    return {"backend": backend, "runs": runs, "plain": baseline}


def run_vllm(repeat: int, num_gpus: int) -> dict[str, Any]:
    """The vLLM tiers, then plain vLLM started fresh the same number of times, the
    cluster stopped (a worker with a warm vLLM process idle beside it would not be)."""
    with tempfile.TemporaryDirectory() as tmp:
        bench = Bench(Path(tmp), None, "vllm", num_gpus)
        runs: list[dict[str, Any]] = []
        try:
            runs.append(bench.cold("none"))
            runs += [bench.cold("memory") for _ in range(repeat)]
            bench.replace_worker(warm=False)
            runs += [bench.cold("fresh process") for _ in range(repeat)]
            if num_gpus:  # vLLM sleeps on CUDA only
                runs += bench.from_sleep(repeat)
        finally:
            bench.close()
        dequantized = next((Path(tmp) / "models" / "gguf").glob("*/config.json")).parent
        baseline = [plain_vllm(dequantized, Path(tmp), num_gpus) for _ in range(repeat)]
    return {"backend": "vllm", "runs": runs, "plain_vllm": baseline}


def _tier_table(runs: list[dict[str, Any]], cols: list[str], head: str, width: int) -> None:
    """One row per tier: its runs' median first token and median of each phase."""
    label = 20 if width > 12 else 14
    print(
        f"{'tier':<{label}} {'n':>2} {head:>16} " + " ".join(f"{c[:width]:>{width}}" for c in cols)
    )
    for tier in dict.fromkeys(r["tier"] for r in runs):
        mine = [r for r in runs if r["tier"] == tier]
        median = statistics.median(r["seconds"] for r in mine)
        parts = " ".join(
            f"{statistics.median(r['phases'][c] for r in mine):>{width}.3f}" for c in cols
        )
        print(f"{tier:<{label}} {len(mine):>2} {median:>16.3f} {parts}")


def report(out: dict[str, Any]) -> None:
    if out.get("backend") == "vllm":
        report_vllm(out)
        return
    _tier_table(out["runs"], [*PHASES, "warm_up", "other"], "first token (s)", 13)
    base = out["plain"]
    what = (
        "onnxruntime_genai's Model and Tokenizer of the stored conversion"
        if out["backend"] == "onnx"
        else "from_pretrained of the dequantized safetensors"
    )
    print(
        f"{'python -c (plain)':<20} {len(base):>2} {statistics.median(base):>16.3f}"
        f"   (interpreter, imports, {what}, 1 token)"
    )
    print("medians; phases as measured by the head and worker (see the module docstring)")


def report_vllm(out: dict[str, Any]) -> None:
    for run in out["runs"]:
        run["phases"].setdefault("wake", 0.0)
    _tier_table(out["runs"], [*VLLM_PHASES, "wake", "other"], "first token (s)", 12)
    base = out["plain_vllm"]
    ready = statistics.median(b["ready"] for b in base)
    first = statistics.median(b["first_token"] for b in base)
    print(
        f"{'plain vLLM':<14} {len(base):>2} {first:>16.3f}   (fresh process, ready {ready:.2f} s)"
    )
    print("seconds, medians; phases as measured by the head, the worker and the instance's log")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--backend", choices=["transformers", "onnx", "vllm"], default="transformers"
    )
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--num-gpus", type=int, default=0, help="GPUs per instance (vLLM)")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--warm-heap-gb", type=float, help="the worker's (default: its own)")
    args = parser.parse_args()
    out = run(args.repeat, args.warm_heap_gb, args.backend, args.num_gpus)
    report(out)
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
