"""The ``sllm`` command: run a head, a worker or a whole local cluster, and manage models.

Every flag of ``head``, ``worker`` and ``up`` falls back to an ``SLLM_*`` environment
variable and then to the default of its settings class; the help text of each flag is
built from that class, so the documented default is the one that applies.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Annotated, Any, Literal, NoReturn

import typer
from pydantic import ValidationError
from pydantic_settings import BaseSettings
from rich.console import Console

from sllm.client.head_client import HeadClient, HeadError
from sllm.client.status_view import status_tables
from sllm.client.up import UpSettings
from sllm.client.up import up as run_up
from sllm.config import DeployConfig, HeadSettings, WorkerSettings

app = typer.Typer(
    name="sllm",
    help="Serverless LLM serving: a head, workers and one Redis.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

DEFAULT_HEAD_URL = "http://127.0.0.1:8343"


def _doc(settings: type[BaseSettings], name: str) -> str:
    """A flag's help: the setting's description, its variable and its default."""
    info = settings.model_fields[name]
    if info.default_factory is not None:
        default: Any = info.default_factory()  # type: ignore[call-arg]
    else:
        default = info.default
    shown = (
        "none"
        if default is None
        else str(default).lower()
        if isinstance(default, bool)
        else default
    )
    # Parentheses, not brackets: rich would read brackets as markup.
    return f"{info.description} (env SLLM_{name.upper()}; default {shown})"


def _opt(settings: type[BaseSettings], name: str, *flags: str) -> Any:
    return typer.Option(*flags, help=_doc(settings, name), show_default=False)


def _settings(cls: type[BaseSettings], **flags: Any) -> Any:
    """Flags given on the command line win; unset ones fall through to SLLM_* and defaults."""
    try:
        return cls(**{k: v for k, v in flags.items() if v is not None})
    except ValidationError as exc:
        _fail(_validation_lines("invalid settings", exc), code=2)


def _fail(message: str, code: int = 1) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def _validation_lines(what: str, exc: ValidationError) -> str:
    lines = [f"  {'.'.join(map(str, e['loc'])) or '(root)'}: {e['msg']}" for e in exc.errors()]
    return f"{what}:\n" + "\n".join(lines)


# -- processes --------------------------------------------------------------------------

H, W, U = HeadSettings, WorkerSettings, UpSettings


@app.command()
def head(
    host: Annotated[str | None, _opt(H, "host")] = None,
    port: Annotated[int | None, _opt(H, "port")] = None,
    processes: Annotated[int | None, _opt(H, "processes")] = None,
    redis_url: Annotated[str | None, _opt(H, "redis_url")] = None,
    worker_redis_url: Annotated[str | None, _opt(H, "worker_redis_url")] = None,
    key_prefix: Annotated[str | None, _opt(H, "key_prefix")] = None,
    lease_seconds: Annotated[float | None, _opt(H, "lease_seconds")] = None,
    max_attempts: Annotated[int | None, _opt(H, "max_attempts")] = None,
    request_timeout: Annotated[float | None, _opt(H, "request_timeout")] = None,
    heartbeat_timeout: Annotated[float | None, _opt(H, "heartbeat_timeout")] = None,
    autoscale_interval: Annotated[float | None, _opt(H, "autoscale_interval")] = None,
    result_ttl: Annotated[float | None, _opt(H, "result_ttl")] = None,
    responses_ttl: Annotated[float | None, _opt(H, "responses_ttl")] = None,
    responses_max_bytes: Annotated[int | None, _opt(H, "responses_max_bytes")] = None,
    responses_max_count: Annotated[int | None, _opt(H, "responses_max_count")] = None,
    api_keys_file: Annotated[Path | None, _opt(H, "api_keys_file")] = None,
    rate_limit_rpm: Annotated[int | None, _opt(H, "rate_limit_rpm")] = None,
    rate_limit_tpm: Annotated[int | None, _opt(H, "rate_limit_tpm")] = None,
    max_request_timeout: Annotated[float | None, _opt(H, "max_request_timeout")] = None,
    stream_keepalive: Annotated[float | None, _opt(H, "stream_keepalive")] = None,
    log_level: Annotated[str | None, _opt(H, "log_level")] = None,
    log_format: Annotated[str | None, _opt(H, "log_format")] = None,
) -> None:
    """Run the head: OpenAI API, dispatcher, autoscaler, worker and model managers.

    The secrets (SLLM_API_KEYS, SLLM_ADMIN_KEY, SLLM_CLUSTER_TOKEN) are read from the
    environment only: a command line is visible to every user of the machine.
    """
    settings = _settings(HeadSettings, **locals())
    from sllm.head.app import run

    run(settings)


worker_app = typer.Typer(
    pretty_exceptions_enable=False, add_completion=False, invoke_without_command=True
)
app.add_typer(worker_app, name="worker")


@worker_app.callback()
def worker(
    ctx: typer.Context,
    host: Annotated[str | None, _opt(W, "host")] = None,
    port: Annotated[int | None, _opt(W, "port")] = None,
    head_url: Annotated[str | None, _opt(W, "head_url")] = None,
    node_id: Annotated[str | None, _opt(W, "node_id")] = None,
    advertise_url: Annotated[str | None, _opt(W, "advertise_url")] = None,
    redis_url: Annotated[str | None, _opt(W, "redis_url")] = None,
    key_prefix: Annotated[str | None, _opt(W, "key_prefix")] = None,
    heartbeat_interval: Annotated[float | None, _opt(W, "heartbeat_interval")] = None,
    drain_timeout: Annotated[float | None, _opt(W, "drain_timeout")] = None,
    storage_path: Annotated[Path | None, _opt(W, "storage_path")] = None,
    log_dir: Annotated[Path | None, _opt(W, "log_dir")] = None,
    disk_cache_gb: Annotated[float | None, _opt(W, "disk_cache_gb")] = None,
    memory_cache_gb: Annotated[float | None, _opt(W, "memory_cache_gb")] = None,
    warm_processes: Annotated[int | None, _opt(W, "warm_processes")] = None,
    warm_arena_gb: Annotated[float | None, _opt(W, "warm_arena_gb")] = None,
    warm_heap_gb: Annotated[float | None, _opt(W, "warm_heap_gb")] = None,
    log_level: Annotated[str | None, _opt(W, "log_level")] = None,
    log_format: Annotated[str | None, _opt(W, "log_format")] = None,
) -> None:
    """Run a worker: heartbeats the head and runs backend instances (or drain one).

    SLLM_CLUSTER_TOKEN, the head's and workers' shared secret, is read from the
    environment only.
    """
    if ctx.invoked_subcommand is not None:
        return  # `sllm worker drain ...`: a call on the head, not a worker
    flags = {k: v for k, v in locals().items() if k != "ctx"}
    settings = _settings(WorkerSettings, **flags)
    from sllm.worker.app import run

    run(settings)


@app.command()
def up(
    host: Annotated[str | None, _opt(U, "host")] = None,
    port: Annotated[int | None, _opt(U, "port")] = None,
    worker_port: Annotated[int | None, _opt(U, "worker_port")] = None,
    redis_url: Annotated[str | None, _opt(U, "redis_url")] = None,
    redis_port: Annotated[int | None, _opt(U, "redis_port")] = None,
    data_dir: Annotated[Path | None, _opt(U, "data_dir")] = None,
    demo: Annotated[bool | None, _opt(U, "demo", "--demo/--no-demo")] = None,
    ready_timeout: Annotated[float | None, _opt(U, "ready_timeout")] = None,
    log_level: Annotated[str | None, _opt(U, "log_level")] = None,
) -> None:
    """Start a whole cluster here: embedded Redis, a head, a worker and the demo model.

    Stops everything on Ctrl-C or SIGTERM.
    """
    settings = _settings(UpSettings, **locals())
    try:
        code = run_up(settings)
    except KeyboardInterrupt:  # a second Ctrl-C while stopping: children die with us
        code = 130
    raise typer.Exit(code)


# -- management -------------------------------------------------------------------------

HeadUrl = Annotated[
    str,
    typer.Option(envvar="SLLM_HEAD_URL", help="URL of the head to manage (env SLLM_HEAD_URL)."),
]
# show_default=False: the help must never print a key taken from the environment.
AdminKey = Annotated[
    str | None,
    typer.Option(
        envvar="SLLM_ADMIN_KEY",
        show_default=False,
        show_envvar=False,
        help="The head's admin key, when it has one (env SLLM_ADMIN_KEY).",
    ),
]


def _load_config(path: Path) -> DeployConfig:
    try:
        raw = json.loads(path.read_text())
    except OSError as exc:
        _fail(f"cannot read {path}: {exc.strerror}", code=2)
    except ValueError as exc:
        _fail(f"{path} is not valid JSON: {exc}", code=2)
    return _validated(raw, str(path))


def _validated(raw: Any, source: str) -> DeployConfig:
    try:
        return DeployConfig.model_validate(raw)
    except ValidationError as exc:
        _fail(_validation_lines(f"invalid deploy config {source}", exc), code=2)


def _managing(action: Any) -> Any:
    """Run one call on the head; a refusal or an unreachable head is one line, exit 1."""
    try:
        return action()
    except HeadError as exc:
        _fail(str(exc))


@app.command()
def deploy(
    config: Annotated[
        Path | None, typer.Argument(help="Deploy config (JSON); see README for every field.")
    ] = None,
    model: Annotated[
        str | None, typer.Option(help="Deploy this model with defaults, without a file.")
    ] = None,
    backend: Annotated[
        str, typer.Option(help="Backend for --model: dummy, transformers, onnx or vllm.")
    ] = "dummy",
    source: Annotated[
        str | None,
        typer.Option(
            help="What --model serves (transformers, onnx, vllm): a model directory, a .gguf file, "
            "a hub id, or a packaged model (smollm2-135m, all-minilm-l6-v2)."
        ),
    ] = None,
    task: Annotated[
        str | None, typer.Option(help="generate or embed (default: from the model).")
    ] = None,
    head_url: HeadUrl = DEFAULT_HEAD_URL,
    admin_key: AdminKey = None,
) -> None:
    """Deploy a model from a JSON config, or a quick one with --model/--backend/--source."""
    if (config is None) == (model is None):
        _fail("give either a CONFIG file or --model NAME", code=2)
    if config is not None:
        if source is not None or task is not None:
            _fail("--source and --task go with --model, not with a CONFIG file", code=2)
        cfg = _load_config(config)
    else:
        cfg = _validated(quick_config(model or "", backend, source, task), "from --model")
    with HeadClient(head_url, admin_key=admin_key) as client:
        _managing(lambda: client.deploy(cfg))
    typer.echo(f"deployed {cfg.model} ({cfg.backend})")


def quick_config(model: str, backend: str, source: str | None, task: str | None) -> dict[str, Any]:
    """The deploy config of ``sllm deploy --model``: the backend's defaults and ``source``."""
    if backend == "dummy":
        if source is not None or task is not None:
            _fail("--source and --task are for the transformers, onnx and vllm backends", code=2)
        return {"model": model, "backend": backend}
    if source is None:
        _fail(
            f"--backend {backend} needs --source: a model directory, a .gguf file, a hub id, "
            "or a packaged model (smollm2-135m, all-minilm-l6-v2)",
            code=2,
        )
    knobs: dict[str, Any] = {"pretrained_model_name_or_path": source}
    if task not in (None, "generate", "embed"):
        _fail(f"--task is generate or embed, not {task!r}", code=2)
    if task is not None:
        knobs["task"] = task
    return {"model": model, "backend": backend, "backend_config": knobs}


@app.command()
def update(
    config: Annotated[Path, typer.Argument(help="Deploy config (JSON) of a deployed model.")],
    head_url: HeadUrl = DEFAULT_HEAD_URL,
    admin_key: AdminKey = None,
) -> None:
    """Change a deployed model's config; running instances keep serving."""
    cfg = _load_config(config)
    with HeadClient(head_url, admin_key=admin_key) as client:
        _managing(lambda: client.update(cfg))
    typer.echo(f"updated {cfg.model}")


@app.command()
def delete(
    model: Annotated[str, typer.Argument(help="Model name.")],
    head_url: HeadUrl = DEFAULT_HEAD_URL,
    admin_key: AdminKey = None,
) -> None:
    """Delete a model: queued requests fail, in-flight ones finish, then it is removed."""
    with HeadClient(head_url, admin_key=admin_key) as client:
        result = _managing(lambda: client.delete(model))
    failed = result.get("queued_requests_failed", 0)
    typer.echo(f"deleting {model} ({failed} queued request(s) failed)")


@app.command()
def status(
    head_url: HeadUrl = DEFAULT_HEAD_URL,
    as_json: Annotated[bool, typer.Option("--json", help="Print /status as JSON.")] = False,
    admin_key: AdminKey = None,
) -> None:
    """Models, instances, workers and queues."""
    with HeadClient(head_url, admin_key=admin_key) as client:
        data = _managing(client.status)
    if as_json:
        typer.echo(json.dumps(data, indent=2))
        return
    # The terminal's width; 100 columns when the output is not a terminal (a pipe).
    terminal = Console()
    console = Console(width=terminal.width if terminal.is_terminal else 100)
    for table in status_tables(data, time.time()):
        console.print(table)


@app.command()
def models(head_url: HeadUrl = DEFAULT_HEAD_URL, admin_key: AdminKey = None) -> None:
    """Names of the models clients can call (the head takes its admin key on /v1 too)."""
    with HeadClient(head_url, admin_key=admin_key) as client:
        names = _managing(client.models)
    for name in names:
        typer.echo(name)


@app.command()
def migrate(
    instance_id: Annotated[str, typer.Argument(help="The instance's id (sllm status).")],
    head_url: HeadUrl = DEFAULT_HEAD_URL,
    admin_key: AdminKey = None,
) -> None:
    """Move the requests an instance runs to the other instances of its model.

    Each client sees one stream, or one answer: the destination goes on from the last
    token. Requests no other instance has room for, and those that cannot move (several
    choices, tools, log-probabilities; answers on vLLM), stay.
    """
    with HeadClient(head_url, admin_key=admin_key) as client:
        result = _managing(lambda: client.migrate(instance_id))
    for task, to in sorted(result["moves"].items()):
        typer.echo(f"{task} -> {to}")
    typer.echo(
        f"{len(result['moves'])} asked to move, {len(result['staying'])} staying (no room "
        f"elsewhere), {len(result['unmovable'])} that cannot move (they finish there)"
    )


@worker_app.command("drain")
def drain_worker(
    node_id: Annotated[str, typer.Argument(help="The worker's node id (sllm status).")],
    wait: Annotated[
        bool, typer.Option(help="Wait until it runs nothing (drained), then exit.")
    ] = True,
    timeout: Annotated[float, typer.Option(help="Seconds --wait waits at most.")] = 600.0,
    head_url: HeadUrl = DEFAULT_HEAD_URL,
    admin_key: AdminKey = None,
) -> None:
    """Drain a worker: no new work goes there, then its instances stop.

    Its running requests move to instances of their models elsewhere where one has room
    (live migration); those that cannot move finish; its queued ones go to instances
    elsewhere. Exit 1 if --wait times out.
    """
    with HeadClient(head_url, admin_key=admin_key) as client:
        state = _managing(lambda: client.drain(node_id))
        deadline = time.monotonic() + timeout
        while wait and state != "drained":
            if time.monotonic() > deadline:
                _fail(f"{node_id} is still draining after {timeout:g} s")
            time.sleep(1.0)
            workers = _managing(client.status)["workers"]
            found = next((w for w in workers if w["node_id"] == node_id), None)
            if found is None:
                _fail(f"{node_id} is no longer registered (it stopped or was pruned)")
            state = found.get("drain")
    typer.echo(f"{node_id}: {state}")


@worker_app.command("undrain")
def undrain_worker(
    node_id: Annotated[str, typer.Argument(help="The worker's node id (sllm status).")],
    head_url: HeadUrl = DEFAULT_HEAD_URL,
    admin_key: AdminKey = None,
) -> None:
    """Let a drained worker take work again."""
    with HeadClient(head_url, admin_key=admin_key) as client:
        _managing(lambda: client.undrain(node_id))
    typer.echo(f"{node_id}: takes work again")


# -- the store: models in sllm's fast-loading checkpoint format --------------------------

store_app = typer.Typer(
    help="Models in sllm's checkpoint format, kept under the worker's storage path.",
    no_args_is_help=True,
)
app.add_typer(store_app, name="store")

StoreTask = Annotated[
    Literal["auto", "generate", "embed"],
    typer.Option(help="How the backend loads it: generate (*ForCausalLM, by default) or embed."),
]


def _store_call(action: Any) -> Any:
    """Run a store action; a model that cannot be found or stored is one line, exit 1."""
    from sllm.backends.model_source import ModelSourceError
    from sllm.store.catalog import StoreError

    try:
        return action()
    except (ModelSourceError, StoreError, OSError, ValueError) as exc:
        _fail(str(exc))


@store_app.command("save")
def store_save(
    source: Annotated[
        str, typer.Argument(help="A model directory, a .gguf file, a hub id or a packaged name.")
    ],
    storage_path: Annotated[Path | None, _opt(W, "storage_path")] = None,
    task: StoreTask = "auto",
    trust_remote_code: Annotated[
        bool, typer.Option(help="Run the model's own code (passed to from_pretrained).")
    ] = False,
    store_format: Annotated[
        Literal["sllm", "onnx"],
        typer.Option(
            "--format", help="sllm: for the transformers and vllm backends; onnx: for onnx."
        ),
    ] = "sllm",
    precision: Annotated[
        Literal["auto", "int4", "int8", "fp16", "fp32"],
        typer.Option(
            help="The ONNX weights' precision (--format onnx); auto: int4 for a model that "
            "generates, fp32 for an embedding model."
        ),
    ] = "auto",
) -> None:
    """Store a model now (its backend otherwise does it at its first start)."""
    settings = _settings(WorkerSettings, storage_path=storage_path)
    if store_format == "onnx":
        from sllm.store.onnx_store import save as save_onnx

        directory, index = _store_call(lambda: save_onnx(source, settings.storage_path, precision))
        size = sum(c.size for c in [*index.chunks, *index.files])
        converted = index.source["precision"]
        typer.echo(f"stored {source} as ONNX {converted}: {size / 1e9:.2f} GB in {directory}")
        return
    from sllm.store.catalog import save

    directory, index = _store_call(
        lambda: save(source, settings.storage_path, task, trust_remote_code)
    )
    typer.echo(f"stored {source}: {index.nbytes / 1e9:.2f} GB in {directory}")


@store_app.command("verify")
def store_verify(
    source: Annotated[str, typer.Argument(help="The model, named as for save.")],
    storage_path: Annotated[Path | None, _opt(W, "storage_path")] = None,
    task: StoreTask = "auto",
) -> None:
    """Hash every file of a model's stored copy; exit 1 when any does not match."""
    settings = _settings(WorkerSettings, storage_path=storage_path)
    from sllm.store.catalog import verify

    directory, problems = _store_call(lambda: verify(source, settings.storage_path, task))
    if problems:
        _fail(f"{directory}: " + "; ".join(problems))
    typer.echo(f"{directory}: every file matches its checksum")


def main() -> None:
    try:
        app()
    except BrokenPipeError:  # `sllm status | head`
        sys.exit(0)
