"""``backend_config`` of a vLLM model, and the command line of vLLM's OpenAI server it
maps to. Pure: no vLLM import, so the head validates configs and tests run anywhere."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

# The flags sllm itself sets: passing them in extra_args would contradict the launch.
_OWNED_FLAGS = ("--host", "--port", "--model", "--served-model-name", "--tensor-parallel-size")


class VllmKnobs(BaseModel):
    """Unknown keys are refused; ``extra_args`` carries anything else, verbatim."""

    model_config = ConfigDict(extra="forbid")

    pretrained_model_name_or_path: str = Field(min_length=1, description="Hub id or local path.")
    dtype: Literal["auto", "half", "float16", "bfloat16", "float", "float32"] = "auto"
    gpu_memory_utilization: float | None = Field(None, gt=0, le=1)
    max_model_len: int | None = Field(None, ge=1)
    max_num_seqs: int | None = Field(None, ge=1)
    enforce_eager: bool | None = Field(
        None,
        description="None: vLLM's choice on a GPU, eager on a CPU (compiled bfloat16 gave "
        "wrong answers on x86 CPUs where eager was right).",
    )
    kv_cache_memory_bytes: int | None = Field(
        None, ge=1, description="KV cache size; on a CPU, default a share of free memory."
    )
    cpu_threads: int | None = Field(
        None, ge=1, description="Cores a CPU instance binds its threads to (default: a share)."
    )
    enable_prefix_caching: bool | None = None
    quantization: str | None = Field(None, min_length=1)
    task: Literal["auto", "generate", "embed"] = "auto"
    max_lora_rank: int | None = Field(None, ge=1)
    max_loras: int | None = Field(None, ge=1)
    trust_remote_code: bool = False
    extra_args: list[str] = Field(default_factory=list, description="Passed through verbatim.")

    @field_validator("extra_args")
    @classmethod
    def _not_owned(cls, value: list[str]) -> list[str]:
        owned = [a for a in value if a.split("=", 1)[0] in _OWNED_FLAGS]
        if owned:
            raise ValueError(f"extra_args may not set {', '.join(owned)}: sllm sets them")
        return value


# A CPU instance's KV cache, by default: this share of the memory free when it starts,
# within these bounds (vLLM's own CPU default, 0.9 x RAM, refuses to start beside
# anything else).
CPU_KV_SHARE = 0.2
CPU_KV_BOUNDS = (256 << 20, 16 << 30)


def cpu_kv_cache_bytes(available: int) -> int:
    """The default KV cache of a CPU instance when ``available`` bytes are free."""
    low, high = CPU_KV_BOUNDS
    return int(min(high, max(low, available * CPU_KV_SHARE)))


def vllm_args(
    knobs: VllmKnobs,
    served_name: str,
    port: int,
    num_gpus: int,
    lora: bool,
    *,
    on_cpu: bool = False,
    available_memory: int = 0,
    cpu_bf16: bool = True,
) -> list[str]:
    """The arguments after ``python -m vllm.entrypoints.openai.api_server``. ``on_cpu``:
    the instance runs on vLLM's CPU build, whose defaults differ (eager, a KV cache sized
    from ``available_memory``, and float32 for ``dtype: auto`` where the CPU has no
    bfloat16 instructions: vLLM would compute in emulated bfloat16, which took 0.5-0.8 s
    to the first token of a short chat on this project's AVX2 VM against 0.17 s)."""
    args = [
        "--model",
        knobs.pretrained_model_name_or_path,
        "--served-model-name",
        served_name,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--dtype",
        "float32" if on_cpu and knobs.dtype == "auto" and not cpu_bf16 else knobs.dtype,
        "--tensor-parallel-size",
        str(max(1, num_gpus)),
    ]
    optional: list[tuple[str, object]] = [
        ("--gpu-memory-utilization", knobs.gpu_memory_utilization),
        ("--max-model-len", knobs.max_model_len),
        ("--max-num-seqs", knobs.max_num_seqs),
        ("--quantization", knobs.quantization),
        (
            "--kv-cache-memory-bytes",
            knobs.kv_cache_memory_bytes
            or (cpu_kv_cache_bytes(available_memory) if on_cpu else None),
        ),
    ]
    for flag, value in optional:
        if value is not None:
            args += [flag, str(value)]
    if knobs.enforce_eager or (knobs.enforce_eager is None and on_cpu):
        args.append("--enforce-eager")
    if knobs.enable_prefix_caching is not None:
        args.append(
            "--enable-prefix-caching"
            if knobs.enable_prefix_caching
            else "--no-enable-prefix-caching"
        )
    if knobs.task == "embed":
        # vLLM >= 0.10 names pooling models' runner this way.
        args += ["--runner", "pooling"]
    if knobs.trust_remote_code:
        args.append("--trust-remote-code")
    if lora:
        args.append("--enable-lora")
        if knobs.max_lora_rank is not None:
            args += ["--max-lora-rank", str(knobs.max_lora_rank)]
        if knobs.max_loras is not None:
            args += ["--max-loras", str(knobs.max_loras)]
    return [*args, *knobs.extra_args]
