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


README = EXAMPLES.parent / "README.md"


def _fields() -> list[tuple[str, object]]:
    from sllm.config import AutoScalingConfig

    fields: list[tuple[str, object]] = []
    for name, info in DeployConfig.model_fields.items():
        if name != "auto_scaling_config":
            fields.append((name, info.default))
    for name, info in AutoScalingConfig.model_fields.items():
        fields.append((f"auto_scaling_config.{name}", info.default))
    return fields


@pytest.mark.parametrize(("field", "default"), _fields(), ids=lambda v: str(v))
def test_readme_documents_every_deploy_field_with_its_default(field: str, default: object) -> None:
    row = next(
        (line for line in README.read_text().splitlines() if line.startswith(f"| `{field}` |")),
        None,
    )
    assert row is not None, f"README's deploy config table lacks {field}"
    if isinstance(default, int | float | str) and not isinstance(default, bool):
        shown = f"{default:g}" if isinstance(default, float) else str(default)
        assert f"| `{shown}` |" in row, row


def test_ci_runs_the_readme_test_command() -> None:
    ci = (EXAMPLES.parent / ".ci" / "run").read_text()
    blocks = README.read_text().split("```")
    command = next(b.strip() for b in blocks if "pytest" in b and b.strip().startswith("python3"))
    assert command in ci.splitlines()
