"""CLI parsing and user errors: one clear line, a non-zero exit, no traceback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sllm.backends.onnx_knobs import OnnxKnobs
from sllm.cli import _settings, app
from sllm.client.launcher import free_port
from sllm.config import DeployConfig, HeadSettings

runner = CliRunner()


def invoke(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, list(args), env={"COLUMNS": "200"})
    assert "Traceback" not in result.output
    return result.exit_code, result.output


@pytest.fixture
def dead_head() -> str:
    return f"http://127.0.0.1:{free_port()}"


def test_deploy_needs_a_config_or_a_model() -> None:
    code, out = invoke("deploy")
    assert code == 2 and "give either a CONFIG file or --model NAME" in out


def test_an_invalid_config_names_the_field(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"model": "m", "backend": "dummy", "colour": "red"}))
    code, out = invoke("deploy", str(path))
    assert code == 2 and "colour" in out and str(path) in out

    path.write_text(json.dumps({"model": "m", "auto_scaling_config": {"min_instances": -1}}))
    code, out = invoke("deploy", str(path))
    assert code == 2 and "auto_scaling_config.min_instances" in out

    path.write_text("{not json")
    code, out = invoke("update", str(path))
    assert code == 2 and "not valid JSON" in out

    code, out = invoke("deploy", str(tmp_path / "missing.json"))
    assert code == 2 and "cannot read" in out


def test_quick_deploy_checks_the_backend_name(dead_head: str) -> None:
    code, out = invoke("deploy", "--model", "m", "--backend", "tensorflow", "--head-url", dead_head)
    assert code == 2 and "backend" in out


def test_quick_deploy_serves_a_source_on_any_backend(dead_head: str) -> None:
    from sllm.cli import quick_config

    code, out = invoke("deploy", "--model", "m", "--backend", "transformers")
    assert code == 2 and "--backend transformers needs --source" in out
    code, out = invoke("deploy", "--model", "m", "--source", "smollm2-135m")
    assert code == 2 and "for the transformers, onnx and vllm backends" in out
    code, out = invoke(
        "deploy", "--model", "m", "--backend", "vllm", "--source", "x", "--task", "draw"
    )
    assert code == 2 and "--task is generate or embed" in out
    assert quick_config("e", "transformers", "all-minilm-l6-v2", "embed") == {
        "model": "e",
        "backend": "transformers",
        "backend_config": {"pretrained_model_name_or_path": "all-minilm-l6-v2", "task": "embed"},
    }
    # The packaged demo model on the onnx backend, in one command.
    onnx = quick_config("d", "onnx", "smollm2-135m", None)
    assert DeployConfig.model_validate(onnx).backend == "onnx"
    OnnxKnobs.model_validate(onnx["backend_config"])
    # Valid, so it goes to the head.
    args = ["--model", "m", "--backend", "vllm", "--source", "/models/m", "--head-url", dead_head]
    code, out = invoke("deploy", *args)
    assert code == 1 and "cannot reach the head" in out


def test_up_names_the_command_that_runs_this_sllm(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sllm.client.up import command_name

    script = tmp_path / ".venv" / "bin" / "sllm"
    script.parent.mkdir(parents=True)
    script.write_text("#!/bin/sh\n")
    script.chmod(0o755)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    assert command_name(str(script)) == ".venv/bin/sllm"  # not on PATH: as the README ran it
    monkeypatch.setenv("PATH", f"{script.parent}:/usr/bin")
    assert command_name(str(script)) == "sllm"
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    monkeypatch.chdir(script.parent)
    assert command_name(str(script)) == "./sllm"
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert command_name(str(script)) == str(script)
    assert command_name("/x/sllm/__main__.py").endswith(" -m sllm")


@pytest.mark.parametrize(
    "args",
    [
        ["status"],
        ["status", "--json"],
        ["models"],
        ["delete", "m"],
        ["deploy", "--model", "m"],
    ],
)
def test_an_unreachable_head_is_named(args: list[str], dead_head: str) -> None:
    code, out = invoke(*args, "--head-url", dead_head)
    assert code == 1 and f"cannot reach the head at {dead_head}" in out


def test_head_url_comes_from_the_environment(dead_head: str) -> None:
    result = runner.invoke(app, ["status"], env={"SLLM_HEAD_URL": dead_head})
    assert result.exit_code == 1 and dead_head in result.output


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        ("head", ["--redis-url", "SLLM_REDIS_URL", "default 8343", "SLLM_LEASE_SECONDS"]),
        ("worker", ["--head-url", "SLLM_HEAD_URL", "default 15.0", "SLLM_NODE_ID"]),
        ("up", ["--no-demo", "SLLM_DATA_DIR", "default 8343", "SLLM_REDIS_URL"]),
    ],
)
def test_help_documents_each_flag_with_its_variable_and_default(
    command: str, expected: list[str]
) -> None:
    code, out = invoke(command, "--help")
    assert code == 0
    for text in expected:
        assert text in out


def test_flags_win_over_environment_which_wins_over_defaults(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert _settings(HeadSettings, port=None).port == 8343
    monkeypatch.setenv("SLLM_PORT", "9000")
    assert _settings(HeadSettings, port=None).port == 9000
    assert _settings(HeadSettings, port=9100).port == 9100


def test_invalid_settings_are_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    code, out = invoke("up", "--ready-timeout", "-1")
    assert code == 2 and "ready_timeout" in out
    code, out = invoke("head", "--port", "eighty")
    assert code == 2 and "Invalid value for '--port'" in out


def test_install_hints_name_this_checkout_and_this_pip() -> None:
    import shlex
    import sys
    from pathlib import Path

    from sllm.backends.install import pip_install
    from sllm.backends.registry import get_backend

    hint = pip_install("transformers")
    argv = shlex.split(hint)
    assert argv[:4] == [sys.executable, "-m", "pip", "install"] and argv[4] == "-e"
    checkout, extra = argv[5].rsplit("[", 1)
    assert (Path(checkout) / "pyproject.toml").is_file() and extra == "transformers]"
    assert get_backend("transformers").install_hint == hint
