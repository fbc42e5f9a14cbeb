"""Each deployed model's config, validated once per change of its record: the autoscaler
and the dispatcher read every model every second, and with a thousand deployed,
validating them all each time was a tenth of an idle head's core."""

from __future__ import annotations

from collections.abc import Iterable

from sllm.config import DeployConfig
from sllm.kv.records import ModelRecord


class DeployConfigs:
    def __init__(self) -> None:
        # name -> (created, updated, config): a record written again (an update, or a
        # delete and a new deploy) has a new time, hence a new config.
        self._by_name: dict[str, tuple[float, float, DeployConfig]] = {}

    def of(self, record: ModelRecord) -> DeployConfig:
        """The record's config, validated; shared: callers must not change it."""
        known = self._by_name.get(record.name)
        if known is None or known[:2] != (record.created, record.updated):
            known = (record.created, record.updated, DeployConfig.model_validate(record.config))
            self._by_name[record.name] = known
        return known[2]

    def keep(self, names: Iterable[str]) -> None:
        """Forget the models not in ``names`` (deleted)."""
        kept = set(names)
        for name in [n for n in self._by_name if n not in kept]:
            del self._by_name[name]
