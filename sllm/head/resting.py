"""The models an autoscaler pass can pass over.

Most models of a large deployment rest: deployed, scaled to zero, nothing queued, no
start failure noted. A pass decides nothing for them but whether some live worker could
serve them, and that answer changes only with their records (the models' version) or
with what the live workers can serve (each requirement's reason). With a thousand
deployed, looping over every model every second was most of what an idle head spent;
a pass now looks at the models in play every time and at the resting ones only when one
of those two changed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from sllm.config import DeployConfig
from sllm.head.placement import Requirement
from sllm.kv.records import ModelRecord


def servability(config: DeployConfig) -> Requirement:
    """What a worker must offer to ever serve the model (whatever runs on it now)."""
    return Requirement(backend=config.backend, gpus=config.num_gpus)


@dataclass(frozen=True)
class Partition:
    """The models of one version of their records."""

    # Those looked at every pass: wanting instances, being deleted, failing to start.
    watched: frozenset[str]
    # The others, by what would serve them.
    resting: dict[Requirement, list[ModelRecord]]


def partition(
    models: list[ModelRecord], config_of: Callable[[ModelRecord], DeployConfig]
) -> Partition:
    watched: set[str] = set()
    resting: dict[Requirement, list[ModelRecord]] = {}
    for model in models:
        config = config_of(model)
        if (
            model.state != "active"
            or model.start_failures
            or config.auto_scaling_config.min_instances > 0
        ):
            watched.add(model.name)
        else:
            resting.setdefault(servability(config), []).append(model)
    return Partition(frozenset(watched), resting)


def in_play(
    models: list[ModelRecord], watched: frozenset[str], busy: set[str]
) -> list[ModelRecord]:
    """The models a pass must decide for, in the models' order (placements use up room
    in that order): the watched ones and those with instances or queued requests."""
    return [m for m in models if m.name in watched or m.name in busy]


@dataclass
class RestingModels:
    """The partition of the latest version read, and what the resting models were last
    marked against."""

    version: str | None = None
    part: Partition = field(default_factory=lambda: Partition(frozenset(), {}))
    _marked: tuple[str, frozenset[tuple[Requirement, str]]] | None = None

    def update(
        self,
        version: str | None,
        models: list[ModelRecord],
        config_of: Callable[[ModelRecord], DeployConfig],
    ) -> bool:
        """Partition ``models`` again if their version changed (or is unknown); whether
        it did."""
        if version is not None and version == self.version:
            return False
        self.version, self.part = version, partition(models, config_of)
        return True

    def to_mark(self, reasons: dict[Requirement, str]) -> bool:
        """Whether the resting models must be marked servable or not this pass, given
        each requirement's reason now ("" servable)."""
        if self.version is None:
            return True
        return self._marked != (self.version, frozenset(reasons.items()))

    def marked(self, reasons: dict[Requirement, str]) -> None:
        """The resting models were marked against ``reasons``: nothing to do again until
        a reason or a record changes."""
        if self.version is not None:
            self._marked = (self.version, frozenset(reasons.items()))
