"""backend_config of a vLLM model -> vLLM's command line."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from sllm.backends.vllm_flags import VllmKnobs, cpu_kv_cache_bytes, vllm_args


def test_the_launch_flags_come_from_the_spec_and_the_knobs() -> None:
    knobs = VllmKnobs(
        pretrained_model_name_or_path="Qwen/Qwen2.5-0.5B-Instruct",
        dtype="bfloat16",
        gpu_memory_utilization=0.8,
        max_model_len=4096,
        max_num_seqs=64,
        enforce_eager=True,
        enable_prefix_caching=False,
        quantization="awq",
        extra_args=["--seed", "3"],
    )
    args = vllm_args(knobs, "qwen", 9000, num_gpus=2, lora=False)
    pairs = dict(zip(args[::2], args[1::2], strict=False))
    assert args[:4] == ["--model", "Qwen/Qwen2.5-0.5B-Instruct", "--served-model-name", "qwen"]
    assert pairs["--host"] == "127.0.0.1" and pairs["--port"] == "9000"
    assert (
        "--tensor-parallel-size" in args and args[args.index("--tensor-parallel-size") + 1] == "2"
    )
    for flag, value in [
        ("--dtype", "bfloat16"),
        ("--gpu-memory-utilization", "0.8"),
        ("--max-model-len", "4096"),
        ("--max-num-seqs", "64"),
        ("--quantization", "awq"),
    ]:
        assert args[args.index(flag) + 1] == value
    assert "--enforce-eager" in args and "--no-enable-prefix-caching" in args
    assert "--enable-lora" not in args
    assert args[-2:] == ["--seed", "3"]  # verbatim, last


def test_lora_embed_and_defaults() -> None:
    plain = vllm_args(VllmKnobs(pretrained_model_name_or_path="m"), "m", 1, num_gpus=0, lora=False)
    assert plain[plain.index("--tensor-parallel-size") + 1] == "1"
    assert "--enable-prefix-caching" not in plain and "--enforce-eager" not in plain
    knobs = VllmKnobs(
        pretrained_model_name_or_path="m", task="embed", max_lora_rank=16, max_loras=4
    )
    args = vllm_args(knobs, "m", 1, num_gpus=1, lora=True)
    assert args[args.index("--runner") + 1] == "pooling"
    assert "--enable-lora" in args
    assert args[args.index("--max-lora-rank") + 1] == "16"
    assert args[args.index("--max-loras") + 1] == "4"


def test_unknown_keys_and_flags_sllm_sets_are_refused() -> None:
    with pytest.raises(ValidationError, match="tensor_parallel"):
        VllmKnobs.model_validate({"pretrained_model_name_or_path": "m", "tensor_parallel": 2})
    with pytest.raises(ValidationError, match="--port"):
        VllmKnobs(pretrained_model_name_or_path="m", extra_args=["--port=1"])
    with pytest.raises(ValidationError, match="pretrained_model_name_or_path"):
        VllmKnobs.model_validate({})


def test_gpu_instances_run_in_sleep_mode_unless_told_otherwise(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from sllm.backends import vllm_backend
    from sllm.backends.base import LaunchSpec

    def args(num_gpus: int, **knobs: object) -> list[str]:
        model = VllmKnobs(pretrained_model_name_or_path="m", **knobs)  # type: ignore[arg-type]
        return vllm_args(model, "m", 1, num_gpus=num_gpus, lora=False)

    assert "--enable-sleep-mode" in args(1)
    assert "--enable-sleep-mode" not in args(1, sleep_mode=False)
    assert "--enable-sleep-mode" not in args(0)
    assert "--enable-sleep-mode" in args(0, sleep_mode=True)
    with pytest.raises(ValidationError, match="sleep_mode"):
        VllmKnobs(pretrained_model_name_or_path="m", extra_args=["--enable-sleep-mode"])

    backend = vllm_backend.VllmBackend(name="vllm", module="sllm.backends.vllm_server")
    config = {"pretrained_model_name_or_path": "m"}
    assert backend.sleeps(config, 1) and not backend.sleeps(config, 0)
    assert not backend.sleeps({"nonsense": 1}, 1)  # refused at launch, with the reason
    spec = LaunchSpec("i", "m", 1, backend_config=config, num_gpus=1)
    # vLLM serves the sleep endpoints in its development mode only.
    assert backend.env(spec)["VLLM_SERVER_DEV_MODE"] == "1"
    assert "VLLM_SERVER_DEV_MODE" not in backend.env(LaunchSpec("i", "m", 1, config))
    # The CPU build has no sleep mode: asked for, the launch is refused with why.
    monkeypatch.delenv(vllm_backend.ENTRYPOINT_ENV, raising=False)
    monkeypatch.setattr(vllm_backend, "vllm_build", lambda: "cpu")
    cpu = LaunchSpec("i", "m", 1, backend_config={**config, "sleep_mode": True})
    with pytest.raises(ValueError, match="sleep_mode needs vLLM's CUDA build"):
        backend.command(cpu)


def test_a_cpu_instance_runs_eager_unless_told_and_passes_a_chosen_kv_cache() -> None:
    knobs = VllmKnobs(pretrained_model_name_or_path="m")
    args = vllm_args(knobs, "m", 1, num_gpus=0, lora=False, on_cpu=True)
    assert "--enforce-eager" in args
    assert "--kv-cache-memory-bytes" not in args  # sized by sllm's entry, from the model
    chosen = VllmKnobs(
        pretrained_model_name_or_path="m", enforce_eager=False, kv_cache_memory_bytes=12345
    )
    args = vllm_args(chosen, "m", 1, num_gpus=0, lora=False, on_cpu=True)
    assert "--enforce-eager" not in args
    assert args[args.index("--kv-cache-memory-bytes") + 1] == "12345"
    # On a GPU, vLLM's own choices.
    gpu = vllm_args(knobs, "m", 1, num_gpus=1, lora=False)
    assert "--enforce-eager" not in gpu and "--kv-cache-memory-bytes" not in gpu


# SmolLM2-135M's shape: 30 layers, 3 KV heads of 64.
SMOL = {
    "num_hidden_layers": 30,
    "num_attention_heads": 9,
    "num_key_value_heads": 3,
    "hidden_size": 576,
    "max_position_embeddings": 8192,
}


def test_a_cpu_kv_cache_holds_the_models_context_within_a_share_of_free_memory() -> None:
    # Keys and values in float32, and a quarter more for vLLM's blocks.
    per_token = 2 * 30 * 3 * 64 * 4 * 5 // 4
    assert cpu_kv_cache_bytes(SMOL, "float32", None, 20 << 30) == per_token * 8192
    assert cpu_kv_cache_bytes(SMOL, "bfloat16", None, 20 << 30) == per_token // 2 * 8192
    # A shorter context still gets the transformers backend's 8192 tokens; a longer one all.
    assert cpu_kv_cache_bytes(SMOL, "float32", 2048, 20 << 30) == per_token * 8192
    assert cpu_kv_cache_bytes(SMOL, "float32", 32768, 20 << 30) == per_token * 32768
    # Never past a fifth of what is free, nor under the floor; an unknown shape: the share.
    assert cpu_kv_cache_bytes(SMOL, "float32", None, 1 << 30) == int((1 << 30) * 0.2)
    assert cpu_kv_cache_bytes(SMOL, "float32", None, 0) == 64 << 20
    assert cpu_kv_cache_bytes({}, "auto", None, 10 << 30) == 2 << 30


def test_a_worker_runs_vllm_with_a_build_for_its_hardware(monkeypatch: pytest.MonkeyPatch) -> None:
    from sllm.backends import vllm_backend
    from sllm.worker import hardware

    backend = vllm_backend.VllmBackend(name="vllm", module="sllm.backends.vllm_server")
    monkeypatch.delenv(vllm_backend.ENTRYPOINT_ENV, raising=False)
    monkeypatch.setattr(hardware, "gpu_count", lambda: 0)
    for build, why in [
        ("cpu", None),
        ("cuda", "the installed vllm is the CUDA build and this worker has no NVIDIA GPU"),
        (None, "the vllm backend needs vllm, not installed on this worker"),
    ]:
        monkeypatch.setattr(vllm_backend, "vllm_build", lambda build=build: build)
        reason = backend.unavailable_reason()
        assert (reason is None) if why is None else (reason or "").startswith(why)
    monkeypatch.setattr(hardware, "gpu_count", lambda: 1)
    monkeypatch.setattr(vllm_backend, "vllm_build", lambda: "cuda")
    assert backend.unavailable_reason() is None


def test_a_cpu_without_bfloat16_instructions_computes_in_float32() -> None:
    knobs = VllmKnobs(pretrained_model_name_or_path="m")

    def dtype(knobs: VllmKnobs, **kw: object) -> str:
        args = vllm_args(knobs, "m", 1, num_gpus=0, lora=False, **kw)  # type: ignore[arg-type]
        return args[args.index("--dtype") + 1]

    assert dtype(knobs, on_cpu=True, cpu_bf16=False) == "float32"
    assert dtype(knobs, on_cpu=True, cpu_bf16=True) == "auto"
    assert dtype(knobs, on_cpu=False, cpu_bf16=False) == "auto"  # a GPU's choice
    chosen = VllmKnobs(pretrained_model_name_or_path="m", dtype="bfloat16")
    assert dtype(chosen, on_cpu=True, cpu_bf16=False) == "bfloat16"


def test_bfloat16_support_is_read_from_the_cpu_flags() -> None:
    from sllm.worker.hardware import bf16_in_cpuinfo

    assert not bf16_in_cpuinfo("processor\t: 0\nflags\t\t: fpu sse avx2 fma\n\n")
    assert bf16_in_cpuinfo("processor\t: 0\nflags\t\t: avx2 avx512f avx512_bf16\n")
    assert bf16_in_cpuinfo("processor\t: 0\nFeatures\t: fp asimd bf16 i8mm\n")
    assert not bf16_in_cpuinfo("model name\t: bf16 in a name is no flag\n")


def test_tool_parser_options_reach_vllm() -> None:
    model = "Qwen/Qwen2.5-0.5B-Instruct"
    plain = vllm_args(VllmKnobs(pretrained_model_name_or_path=model), "q", 1, 0, lora=False)
    assert "--tool-call-parser" not in plain and "--enable-auto-tool-choice" not in plain
    hermes = VllmKnobs(pretrained_model_name_or_path=model, tool_call_parser="hermes")
    args = vllm_args(hermes, "q", 1, 0, lora=False)
    assert args[args.index("--tool-call-parser") + 1] == "hermes"
    assert "--enable-auto-tool-choice" in args
    forced_only = hermes.model_copy(update={"enable_auto_tool_choice": False})
    assert "--enable-auto-tool-choice" not in vllm_args(forced_only, "q", 1, 0, lora=False)
    with pytest.raises(ValidationError, match="needs tool_call_parser"):
        VllmKnobs(pretrained_model_name_or_path=model, enable_auto_tool_choice=True)
