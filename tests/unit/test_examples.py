"""The shipped deploy configs stay valid as the schema changes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sllm.config import DeployConfig

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.json")), ids=lambda p: p.name)
def test_example_config_is_valid(path: Path) -> None:
    DeployConfig.model_validate(json.loads(path.read_text()))


def test_there_is_an_example_for_every_backend() -> None:
    backends = {json.loads(p.read_text())["backend"] for p in EXAMPLES.glob("*.json")}
    assert backends == {"dummy", "transformers", "vllm"}
