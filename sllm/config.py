"""Settings of each process (env ``SLLM_*`` + CLI flags) and the deploy-config schema."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from sllm.edge import names
from sllm.kv.redis_url import check_redis_url

BackendName = Literal["dummy", "transformers", "onnx", "vllm"]
LogFormat = Literal["text", "json"]
# redis://, rediss://, unix:// or a Sentinel service (redis+sentinel://...).
RedisUrl = Annotated[str, AfterValidator(check_redis_url)]


class AutoScalingConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

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


class ResponseCacheConfig(BaseModel):
    """A model's response cache: deterministic requests answered from Redis."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    ttl: float = Field(300.0, gt=0, le=7 * 86400, description="Seconds an answer is kept.")
    max_entries: int = Field(
        1_000, ge=1, le=1_000_000, description="Answers kept; past it the oldest go."
    )
    max_bytes: int = Field(
        1 << 20, ge=1, le=64 << 20, description="Largest answer kept (larger: not cached)."
    )


class DeployConfig(BaseModel):
    """What ``sllm deploy`` sends and ``POST /register`` accepts."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    model: str = Field(
        description="Name clients call the model by.",
        # Documented for clients and fuzzers; the validator below says what is wrong.
        json_schema_extra={"pattern": names.MODEL_PATTERN, "maxLength": names.MODEL_MAX},
    )
    backend: BackendName = Field("dummy", description="Which backend serves it.")
    num_gpus: int = Field(0, ge=0, le=64, description="GPUs one instance needs.")
    auto_scaling_config: AutoScalingConfig = Field(
        default_factory=AutoScalingConfig, description="Scaling policy."
    )
    backend_config: dict[str, Any] = Field(
        default_factory=dict, description="Options passed to the backend as they are."
    )
    lora_adapters: dict[str, str] = Field(
        default_factory=dict,
        description="Adapter name -> local path or hub id.",
        json_schema_extra={
            "propertyNames": {"pattern": names.ADAPTER_PATTERN, "maxLength": names.ADAPTER_MAX}
        },
    )
    startup_timeout: float = Field(
        300.0, gt=0, description="Seconds an instance may take to become ready."
    )
    max_queue_length: int = Field(
        1000, ge=1, description="Requests waiting for the model; past it, 429 with Retry-After."
    )
    response_cache: ResponseCacheConfig | None = Field(
        None,
        description="Answer deterministic requests (greedy, or sampled with a seed) from "
        "Redis when this model version saw the same request; off when unset.",
    )

    @field_validator("model")
    @classmethod
    def _valid_name(cls, value: str) -> str:
        if not names.is_model_name(value):
            raise ValueError(names.MODEL_RULE)
        return value

    @field_validator("backend_config")
    @classmethod
    def _finite(cls, value: dict[str, Any]) -> dict[str, Any]:
        # JSON's 1e309 parses as infinity, which Redis would store as "Infinity" (not
        # JSON) and /status would show as null: a config that no longer redeploys.
        _refuse_non_finite(value, "backend_config")
        return value

    @field_validator("lora_adapters")
    @classmethod
    def _valid_adapters(cls, value: dict[str, str]) -> dict[str, str]:
        for name, source in value.items():
            if not names.is_adapter_name(name):
                raise ValueError(f"adapter name {name!r}: {names.ADAPTER_RULE}")
            if not source.strip():
                raise ValueError(f"adapter {name!r} has an empty path")
        return value


def _refuse_non_finite(value: Any, where: str) -> None:
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{where} is {value}; numbers must be finite")
    if isinstance(value, dict):
        for key, item in value.items():
            _refuse_non_finite(item, f"{where}.{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _refuse_non_finite(item, f"{where}[{index}]")


class HttpEdgeSettings(BaseSettings):
    """What an HTTP client may make the head or a worker hold (``edge/http_limits.py``,
    ``edge/body_limit.py``); the same settings on both."""

    model_config = SettingsConfigDict(env_prefix="SLLM_", extra="ignore", allow_inf_nan=False)

    max_header_bytes: int = Field(
        64 * 1024, ge=1024, description="Request line and headers; larger: 431, unread."
    )
    max_headers: int = Field(100, ge=8, description="Header lines of a request; more: 431.")
    header_timeout: float = Field(
        15.0, gt=0, description="Seconds a request's headers may take to arrive; then 408."
    )
    keep_alive_timeout: float = Field(
        5.0, gt=0, description="Seconds an idle connection (a new one too) is kept open."
    )
    body_timeout: float = Field(
        30.0, gt=0, description="Seconds a request body may pause between two reads; then 408."
    )


class KeySettings(BaseSettings):
    """Keys of a cluster (README, "Keys and limits"). The secrets are read from the
    environment or a file, never from flags: a command line is visible to every user."""

    model_config = SettingsConfigDict(env_prefix="SLLM_", extra="ignore", allow_inf_nan=False)

    api_keys: SecretStr | None = Field(
        None, description="Comma-separated API keys guarding /v1 (unset: /v1 is open)."
    )
    api_keys_file: Path | None = Field(
        None, description="File of API keys, one per line, each with optional rpm=N tpm=N."
    )
    admin_key: SecretStr | None = Field(
        None, description="Key guarding the management API (unset: it is open)."
    )
    cluster_token: SecretStr | None = Field(
        None, description="Shared secret of every head <-> worker call (unset: none)."
    )


class HeadSettings(KeySettings, HttpEdgeSettings):
    model_config = SettingsConfigDict(env_prefix="SLLM_", extra="ignore", allow_inf_nan=False)

    host: str = Field("0.0.0.0", description="Address the head listens on.")
    port: int = Field(8343, description="Port of the OpenAI API and the management API.")
    processes: int = Field(
        1,
        ge=1,
        le=64,
        description="Head processes serving the port (the kernel spreads connections), "
        "each a full head sharing everything through Redis: one core each.",
    )
    redis_url: RedisUrl = Field(
        "redis://127.0.0.1:6379/0",
        description="Redis holding all state: redis://, rediss://, unix://, or a Sentinel "
        "service: redis+sentinel://S1,S2,S3/SERVICE (sentinels on port 26379 unless given).",
    )
    key_prefix: str = Field("sllm", description="Prefix of every Redis key.")
    lease_seconds: float = Field(15.0, gt=0, description="Length of a task claim's lease.")
    max_attempts: int = Field(2, ge=1, description="Tries of one request before it fails.")
    request_timeout: float = Field(600.0, gt=0, description="Default deadline of a request.")
    max_request_timeout: float = Field(
        3600.0, gt=0, description="Longest deadline a request may ask for (X-Request-Timeout)."
    )
    stream_keepalive: float = Field(
        15.0, gt=0, description="Seconds of silence before a stream gets an SSE comment."
    )
    stream_stall_timeout: float = Field(
        60.0,
        gt=0,
        description="Seconds a streamed client may read nothing; then its request is cancelled.",
    )
    heartbeat_timeout: float = Field(60.0, gt=0, description="Silence that prunes a worker.")
    autoscale_interval: float = Field(1.0, gt=0, description="Seconds between scaling passes.")
    result_ttl: float = Field(300.0, gt=0, description="Seconds a finished task is kept.")
    responses_ttl: float = Field(
        86400.0, gt=0, le=30 * 86400, description="Seconds a stored response is kept."
    )
    responses_max_bytes: int = Field(
        1 << 20, gt=0, description="Largest stored response (with its input); larger: not stored."
    )
    # Worst case, max_count x max_bytes of Redis memory (10 GiB); a few KB each is usual.
    responses_max_count: int = Field(
        10_000, gt=0, description="Most stored responses; past it the oldest are dropped."
    )
    worker_redis_url: RedisUrl | None = Field(
        None, description="Redis URL handed to workers, when it differs from redis_url."
    )
    rate_limit_rpm: int = Field(
        0, ge=0, description="Requests per minute per API key, or per client address (0: none)."
    )
    rate_limit_tpm: int = Field(
        0, ge=0, description="Tokens per minute per API key, or per client address (0: none)."
    )
    max_body_bytes: int = Field(
        8 * 1024 * 1024, ge=1024, description="Largest request body; larger ones get a 413."
    )
    log_level: str = Field("info", description="Log level.")
    log_format: LogFormat = Field("text", description="Log lines as text or JSON.")


class WorkerSettings(HttpEdgeSettings):
    model_config = SettingsConfigDict(env_prefix="SLLM_", extra="ignore", allow_inf_nan=False)

    host: str = Field("0.0.0.0", description="Address the worker listens on.")
    port: int = Field(8001, description="Port of the worker API.")
    head_url: str = Field(
        "http://127.0.0.1:8343",
        description="URL of the head; where several heads serve the cluster, their URLs, "
        "comma-separated: heartbeats move to the next when one stops answering.",
    )
    node_id: str | None = Field(None, description="Fixed node id; the head assigns one if unset.")
    advertise_url: str | None = Field(
        None, description="URL the head calls this worker on (default: derived from host/port)."
    )
    redis_url: RedisUrl | None = Field(
        None, description="Redis URL; by default the one the head confirms."
    )
    key_prefix: str = Field("sllm", description="Prefix of every Redis key.")
    heartbeat_interval: float = Field(15.0, gt=0, description="Seconds between heartbeats.")
    drain_timeout: float = Field(
        60.0,
        gt=0,
        le=86400,
        description="After SIGTERM, seconds the requests running here get to finish (the "
        "head sends nothing new meanwhile); then the backends stop and what still runs "
        "resumes elsewhere.",
    )
    storage_path: Path = Field(
        Path.home() / ".cache" / "sllm" / "models", description="Local model cache."
    )
    log_dir: Path = Field(
        Path.home() / ".cache" / "sllm" / "logs", description="Where instance logs go."
    )
    disk_cache_gb: float | None = Field(
        None,
        gt=0,
        description="Size limit of the stored models under the storage path, evicted least "
        "recently used first (default: keep a tenth of the disk free, but always the most "
        "recently used model).",
    )
    memory_cache_gb: float | None = Field(
        None,
        ge=0,
        description="Size limit of the models held in RAM (page cache, locked) after their "
        "instance stops (default: a quarter of the machine's memory; 0: none kept).",
    )
    warm_processes: int = Field(
        1,
        ge=0,
        le=16,
        description="Backend processes kept started, with torch and transformers imported, "
        "for the next instances (0: every instance starts a new interpreter).",
    )
    warm_arena_gb: float = Field(
        0.0,
        ge=0,
        description="Memory each warm process faults in while it waits, for the weights of "
        "the CPU instance it becomes: they are read into it at memory-copy speed and live in "
        "memory the instance owns (0: weights are mapped from the store's files, sharing "
        "the page cache). A model larger than this is mapped; what a model leaves unused is "
        "given back once it is loaded.",
    )
    warm_heap_gb: float | None = Field(
        None,
        ge=0,
        description="Memory each warm process's malloc heap faults in while it waits, for "
        "what the CPU instance it becomes allocates as it starts (continuous batching's KV "
        "cache: 0.38 GB for the demo model); what the instance leaves unused is given back "
        "once it is loaded (default: 0.5 on a worker without NVIDIA GPUs, else 0; 0: none).",
    )
    cluster_token: SecretStr | None = Field(
        None, description="Shared secret of every head <-> worker call (unset: none)."
    )
    # Above the head's limit: /invoke carries a client's body JSON-escaped twice (up to
    # about 4x its size for text that is all escapes or astral characters).
    worker_max_body_bytes: int = Field(
        64 * 1024 * 1024, ge=1024, description="Largest request body; larger ones get a 413."
    )
    log_level: str = Field("info", description="Log level.")
    log_format: LogFormat = Field("text", description="Log lines as text or JSON.")

    @field_validator("head_url")
    @classmethod
    def _head_urls_are_urls(cls, value: str) -> str:
        urls = split_urls(value)
        if not urls:
            raise ValueError("names no URL")
        for url in urls:
            if not url.startswith(("http://", "https://")):
                raise ValueError(f"{url!r} is not an http:// or https:// URL")
        return value

    def head_urls(self) -> list[str]:
        return split_urls(self.head_url)


def split_urls(value: str) -> list[str]:
    """``a, b/`` -> ``["a", "b"]``: comma-separated URLs without trailing slashes."""
    return [url.strip().rstrip("/") for url in value.split(",") if url.strip()]
