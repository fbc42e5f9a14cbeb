"""Where model files may come from: nothing a deploy config names leads out of the
worker's storage path, except an operator's absolute path."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from sllm.backends import model_source
from sllm.backends.model_source import (
    ModelFiles,
    ModelSourceError,
    adapter_dir,
    dequantized_dir,
    is_hub_id,
    local_weights_bytes,
    resolve,
)

pytestmark = pytest.mark.timeout(30)


@pytest.mark.parametrize(
    "source",
    ["HuggingFaceTB/SmolLM2-135M-Instruct", "Qwen/Qwen2.5-0.5B-Instruct", "org/tiny", "a_b/c.d"],
)
def test_hub_ids(source: str) -> None:
    assert is_hub_id(source)


@pytest.mark.parametrize(
    "source",
    ["../x", "a/..", "../../etc/passwd", "a/../b", "a/b/c", "a--b/c", "a/b.", "a/.b", "-a/b",
     "a/b\n", "a b/c", "a/" + "x" * 97, "/abs/path", "~/x", "a"],
)  # fmt: skip
def test_not_hub_ids(source: str) -> None:
    assert not is_hub_id(source)


@pytest.fixture
def no_hub(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Records what would be downloaded; nothing is."""
    asked: list[str] = []

    def download(repo_id: str, cache: Path) -> Path:
        asked.append(repo_id)
        return cache / "hub" / repo_id.replace("/", "--")

    monkeypatch.setattr(model_source, "_download", download)
    return asked


@pytest.mark.parametrize("source", ["../models/m", "./m", "a/../../b", "x/../..", ".."])
def test_relative_tricks_are_refused_and_nothing_is_fetched(
    source: str, tmp_path: Path, no_hub: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Even a directory that exists where the worker runs is not read by a relative name.
    (tmp_path / "models" / "m").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "models")
    with pytest.raises(ModelSourceError, match="not an absolute path"):
        resolve(source, tmp_path / "cache")
    with pytest.raises(ModelSourceError, match="not an absolute path"):
        adapter_dir(source, tmp_path / "cache")
    assert no_hub == []


def test_absolute_operator_paths_are_read_where_they_are(tmp_path: Path, no_hub: list[str]) -> None:
    model = tmp_path / "elsewhere" / "model"
    model.mkdir(parents=True)
    (model / "model.safetensors").write_bytes(b"x" * 10)
    gguf = tmp_path / "elsewhere" / "m.gguf"
    gguf.write_bytes(b"gguf")
    cache = tmp_path / "cache"
    assert resolve(str(model), cache) == ModelFiles(model)
    assert resolve(str(gguf), cache) == ModelFiles(gguf.parent, "m.gguf")
    with pytest.raises(ModelSourceError, match="no model at"):
        resolve(str(tmp_path / "missing"), cache)
    assert resolve("org/tiny", cache).path.is_relative_to(cache)
    assert no_hub == ["org/tiny"]


def test_what_is_written_stays_under_the_storage_path(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    gguf = tmp_path / "elsewhere" / "...gguf"
    gguf.parent.mkdir()
    gguf.write_bytes(b"gguf")
    target = dequantized_dir(ModelFiles(gguf.parent, gguf.name), cache)
    assert target.parent == cache / "gguf"


def test_a_download_outside_the_cache_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import huggingface_hub

    def escape(repo_id: str, cache_dir: Path, **_: Any) -> str:
        return str(Path(cache_dir) / ".." / ".." / "outside")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", escape)
    with pytest.raises(ModelSourceError, match="outside the storage path"):
        resolve("org/tiny", tmp_path / "cache")


def test_the_hubs_own_refusal_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import huggingface_hub
    from huggingface_hub.errors import HFValidationError

    def refuse(repo_id: str, **_: Any) -> str:
        raise HFValidationError(f"bad repo id {repo_id}")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", refuse)
    with pytest.raises(ModelSourceError, match="could not fetch 'org/tiny'"):
        resolve("org/tiny", tmp_path / "cache")


def test_sizing_reads_only_the_top_of_a_directory(tmp_path: Path) -> None:
    (tmp_path / "model.safetensors").write_bytes(b"x" * 100)
    deep = tmp_path / "a" / "b"
    deep.mkdir(parents=True)
    (deep / "other.safetensors").write_bytes(b"x" * 1000)
    assert local_weights_bytes(str(tmp_path)) == 100
    assert local_weights_bytes("org/not-downloaded") is None
    assert local_weights_bytes("relative/dir") is None


def test_a_source_to_store_ahead_must_name_a_model(tmp_path: Path) -> None:
    from sllm.backends.model_source import ModelSourceError, check_source

    model = tmp_path / "m"
    model.mkdir()
    (model / "config.json").write_text("{}")
    (tmp_path / "x.gguf").write_bytes(b"GGUF")
    for fine in ("smollm2-135m", "owner/name", str(model), str(tmp_path / "x.gguf")):
        check_source(fine, on_disk=True)
    # Without on_disk only the form counts: the backend's own load says what is missing.
    check_source("/nowhere")
    for bad in ("relative/../dir/x", "--help", "/", str(tmp_path), "/nowhere"):
        with pytest.raises(ModelSourceError):
            check_source(bad, on_disk=True)


def test_a_home_of_no_user_is_a_clear_error_not_a_crash() -> None:
    # Found by the schema fuzzer: "~F..." made expanduser raise RuntimeError, a 500.
    from sllm.backends.model_source import check_source

    source = "~no-such-user-sllm/model"
    for call in (
        lambda: check_source(source, on_disk=True),
        lambda: check_source(source),
        lambda: resolve(source, Path("/nowhere")),
    ):
        with pytest.raises(ModelSourceError, match="no home directory for '~no-such-user-sllm'"):
            call()
    assert local_weights_bytes(source) is None


def test_gguf_questions_are_answered_once_while_dequantizing_and_anew_after() -> None:
    import gguf

    from sllm.backends.model_source import _gguf_parsed_once

    original = gguf.get_tensor_name_map
    with _gguf_parsed_once():
        first = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, 2)
        assert gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, 2) is first
    assert gguf.get_tensor_name_map is original
    assert gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, 2) is not first


def test_a_gguf_file_is_parsed_once_over_a_plain_array_with_the_same_values(
    tmp_path: Path,
) -> None:
    import gguf
    import numpy as np

    from sllm.backends.model_source import _gguf_parsed_once

    path = tmp_path / "m.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_array("tokenizer.ggml.tokens", ["a", "b", "ccc"])
    writer.add_uint32("llama.block_count", 2)
    writer.add_tensor("token_embd.weight", np.arange(12, dtype=np.float32).reshape(3, 4))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()

    def values(reader: gguf.GGUFReader) -> dict[str, list[object]]:
        return {name: [f.parts[i].tolist() for i in f.data] for name, f in reader.fields.items()}

    mapped = gguf.GGUFReader(path)
    with _gguf_parsed_once():
        plain = gguf.GGUFReader(path)
        assert gguf.GGUFReader(path) is plain
        # No memmap slices: each one cost a memmap object (the parse's slowness).
        assert type(plain.data) is np.ndarray
        assert type(plain.tensors[0].data) is np.ndarray
    assert values(plain) == values(mapped)
    assert plain.tensors[0].data.tolist() == mapped.tensors[0].data.tolist()
