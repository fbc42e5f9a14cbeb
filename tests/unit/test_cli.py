"""CLI parsing and user errors: one clear line, a non-zero exit, no traceback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sllm.cli import _settings, app
from sllm.config import HeadSettings
from sllm.launcher import free_port

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
