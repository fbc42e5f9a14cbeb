"""The ``sllm`` command: run a head or a worker, and manage models on a running head."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
from pydantic import ValidationError

from sllm.config import DeployConfig, HeadSettings, WorkerSettings

app = typer.Typer(
    name="sllm",
    help="Serverless LLM serving: a head, workers and one Redis.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)

HeadUrl = Annotated[str, typer.Option(envvar="SLLM_HEAD_URL", help="URL of the head to manage.")]


def _settings_kwargs(**flags: Any) -> dict[str, Any]:
    # Unset flags fall through to SLLM_* environment variables, then to the defaults.
    return {k: v for k, v in flags.items() if v is not None}


@app.command()
def head(
    host: Annotated[
        str | None, typer.Option(help="Address to listen on [env SLLM_HOST; default 0.0.0.0].")
    ] = None,
    port: Annotated[int | None, typer.Option(help="Port [env SLLM_PORT; default 8343].")] = None,
    redis_url: Annotated[
        str | None,
        typer.Option(help="Redis URL [env SLLM_REDIS_URL; default redis://127.0.0.1:6379/0]."),
    ] = None,
    lease_seconds: Annotated[
        float | None, typer.Option(help="Task lease length [env SLLM_LEASE_SECONDS; default 15].")
    ] = None,
    max_attempts: Annotated[
        int | None, typer.Option(help="Tries per request [env SLLM_MAX_ATTEMPTS; default 2].")
    ] = None,
    heartbeat_timeout: Annotated[
        float | None,
        typer.Option(help="Silence that prunes a worker [env SLLM_HEARTBEAT_TIMEOUT; default 60]."),
    ] = None,
    log_level: Annotated[
        str | None, typer.Option(help="Log level [env SLLM_LOG_LEVEL; default info].")
    ] = None,
) -> None:
    """Run the head: OpenAI API, dispatcher, autoscaler, worker and model managers."""
    from sllm.head.app import run

    settings = HeadSettings(
        **_settings_kwargs(
            host=host,
            port=port,
            redis_url=redis_url,
            lease_seconds=lease_seconds,
            max_attempts=max_attempts,
            heartbeat_timeout=heartbeat_timeout,
            log_level=log_level,
        )
    )
    run(settings)


@app.command()
def worker(
    host: Annotated[
        str | None, typer.Option(help="Address to listen on [env SLLM_HOST; default 0.0.0.0].")
    ] = None,
    port: Annotated[int | None, typer.Option(help="Port [env SLLM_PORT; default 8001].")] = None,
    head_url: Annotated[
        str | None,
        typer.Option(help="URL of the head [env SLLM_HEAD_URL; default http://127.0.0.1:8343]."),
    ] = None,
    node_id: Annotated[
        str | None,
        typer.Option(help="Fixed node id [env SLLM_NODE_ID; default assigned by the head]."),
    ] = None,
    advertise_url: Annotated[
        str | None, typer.Option(help="URL the head calls this worker on [env SLLM_ADVERTISE_URL].")
    ] = None,
    redis_url: Annotated[
        str | None,
        typer.Option(help="Redis URL [env SLLM_REDIS_URL; default: the one the head confirms]."),
    ] = None,
    heartbeat_interval: Annotated[
        float | None,
        typer.Option(help="Seconds between heartbeats [env SLLM_HEARTBEAT_INTERVAL; default 15]."),
    ] = None,
    storage_path: Annotated[
        Path | None, typer.Option(help="Local model cache [env SLLM_STORAGE_PATH].")
    ] = None,
    log_dir: Annotated[Path | None, typer.Option(help="Instance logs [env SLLM_LOG_DIR].")] = None,
    log_level: Annotated[
        str | None, typer.Option(help="Log level [env SLLM_LOG_LEVEL; default info].")
    ] = None,
) -> None:
    """Run a worker: heartbeats the head and runs backend instances."""
    from sllm.worker.app import run

    settings = WorkerSettings(
        **_settings_kwargs(
            host=host,
            port=port,
            head_url=head_url,
            node_id=node_id,
            advertise_url=advertise_url,
            redis_url=redis_url,
            heartbeat_interval=heartbeat_interval,
            storage_path=storage_path,
            log_dir=log_dir,
            log_level=log_level,
        )
    )
    run(settings)


def _call(method: str, url: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    try:
        resp = httpx.request(method, url, json=body, timeout=30.0)
    except httpx.HTTPError as exc:
        raise typer.BadParameter(f"cannot reach the head at {url}: {exc}") from None
    try:
        data: dict[str, Any] = resp.json()
    except ValueError:
        data = {"error": {"message": resp.text}}
    if resp.status_code >= 400:
        message = data.get("error", {}).get("message", resp.text)
        typer.echo(f"error: {message} (HTTP {resp.status_code})", err=True)
        raise typer.Exit(1)
    return data


def _load_config(path: Path) -> DeployConfig:
    try:
        return DeployConfig.model_validate_json(path.read_text())
    except OSError as exc:
        typer.echo(f"error: cannot read {path}: {exc.strerror}", err=True)
        raise typer.Exit(2) from None
    except ValidationError as exc:
        lines = [f"  {'.'.join(map(str, e['loc'])) or '(root)'}: {e['msg']}" for e in exc.errors()]
        typer.echo(f"error: invalid deploy config {path}:\n" + "\n".join(lines), err=True)
        raise typer.Exit(2) from None


@app.command()
def deploy(
    config: Annotated[Path, typer.Argument(help="Deploy config (JSON).")],
    head_url: HeadUrl = "http://127.0.0.1:8343",
) -> None:
    """Deploy a model from a JSON config."""
    cfg = _load_config(config)
    _call("POST", f"{head_url}/register", cfg.model_dump(mode="json"))
    typer.echo(f"deployed {cfg.model}")


@app.command()
def delete(
    model: Annotated[str, typer.Argument(help="Model name.")],
    head_url: HeadUrl = "http://127.0.0.1:8343",
) -> None:
    """Delete a model: queued requests fail, in-flight ones finish."""
    _call("POST", f"{head_url}/delete", {"model": model})
    typer.echo(f"deleting {model}")


@app.command()
def status(head_url: HeadUrl = "http://127.0.0.1:8343") -> None:
    """Print the cluster's models, instances and workers as JSON."""
    typer.echo(json.dumps(_call("GET", f"{head_url}/status"), indent=2))


def main() -> None:
    app()
