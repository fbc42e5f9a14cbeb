"""Fault tests: real head, worker and backend processes around a real Redis, killed,
paused and cut off on purpose. The e2e cluster fixture is shared with them."""

from __future__ import annotations

import pytest

from tests.e2e.conftest import Cluster, cluster

__all__ = ["Cluster", "cluster"]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/faults/" in str(item.fspath):
            item.add_marker(pytest.mark.faults)
