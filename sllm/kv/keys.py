"""Every Redis key and channel name sllm uses, under one prefix."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Keys:
    prefix: str = "sllm"

    @property
    def models(self) -> str:
        return f"{self.prefix}:models"

    @property
    def models_version(self) -> str:
        """Changed with every write to a model's record (lua/lib/models.lua)."""
        return f"{self.prefix}:models_version"

    def model(self, name: str) -> str:
        return f"{self.prefix}:model:{name}"

    def model_instances(self, name: str) -> str:
        return f"{self.prefix}:model:{name}:instances"

    @property
    def queued_models(self) -> str:
        """Models whose queue or processing list may hold tasks: what the autoscaler,
        the reaper and the gauges look at, rather than every deployed model's lists."""
        return f"{self.prefix}:queued_models"

    def queue(self, model: str) -> str:
        return f"{self.prefix}:queue:{model}"

    def processing(self, model: str) -> str:
        return f"{self.prefix}:processing:{model}"

    def task(self, task_id: str) -> str:
        return f"{self.prefix}:task:{task_id}"

    @property
    def leases(self) -> str:
        return f"{self.prefix}:leases"

    @property
    def instances(self) -> str:
        """Every instance's id, whatever its model: listing them all costs what there
        is, not a command per deployed model."""
        return f"{self.prefix}:instances"

    def instance(self, instance_id: str) -> str:
        return f"{self.prefix}:instance:{instance_id}"

    def instance_tasks(self, instance_id: str) -> str:
        return f"{self.prefix}:instance:{instance_id}:tasks"

    @property
    def workers(self) -> str:
        return f"{self.prefix}:workers"

    def worker(self, node_id: str) -> str:
        return f"{self.prefix}:worker:{node_id}"

    @property
    def worker_seq(self) -> str:
        return f"{self.prefix}:worker_seq"

    def lock(self, name: str) -> str:
        return f"{self.prefix}:lock:{name}"

    def rate_limit(self, client: str) -> str:
        """Token buckets of one API key (by fingerprint) or client address."""
        return f"{self.prefix}:ratelimit:{client}"

    def results(self, head_id: str) -> str:
        return f"{self.prefix}:results:{head_id}"

    def response(self, response_id: str) -> str:
        """A stored response of the Responses API, with the input it answered."""
        return f"{self.prefix}:response:{response_id}"

    @property
    def responses(self) -> str:
        """Stored responses by when they were stored (bounds their number)."""
        return f"{self.prefix}:responses"

    def cached(self, model: str, key: str) -> str:
        """A cached answer of a model (its response cache)."""
        return f"{self.prefix}:cache:{model}:{key}"

    def cache_index(self, model: str) -> str:
        """A model's cached answers by when they were stored (bounds their number)."""
        return f"{self.prefix}:cacheidx:{model}"

    @property
    def control(self) -> str:
        return f"{self.prefix}:control"

    @property
    def write_probe(self) -> str:
        """Written every few seconds by each head: does Redis still accept writes?"""
        return f"{self.prefix}:write_probe"
