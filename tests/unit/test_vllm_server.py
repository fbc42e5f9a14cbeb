"""The vLLM entry's pure parts: vLLM's command line once the model is stored, and the
milestones it logs."""

from __future__ import annotations

import logging

import pytest

from sllm.backends.vllm_server import MILESTONES, Milestones, _replace_model


def test_vllm_gets_the_stored_directory_and_the_store_loader() -> None:
    args = ["--model", "smollm2-135m", "--port", "9", "--enforce-eager"]
    assert _replace_model(args, "/s/store/m-1", load_format=True) == [
        "--model", "/s/store/m-1", "--port", "9", "--enforce-eager", "--load-format", "sllm",
    ]  # fmt: skip
    # A model the store could not hold: vLLM's own loader; the deployer's choice stays.
    assert "--load-format" not in _replace_model(args, "/models/m", load_format=False)
    chosen = [*args, "--load-format=safetensors"]
    assert (
        _replace_model(chosen, "/s/store/m-1", load_format=True).count("--load-format=safetensors")
        == 1
    )
    assert "sllm" not in _replace_model(chosen, "/s/store/m-1", load_format=True)


def test_each_step_vllm_logs_becomes_a_milestone(capsys: pytest.CaptureFixture[str]) -> None:
    handler = Milestones()
    for marker, name in MILESTONES:
        record = logging.LogRecord("vllm.x", logging.INFO, "f", 1, f"{marker} %s", ("a",), None)
        handler.emit(record)
        assert capsys.readouterr().err.startswith(f"sllm milestone {name} ")
    handler.emit(logging.LogRecord("vllm.x", logging.INFO, "f", 1, "other", None, None))
    assert capsys.readouterr().err == ""
