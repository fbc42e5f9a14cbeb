"""A stored model fetched from a real worker process (its /store routes) instead of
stored from its source: verified byte for byte, refused when it does not verify, and
only with the cluster token or the store token derived from it."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from sllm.client.launcher import Child, free_port, start_worker
from sllm.edge.auth import store_token
from sllm.store import catalog
from sllm.store.integrity import check_directory, read_index
from sllm.store.peer_fetch import PEERS_ENV, TOKEN_ENV, PeerFetchError, fetch, fetch_speed
from tests.tiny_models import build_tiny_causal_lm

pytestmark = pytest.mark.timeout(180)

TOKEN = "cluster-secret"


@pytest.fixture(scope="module")
def peer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Child, str, Path]]:
    """A worker (no head needed to serve its store) holding a tiny model stored, the
    model's source, and the worker's stored copy."""
    work = tmp_path_factory.mktemp("peer")
    source = str(build_tiny_causal_lm(work / "lm"))
    stored, _ = catalog.save(source, work / "models")
    child = start_worker(free_port(), "http://127.0.0.1:9", work, {"SLLM_CLUSTER_TOKEN": TOKEN})
    yield child, source, stored
    child.stop()


def test_a_peer_copy_arrives_verified_and_identical(
    peer: tuple[Child, str, Path], tmp_path: Path
) -> None:
    child, source, stored = peer
    target = tmp_path / "store" / "copy"
    index = fetch(child.url, source, "AutoModelForCausalLM", target, token=store_token(TOKEN),
                  part_bytes=4096)  # fmt: skip
    assert check_directory(target, "full")[1] == []
    for entry in [*index.chunks, *index.files]:
        assert (target / entry.file).read_bytes() == (stored / entry.file).read_bytes()
    assert not (tmp_path / "store" / "copy.partial").exists()
    # Its speed is kept for the worker's heartbeat (and placement's next estimate).
    speed = fetch_speed(tmp_path / "store")
    assert speed is not None and 1e5 < speed < 1e11
    assert fetch_speed(tmp_path / "nowhere") is None


def test_only_the_cluster_or_store_token_reads_a_store(
    peer: tuple[Child, str, Path], tmp_path: Path
) -> None:
    child, source, _ = peer
    for token in (None, "wrong", store_token("another cluster")):
        with pytest.raises(PeerFetchError, match="401"):
            fetch(child.url, source, "AutoModelForCausalLM", tmp_path / "x", token=token)
    fetch(child.url, source, "AutoModelForCausalLM", tmp_path / "y", token=TOKEN)


def test_what_a_peer_lacks_or_does_not_list_is_not_served(
    peer: tuple[Child, str, Path], tmp_path: Path
) -> None:
    child, source, stored = peer
    with pytest.raises(PeerFetchError, match="holds no stored copy"):
        fetch(child.url, "/elsewhere", "AutoModelForCausalLM", tmp_path / "x", token=TOKEN)
    with pytest.raises(PeerFetchError, match="holds no stored copy"):  # another class
        fetch(child.url, source, "AutoModel", tmp_path / "x", token=TOKEN)
    auth = {"authorization": f"Bearer {TOKEN}"}
    for path in (
        f"/store/file/{stored.name}/..%2F..%2Fworker-{child.url.rsplit(':', 1)[1]}.log",
        f"/store/file/{stored.name}/missing.bin",
        f"/store/file/..%2F{stored.name}/index.json",
        f"/store/file/{stored.name}%00/index.json",
    ):
        assert httpx.get(child.url + path, headers=auth).status_code == 404, path


def test_a_copy_that_does_not_verify_is_refused(
    peer: tuple[Child, str, Path], tmp_path: Path
) -> None:
    """A byte flipped on the peer with its mtime put back (so the peer's own quick check
    passes): the fetcher's full check catches it and keeps nothing."""
    child, source, stored = peer
    chunk = stored / read_index(stored).chunks[0].file
    stat = chunk.stat()
    original = chunk.read_bytes()
    try:
        with open(chunk, "r+b") as f:
            f.seek(len(original) // 2)
            f.write(bytes([original[len(original) // 2] ^ 0xFF]))
        os.utime(chunk, ns=(stat.st_atime_ns, stat.st_mtime_ns))
        target = tmp_path / "store" / "copy"
        with pytest.raises(PeerFetchError, match="does not verify"):
            fetch(child.url, source, "AutoModelForCausalLM", target, token=TOKEN)
        assert not target.exists() and not (tmp_path / "store" / "copy.partial").exists()
    finally:
        chunk.write_bytes(original)
        os.utime(chunk, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def test_storing_fetches_from_the_peers_it_is_given_instead_of_ingesting(
    peer: tuple[Child, str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    child, source, _ = peer

    def no_ingest(*args: object, **kwargs: object) -> None:
        raise AssertionError("ingested from the source")

    monkeypatch.setattr(catalog, "ingest", no_ingest)
    dead = f"http://127.0.0.1:{free_port()}"  # a peer that is gone: the next is asked
    monkeypatch.setenv(PEERS_ENV, f'["{dead}", "{child.url}"]')
    monkeypatch.setenv(TOKEN_ENV, store_token(TOKEN))
    directory, _ = catalog.save(source, tmp_path / "models")
    assert check_directory(directory, "full")[1] == []
    # Without peers, storing goes to the source.
    monkeypatch.delenv(PEERS_ENV)
    with pytest.raises(AssertionError, match="ingested"):
        catalog.save(source, tmp_path / "other")
