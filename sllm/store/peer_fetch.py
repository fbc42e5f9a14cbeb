"""A stored copy fetched from a peer worker instead of stored from its source.

A worker that holds a deployed source in its store serves the copy over HTTP
(``sllm.worker.store_routes``, behind the cluster token or the store token derived
from it). A backend about to store that source (the transformers backend's first
start on a worker, or the ``sllm store save`` a vLLM backend runs) is handed the
workers that hold it (``SLLM_STORE_PEERS``, chosen by the head's placement, with the
store token ``SLLM_STORE_TOKEN``) and asks each in turn before it ingests: the index
first, then every file in parts of ``PART_BYTES`` read ``PARALLEL`` at a time with
HTTP ranges, each written in place. Every byte is then hashed against the index's
checksums, and only a copy that verifies is committed, atomically as an ingest's
(``ingest.commit``). A peer that fails, lies or goes away costs the attempt, never a
bad copy: the next peer, then the source, is tried.

A deployed source names one model in the whole cluster (as storage-aware placement
already assumes): the copy a peer stored from its ``/models/x`` is taken for this
worker's ``/models/x``.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import shutil
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from urllib.parse import quote, urlencode, urlsplit

from sllm.edge.auth import store_token
from sllm.store.format import FileEntry, StoreError, StoreIndex
from sllm.store.ingest import commit, partial_dir
from sllm.store.integrity import check

log = logging.getLogger(__name__)

PEERS_ENV = "SLLM_STORE_PEERS"  # a JSON list of worker URLs holding the source stored
TOKEN_ENV = "SLLM_STORE_TOKEN"  # sllm.edge.auth.store_token: reads stores, nothing else
# Beside the stored copies: the last fetch's speed, which the worker's heartbeat reports
# and placement estimates the next fetch by.
SPEED_FILE = ".peer-fetch.json"
PART_BYTES = 16 << 20
# Ranges read at once: half the cores, up to 8. On the 2-core VM one stream fetched
# faster than 2 or 8 (benchmarks/peer_fetch.py: the link is CPU there); parallel
# streams fill a fast NIC where one TCP stream cannot.
PARALLEL = max(1, min(8, (os.cpu_count() or 1) // 2))
TIMEOUT = 30.0  # seconds without progress on one call
_WRITE_BYTES = 1 << 20


class PeerFetchError(StoreError):
    """This peer could not give a sound copy."""


def peers_from_env() -> list[str]:
    """The peers a worker handed this process (none when unset or unreadable)."""
    raw = os.environ.get(PEERS_ENV)
    if not raw:
        return []
    try:
        peers = json.loads(raw)
    except ValueError:
        log.warning("%s is not a JSON list: ignored", PEERS_ENV)
        return []
    return [p for p in peers if isinstance(p, str)] if isinstance(peers, list) else []


def fetch_environment(peers: Sequence[str], cluster_token: str | None) -> dict[str, str]:
    """What a process that may store a model is given to fetch it from ``peers``."""
    if not peers:
        return {}
    env = {PEERS_ENV: json.dumps(list(peers))}
    if cluster_token is not None:
        env[TOKEN_ENV] = store_token(cluster_token)
    return env


def parts(entries: list[FileEntry], part_bytes: int = PART_BYTES) -> list[tuple[str, int, int]]:
    """Every file's byte ranges, ``(file, first, last)`` inclusive as HTTP counts them,
    at most ``part_bytes`` each; an empty file has none."""
    out = []
    for entry in entries:
        for first in range(0, entry.size, part_bytes):
            out.append((entry.file, first, min(first + part_bytes, entry.size) - 1))
    return out


def fetch(
    peer: str,
    source: str,
    auto_class: str,
    target: Path,
    *,
    token: str | None = None,
    parallel: int = PARALLEL,
    part_bytes: int = PART_BYTES,
) -> StoreIndex:
    """Fetch ``peer``'s stored copy of ``source`` (loaded as ``auto_class``) into
    ``target``, verified; PeerFetchError when the peer has none or gives a bad one."""
    started = time.monotonic()
    connections = _Connections(peer, {"authorization": f"Bearer {token}"} if token else {})
    partial = partial_dir(target)
    try:
        name, index = _index(connections, source, auto_class)
        entries = [*index.chunks, *index.files]
        shutil.rmtree(partial, ignore_errors=True)
        for entry in entries:  # every file's blocks first: a full disk fails now
            path = partial / entry.file
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "wb") as f:
                if entry.size:
                    os.posix_fallocate(f.fileno(), 0, entry.size)
        with ThreadPoolExecutor(parallel, thread_name_prefix="sllm-peer-fetch") as pool:
            todo = parts(entries, part_bytes)
            list(pool.map(lambda p: _get(connections, name, partial, *p), todo))
        moved = time.monotonic()
        for entry in entries:
            with open(partial / entry.file, "rb") as f:
                os.fsync(f.fileno())
        synced = time.monotonic()
        problems = check(partial, index, "full")
        if problems:
            raise PeerFetchError(f"the copy from {peer} does not verify: {problems[:3]}")
        # Stamped with this disk's mtimes, so that a load's quick check need not hash.
        written = {e.file: (partial / e.file).stat().st_mtime_ns for e in entries}
        index = replace(
            index,
            chunks=[replace(e, mtime_ns=written[e.file]) for e in index.chunks],
            files=[replace(e, mtime_ns=written[e.file]) for e in index.files],
        )
        commit(partial, target, index)
        seconds = time.monotonic() - started
        _record_speed(target.parent, index.nbytes, seconds)
    except (http.client.HTTPException, OSError) as exc:
        shutil.rmtree(partial, ignore_errors=True)
        raise PeerFetchError(f"fetching {source} from {peer} failed: {exc!r}") from exc
    except PeerFetchError:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    finally:
        connections.close()
    log.info(
        "fetched %s from %s: %.2f GB in %.2f s (%.2f GB/s; transfer %.2f, sync %.2f, "
        "verify %.2f), verified",
        source,
        peer,
        index.nbytes / 1e9,
        seconds,
        index.nbytes / 1e9 / max(seconds, 1e-6),
        moved - started,
        synced - moved,
        time.monotonic() - synced,
    )
    return index


def _record_speed(store_root: Path, nbytes: int, seconds: float) -> None:
    """Kept for the heartbeat; the copy is committed already, so a failure only logs."""
    speed = {"bytes_per_s": nbytes / max(seconds, 1e-6), "bytes": nbytes, "at": time.time()}
    scratch = store_root / f"{SPEED_FILE}.{os.getpid()}"
    try:
        scratch.write_text(json.dumps(speed))
        scratch.replace(store_root / SPEED_FILE)  # readers see the old figure or the new
    except OSError as exc:
        log.warning("could not record the fetch's speed in %s: %s", store_root, exc)


def fetch_speed(store_root: Path) -> float | None:
    """Bytes per second of the last fetch from a peer into ``store_root`` (fetch,
    fsync and verify), or None when none was made or its record is unreadable."""
    try:
        speed = json.loads((store_root / SPEED_FILE).read_text())["bytes_per_s"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return float(speed) if isinstance(speed, int | float) and speed > 0 else None


def _index(connections: _Connections, source: str, auto_class: str) -> tuple[str, StoreIndex]:
    """The name and index of the peer's copy of ``source``."""
    peer = connections.peer
    conn, _ = connections.get()
    query = urlencode({"source": source, "auto_class": auto_class})
    conn.request("GET", f"{connections.prefix}/store/copy?{query}", headers=connections.headers)
    resp = conn.getresponse()
    body = resp.read()
    if resp.status == 404:
        raise PeerFetchError(f"{peer} holds no stored copy of {source}")
    if resp.status != 200:
        raise PeerFetchError(f"{peer} answered {resp.status}: {body[:300]!r}")
    try:
        data = json.loads(body)
        index = StoreIndex.from_json(data["index"])
        index.validate()
        name = str(data["name"])
    except (KeyError, TypeError, ValueError) as exc:
        raise PeerFetchError(f"{peer} sent an unreadable index: {exc}") from exc
    for entry in [*index.chunks, *index.files]:  # files stay inside the copy
        if entry.file.startswith("/") or ".." in Path(entry.file).parts:
            raise PeerFetchError(f"{peer} sent an index naming {entry.file!r}")
    return name, index


class _Connections:
    """One keep-alive connection to the peer per fetching thread. The files travel
    through ``http.client``, whose ``readinto`` fills one buffer per thread: httpx
    moved them at a quarter of the link's speed here (a copy or two per 64 KiB read)."""

    def __init__(self, peer: str, headers: dict[str, str]) -> None:
        url = urlsplit(peer)
        self.peer = peer
        self.prefix = url.path.rstrip("/")  # a worker advertised under a path
        self._https = url.scheme == "https"
        self._host, self._port = url.hostname or "", url.port
        self.headers = headers
        self._local = threading.local()
        self._all: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()

    def get(self) -> tuple[http.client.HTTPConnection, memoryview]:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            kind = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
            conn = self._local.conn = kind(self._host, self._port, timeout=TIMEOUT)
            self._local.buffer = memoryview(bytearray(_WRITE_BYTES))
            with self._lock:
                self._all.append(conn)
        return conn, self._local.buffer

    def close(self) -> None:
        for conn in self._all:
            conn.close()


def _get(pool: _Connections, name: str, partial: Path, file: str, first: int, last: int) -> None:
    url = f"{pool.prefix}/store/file/{quote(name)}/{quote(file)}"
    conn, buffer = pool.get()
    conn.request("GET", url, headers={**pool.headers, "range": f"bytes={first}-{last}"})
    resp = conn.getresponse()
    if resp.status != 206:
        resp.read()
        raise PeerFetchError(f"{url} bytes {first}-{last}: HTTP {resp.status}")
    fd = os.open(partial / file, os.O_WRONLY)
    position = first
    try:
        while n := resp.readinto(buffer):
            if position + n > last + 1:
                raise PeerFetchError(f"{url}: more bytes than asked for")
            os.pwrite(fd, buffer[:n], position)
            position += n
    finally:
        os.close(fd)
    if position != last + 1:
        raise PeerFetchError(f"{url} bytes {first}-{last}: {position - first} arrived")
