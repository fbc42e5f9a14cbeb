"""Settings of each process (env ``SLLM_*`` + CLI flags) and the deploy-config schema."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._\-/]{0,127}$")
# Clients call an adapter as MODEL:ADAPTER, so adapter names are plain words.
ADAPTER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._\-]{0,63}$")

BackendName = Literal["dummy", "transformers", "vllm"]


class AutoScalingConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    min_instances: int = Field(0, ge=0, le=1024, description="Instances kept even when idle.")
    max_instances: int = Field(1, ge=1, le=1024, description="Upper bound on instances.")
    queue_per_instance_threshold: int = Field(
        5, ge=1, description="Queued plus in-flight requests one instance is meant to carry."
    )
    keep_alive: float = Field(
        60.0, ge=0, description="Seconds an instance stays up after its last finished request."
    )
    max_concurrency: int = Field(
        32, ge=1, description="Requests dispatched to one instance at once; the rest wait queued."
    )

    @model_validator(mode="after")
    def _ordered(self) -> AutoScalingConfig:
        if self.min_instances > self.max_instances:
            raise ValueError("min_instances must not exceed max_instances")
        return self


class DeployConfig(BaseModel):
    """What ``sllm deploy`` sends and ``POST /register`` accepts."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(description="Name clients call the model by.")
    backend: BackendName = Field("dummy", description="Which backend serves it.")
    num_gpus: int = Field(0, ge=0, le=64, description="GPUs one instance needs.")
    auto_scaling_config: AutoScalingConfig = Field(
        default_factory=AutoScalingConfig, description="Scaling policy."
    )
    backend_config: dict[str, Any] = Field(
        default_factory=dict, description="Options passed to the backend as they are."
    )
    lora_adapters: dict[str, str] = Field(
        default_factory=dict, description="Adapter name -> local path or hub id."
    )
    startup_timeout: float = Field(
        300.0, gt=0, description="Seconds an instance may take to become ready."
    )

    @field_validator("model")
    @classmethod
    def _valid_name(cls, value: str) -> str:
        if not MODEL_NAME.match(value) or ".." in value:
            raise ValueError(
                "model names are 1-128 characters of letters, digits, '.', '_', '-' and '/'"
                ", starting with a letter or digit"
            )
        return value

    @field_validator("lora_adapters")
    @classmethod
    def _valid_adapters(cls, value: dict[str, str]) -> dict[str, str]:
        for name, source in value.items():
            if not ADAPTER_NAME.match(name):
                raise ValueError(
                    f"adapter name {name!r}: 1-64 letters, digits, '.', '_' and '-', "
                    "starting with a letter or digit"
                )
            if not source.strip():
                raise ValueError(f"adapter {name!r} has an empty path")
        return value


class HeadSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SLLM_", extra="ignore")

    host: str = Field("0.0.0.0", description="Address the head listens on.")
    port: int = Field(8343, description="Port of the OpenAI API and the management API.")
    redis_url: str = Field("redis://127.0.0.1:6379/0", description="Redis holding all state.")
    key_prefix: str = Field("sllm", description="Prefix of every Redis key.")
    lease_seconds: float = Field(15.0, gt=0, description="Length of a task claim's lease.")
    max_attempts: int = Field(2, ge=1, description="Tries of one request before it fails.")
    request_timeout: float = Field(600.0, gt=0, description="Default deadline of a request.")
    heartbeat_timeout: float = Field(60.0, gt=0, description="Silence that prunes a worker.")
    autoscale_interval: float = Field(1.0, gt=0, description="Seconds between scaling passes.")
    result_ttl: float = Field(300.0, gt=0, description="Seconds a finished task is kept.")
    worker_redis_url: str | None = Field(
        None, description="Redis URL handed to workers, when it differs from redis_url."
    )
    log_level: str = Field("info", description="Log level.")


class WorkerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SLLM_", extra="ignore")

    host: str = Field("0.0.0.0", description="Address the worker listens on.")
    port: int = Field(8001, description="Port of the worker API.")
    head_url: str = Field("http://127.0.0.1:8343", description="URL of the head.")
    node_id: str | None = Field(None, description="Fixed node id; the head assigns one if unset.")
    advertise_url: str | None = Field(
        None, description="URL the head calls this worker on (default: derived from host/port)."
    )
    redis_url: str | None = Field(
        None, description="Redis URL; by default the one the head confirms."
    )
    key_prefix: str = Field("sllm", description="Prefix of every Redis key.")
    heartbeat_interval: float = Field(15.0, gt=0, description="Seconds between heartbeats.")
    storage_path: Path = Field(
        Path.home() / ".cache" / "sllm" / "models", description="Local model cache."
    )
    log_dir: Path = Field(
        Path.home() / ".cache" / "sllm" / "logs", description="Where instance logs go."
    )
    log_level: str = Field("info", description="Log level.")
