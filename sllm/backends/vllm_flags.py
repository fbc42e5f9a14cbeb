"""``backend_config`` of a vLLM model, and the command line of vLLM's OpenAI server it
maps to. Pure: no vLLM import, so the head validates configs and tests run anywhere."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

# The flags sllm itself sets: passing them in extra_args would contradict the launch.
# (sleep_mode sets --enable-sleep-mode: the worker must know whether an instance sleeps.)
_OWNED_FLAGS = (
    "--host",
    "--port",
    "--model",
    "--served-model-name",
    "--tensor-parallel-size",
    "--enable-sleep-mode",
)


class VllmKnobs(BaseModel):
    """Unknown keys are refused; ``extra_args`` carries anything else, verbatim."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

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
    sleep_mode: bool | None = Field(
        None,
        description="Put an idle instance to sleep (vLLM's sleep mode, level 1: weights to "
        "host memory, GPU memory freed) instead of stopping it; None: on GPUs. vLLM sleeps "
        "on CUDA only.",
    )
    enable_prefix_caching: bool | None = None
    quantization: str | None = Field(None, min_length=1)
    task: Literal["auto", "generate", "embed"] = "auto"
    max_lora_rank: int | None = Field(None, ge=1)
    max_loras: int | None = Field(None, ge=1)
    trust_remote_code: bool = False
    tool_call_parser: str | None = Field(
        None,
        min_length=1,
        description="vLLM's parser of the model's tool calls (hermes, llama3_json, mistral, "
        "...): tool_choice required and named work without it, auto needs it.",
    )
    enable_auto_tool_choice: bool | None = Field(
        None, description="tool_choice auto (the models decides); None: on with a parser."
    )
    extra_args: list[str] = Field(default_factory=list, description="Passed through verbatim.")

    @model_validator(mode="after")
    def _auto_needs_a_parser(self) -> VllmKnobs:
        if self.enable_auto_tool_choice and self.tool_call_parser is None:
            raise ValueError("enable_auto_tool_choice needs tool_call_parser (vLLM's rule)")
        return self

    @field_validator("extra_args")
    @classmethod
    def _not_owned(cls, value: list[str]) -> list[str]:
        owned = [a for a in value if a.split("=", 1)[0] in _OWNED_FLAGS]
        if owned:
            raise ValueError(
                f"extra_args may not set {', '.join(owned)}: sllm sets them "
                "(sleep mode: the sleep_mode key)"
            )
        return value


# A CPU instance's KV cache, by default: room for the model's whole context, and at least
# as many tokens as the transformers backend keeps on a CPU, a quarter more (vLLM refused
# a cache of exactly the context's size: its blocks take more), at most this share of
# the memory free when it starts. vLLM's own CPU default (0.9 x RAM) refuses to start beside
# anything else, and vLLM zeroes the cache at start: 4 GiB took 5 s of a 9 s start here.
CPU_KV_SHARE = 0.2
CPU_KV_TOKENS = 8192
CPU_KV_FLOOR = 64 << 20
_DTYPE_BYTES = {"float32": 4, "float": 4}


def cpu_kv_cache_bytes(
    config: dict[str, Any], dtype: str, max_model_len: int | None, available: int
) -> int:
    """The default KV cache of a CPU instance of the model whose ``config.json`` is
    ``config``, computing in ``dtype``, when ``available`` bytes are free."""
    ceiling = int(available * CPU_KV_SHARE)
    try:
        layers = int(config["num_hidden_layers"])
        heads = int(config["num_attention_heads"])
        kv_heads = int(config.get("num_key_value_heads") or heads)
        head_dim = int(config.get("head_dim") or int(config["hidden_size"]) // heads)
    except (KeyError, TypeError, ValueError, ZeroDivisionError):
        return max(CPU_KV_FLOOR, ceiling)  # not a decoder sllm can size: the share
    per_token = 2 * layers * kv_heads * head_dim * _DTYPE_BYTES.get(dtype, 2)
    context = max_model_len or int(config.get("max_position_embeddings") or CPU_KV_TOKENS)
    wanted = per_token * max(context, CPU_KV_TOKENS) * 5 // 4
    return max(CPU_KV_FLOOR, min(wanted, ceiling))


def sleeps(knobs: VllmKnobs, num_gpus: int) -> bool:
    """Whether the instance runs in sleep mode: as configured, by default on GPUs."""
    return knobs.sleep_mode if knobs.sleep_mode is not None else num_gpus > 0


def vllm_args(
    knobs: VllmKnobs,
    served_name: str,
    port: int,
    num_gpus: int,
    lora: bool,
    *,
    on_cpu: bool = False,
    cpu_bf16: bool = True,
) -> list[str]:
    """The arguments after ``python -m vllm.entrypoints.openai.api_server``. ``on_cpu``:
    the instance runs on vLLM's CPU build, whose defaults differ (eager, and float32 for
    ``dtype: auto`` where the CPU has no
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
        # On a CPU without one, sllm's entry sizes it from the model (cpu_kv_cache_bytes).
        ("--kv-cache-memory-bytes", knobs.kv_cache_memory_bytes),
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
    if sleeps(knobs, num_gpus):
        args.append("--enable-sleep-mode")
    if knobs.task == "embed":
        # vLLM >= 0.10 names pooling models' runner this way.
        args += ["--runner", "pooling"]
    if knobs.trust_remote_code:
        args.append("--trust-remote-code")
    if knobs.tool_call_parser is not None:
        args += ["--tool-call-parser", knobs.tool_call_parser]
        if knobs.enable_auto_tool_choice is not False:
            args.append("--enable-auto-tool-choice")
    if lora:
        args.append("--enable-lora")
        if knobs.max_lora_rank is not None:
            args += ["--max-lora-rank", str(knobs.max_lora_rank)]
        if knobs.max_loras is not None:
            args += ["--max-loras", str(knobs.max_loras)]
    return [*args, *knobs.extra_args]
