"""A vLLM instance: ``python -m sllm.backends.vllm_server --storage-path PATH --task TASK
[--trust-remote-code] -- VLLM_ARGS``, where ``VLLM_ARGS`` is vLLM's OpenAI server's
command line (``vllm_flags.vllm_args``) with ``--model`` naming the deployed source.

Before vLLM's server runs, as ``__main__`` of this same process:

* The model is resolved as the transformers backend resolves it (a packaged model, a
  GGUF file dequantized once, a local directory, a hub id) and put in sllm's store, by
  ``sllm store save`` in a child process unless the worker stored it ahead (the head
  asks it to on deploy). vLLM gets the stored directory and ``--load-format sllm``
  (``vllm_loader``), so the store's integrity checks and the worker's cache tiers cover
  vLLM models too. A model the store cannot hold goes to vLLM as its directory (or GGUF
  file), read by vLLM's own loader.
* On vLLM's CPU build, its engine processes fork from this one instead of starting new
  interpreters (which import vLLM again: 12 s for each of the two on 2 cores). vLLM
  spawns them because a process whose OpenMP threads run cannot fork safely; nothing
  computes here (storing runs in a child, a warm process primes imports alone).
* vLLM's server loads sllm's middleware (``vllm_cuts``): the head may cut its
  non-streamed answers short to move them, as sllm's own servers do.

``prime`` is what a warm process of the vLLM pool runs: the imports, nothing computed.
"""

from __future__ import annotations

import argparse
import copy
import gc
import importlib
import json
import logging
import os
import runpy
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

from sllm.backends import model_source
from sllm.backends.vllm_cuts import MIDDLEWARE
from sllm.backends.vllm_flags import cpu_kv_cache_bytes
from sllm.store.catalog import save_command, save_in_child

log = logging.getLogger("sllm.vllm_server")

VLLM_SERVER = "vllm.entrypoints.openai.api_server"

# What vLLM 0.32's server imports only once it builds its app and engine client (199
# modules: 0.3 s of a warm start on 2 cores), and the model code of the commonest family
# (its engine processes fork from here). A name another vLLM lacks is skipped.
LAZY_MODULES = (
    "multiprocessing.popen_fork",
    "pydantic.v1",
    "prometheus_fastapi_instrumentator",
    "model_hosting_container_standards.sagemaker",
    "uvicorn.lifespan.on",
    "uvicorn.protocols.http.httptools_impl",
    "uvicorn.protocols.websockets.websockets_sansio_impl",
    "vllm.v1.engine.async_llm",
    "vllm.v1.metrics.loggers",
    "vllm.renderers.hf",
    "vllm.transformers_utils.chat_templates.registry",
    "vllm.plugins.lora_resolvers.filesystem_resolver",
    "vllm.plugins.lora_resolvers.hf_hub_resolver",
    "vllm.entrypoints.openai.chat_completion.api_router",
    "vllm.entrypoints.openai.chat_completion.batch_serving",
    "vllm.entrypoints.openai.completion.api_router",
    "vllm.entrypoints.openai.models.api_router",
    "vllm.entrypoints.openai.responses.api_router",
    "vllm.entrypoints.anthropic.api_router",
    "vllm.entrypoints.cohere.api_router",
    "vllm.entrypoints.generate.api_router",
    "vllm.entrypoints.generate.generative_scoring.api_router",
    "vllm.entrypoints.generate.structured_decisions.api_router",
    "vllm.entrypoints.scale_out.render.api_router",
    "vllm.entrypoints.scale_out.derender.api_router",
    "vllm.entrypoints.scale_out.token_in_token_out.api_router",
    "vllm.entrypoints.serve.elastic_ep.api_router",
    "vllm.entrypoints.serve.instrumentator.metrics",
    "vllm.entrypoints.serve.instrumentator.offline_docs",
    "vllm.entrypoints.serve.lora.api_router",
    "vllm.entrypoints.serve.profile.api_router",
    "vllm.entrypoints.serve.tokenize.api_router",
    "vllm.entrypoints.serve.utils.orca_metrics",
    "vllm.model_executor.models.llama",
)


def prime() -> None:
    """Imports an instance would do, run before it is asked for (10 s on 2 cores): the
    server, the engine and the worker it starts, the store and transformers' tokenizer.
    Then every object they made is moved out of the garbage collector's sight
    (``gc.freeze``): vLLM collects in full twice while it loads weights and once more
    when its engine is up, each pass walking these millions of objects (most of the
    weight load's time on 2 cores), and its forked engine processes inherit the freeze."""
    import transformers  # noqa: F401  (its lazy modules follow)
    from transformers import AutoConfig, AutoTokenizer  # noqa: F401
    from vllm.entrypoints.openai import api_server  # noqa: F401
    from vllm.platforms import current_platform
    from vllm.v1.engine import core  # noqa: F401
    from vllm.v1.executor import multiproc_executor  # noqa: F401

    from sllm.backends import vllm_loader
    from sllm.store import catalog  # noqa: F401

    if current_platform.is_cpu():
        from vllm.v1.worker import cpu_model_runner, cpu_worker  # noqa: F401
    for name in LAZY_MODULES:
        try:
            importlib.import_module(name)
        except ImportError as exc:
            log.debug("not primed: %s (%s)", name, exc)
    vllm_loader.register()
    gc.collect()
    gc.freeze()


@dataclass(frozen=True)
class Prepared:
    model: str  # what vLLM's --model names
    stored: bool  # a directory of sllm's store, for --load-format sllm


def stored_model(source: str, storage: Path, task: str, trust_remote_code: bool) -> Prepared:
    """The model ``source`` put where vLLM loads it from: its copy in the store, written
    first by ``sllm store save`` in a child process when there is none (dequantizing a
    GGUF file and writing the copy compute, which here would start OpenMP's threads and
    keep vLLM's engine from forking); the source itself when the store cannot hold it."""
    files = model_source.resolve(source, storage)  # a hub id is downloaded: no compute
    found = _stored(files, source, storage, task)
    if found is not None:
        return found
    save_in_child(save_command(source, storage, task, trust_remote_code), source)
    found = _stored(files, source, storage, task)
    if found is not None:
        return found
    path = files.path / files.gguf_file if files.gguf_file else files.path
    log.warning("sllm store cannot hold %s: vLLM loads it from %s", source, path)
    return Prepared(str(path), stored=False)


def _stored(
    files: model_source.ModelFiles, source: str, storage: Path, task: str
) -> Prepared | None:
    """The copy in the store of ``files`` (deployed as ``source``), if it is there and
    sound; never writes one."""
    from sllm.store.catalog import auto_class_for, store_dir
    from sllm.store.integrity import check_directory
    from sllm.store.tiers import record_use

    path = model_source.dequantized_dir(files, storage) if files.gguf_file else files.path
    if not (path / "config.json").is_file():
        return None
    directory = store_dir(path, storage, auto_class_for(path, task).__name__)  # type: ignore[arg-type]
    index, problems = check_directory(directory, "quick")
    if index is None or problems:
        return None
    record_use(directory, source)
    return Prepared(str(directory), stored=True)


def _fork_engine_processes() -> None:
    """vLLM's CPU platform sets the spawn start method when it checks the config; set
    fork after it. Without that hook (another vLLM), engines spawn as vLLM chooses."""
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        return
    from vllm.platforms.cpu import CpuPlatform

    check = getattr(CpuPlatform.check_and_update_config, "__func__", None)
    if check is None:
        log.warning("vLLM's CPU platform changed: its engine processes start fresh")
        return

    def check_and_update_config(cls: type, vllm_config: object) -> None:
        check(cls, vllm_config)
        os.environ["VLLM_WORKER_MULTIPROC_METHOD"] = "fork"

    CpuPlatform.check_and_update_config = classmethod(check_and_update_config)  # type: ignore[method-assign,assignment]


# What vLLM logs as its start goes on, and the name of the step each line ends.
MILESTONES = (
    ("Starting to load model", "load_begin"),
    ("sllm store: loaded", "load_end"),
    ("Loading weights took", "load_end"),
    ("KV cache size", "kv_cache"),
    ("init engine", "engine"),
    ("Starting vLLM server", "serving"),
)


class Milestones(logging.Handler):
    """Writes ``sllm milestone NAME EPOCH`` in the instance's log when vLLM reaches each
    step of its start: vLLM's own lines show whole seconds, too coarse to tell where a
    start of a few seconds goes (``benchmarks/cold_start.py`` reads these). Installed
    on vLLM's logger through its logging config (``_log_milestones``), so its engine
    processes have it too."""

    def emit(self, record: logging.LogRecord) -> None:
        message = str(record.msg)
        for marker, name in MILESTONES:
            if marker in message:
                milestone(name, record.created)
                return


def _log_milestones(log_dir: Path) -> None:
    """vLLM's own logging config with ``Milestones`` beside its handler, in the file
    ``VLLM_LOGGING_CONFIG_PATH`` names (unless the operator named one): vLLM applies its
    config once it has parsed its arguments, replacing any handler set before."""
    if os.environ.get("VLLM_LOGGING_CONFIG_PATH"):
        return
    from vllm.logger import DEFAULT_LOGGING_CONFIG

    config = copy.deepcopy(DEFAULT_LOGGING_CONFIG)
    # By name: run as __main__, this module is not "__main__" once vLLM's server is.
    config["handlers"]["sllm_milestones"] = {"()": "sllm.backends.vllm_server.Milestones"}
    config["loggers"]["vllm"]["handlers"].append("sllm_milestones")
    path = log_dir / "vllm-logging.json"
    # Every instance writes the same text; a rename leaves no half-written file.
    partial = path.with_name(f"{path.name}.{os.getpid()}")
    partial.write_text(json.dumps(config))
    partial.replace(path)
    os.environ["VLLM_LOGGING_CONFIG_PATH"] = str(path)


def milestone(name: str, at: float | None = None) -> None:
    sys.stderr.write(f"sllm milestone {name} {time.time() if at is None else at:.3f}\n")
    sys.stderr.flush()


def _flag(args: list[str], flag: str) -> str | None:
    """The value ``args`` give ``flag`` (``--flag V`` or ``--flag=V``), None if absent."""
    for i, arg in enumerate(args):
        if arg == flag and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith(f"{flag}="):
            return arg.split("=", 1)[1]
    return None


def _replace_model(vllm_args: list[str], model: str, load_format: bool) -> list[str]:
    """``vllm_args`` with ``--model`` naming ``model``; ``--load-format sllm`` added when
    the store's loader reads it and the deployer chose no other."""
    args = list(vllm_args)
    args[args.index("--model") + 1] = model
    if load_format and _flag(args, "--load-format") is None:
        args += ["--load-format", "sllm"]
    return args


def _cpu_kv_cache(vllm_args: list[str], model: str) -> list[str]:
    """``vllm_args`` with a KV cache size for vLLM's CPU platform when none is given:
    sized from the model's config (``cpu_kv_cache_bytes``) and the memory free now."""
    from vllm.platforms import current_platform

    if not current_platform.is_cpu() or _flag(vllm_args, "--kv-cache-memory-bytes"):
        return vllm_args
    try:
        config = json.loads((Path(model) / "config.json").read_text())
    except (OSError, ValueError):
        config = {}
    length = _flag(vllm_args, "--max-model-len")
    size = cpu_kv_cache_bytes(
        config,
        _flag(vllm_args, "--dtype") or "auto",
        int(length) if length and length.isdigit() else None,
        psutil.virtual_memory().available,
    )
    return [*vllm_args, "--kv-cache-memory-bytes", str(size)]


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if "--" not in argv:
        raise SystemExit("usage: python -m sllm.backends.vllm_server [OPTIONS] -- VLLM_ARGS")
    split = argv.index("--")
    parser = argparse.ArgumentParser(prog="python -m sllm.backends.vllm_server")
    parser.add_argument("--storage-path", type=Path, required=True)
    parser.add_argument("--task", choices=["auto", "generate", "embed"], default="auto")
    parser.add_argument("--trust-remote-code", action="store_true")
    args = parser.parse_args(argv[:split])
    vllm_args = argv[split + 1 :]
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    milestone("entry")
    prime()  # a cold start's imports; nothing left to do in a warm process
    milestone("imported")
    started = time.monotonic()
    source = vllm_args[vllm_args.index("--model") + 1]
    try:
        prepared = stored_model(source, args.storage_path, args.task, args.trust_remote_code)
    except model_source.ModelSourceError as exc:
        raise SystemExit(f"sllm: {exc}") from None
    log.info("model %s at %s in %.2f s", source, prepared.model, time.monotonic() - started)
    milestone("stored")
    _log_milestones(args.storage_path)
    _fork_engine_processes()
    vllm_args = _replace_model(vllm_args, prepared.model, prepared.stored)
    # Non-streamed answers that the head may cut short to move them (``vllm_cuts``).
    vllm_args = [*vllm_args, "--middleware", MIDDLEWARE]
    sys.argv = [VLLM_SERVER, *_cpu_kv_cache(vllm_args, prepared.model)]
    runpy.run_module(VLLM_SERVER, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
