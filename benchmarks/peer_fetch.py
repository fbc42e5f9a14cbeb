"""A stored model fetched from a peer worker on another host, against a plain copy of
the same files over the same link.

    sudo python benchmarks/peer_fetch.py [--source smollm2-135m] [--rounds 3]
                                         [--parallel 1 8]

The peer is a real ``sllm worker`` in a network namespace of its own (a host with its
own address and stack, on a bridge; needs root and iproute2) holding ``--source``
stored; this process is the other host. Interleaved in each round:

* plain copy: one TCP connection, the peer ``sendfile``s every file of the copy in
  turn, this side writes them out and syncs them; no HTTP, no checks (what ``nc`` or
  ``scp`` without its cipher would do);
* peer fetch: ``sllm.store.peer_fetch.fetch`` with ``--parallel`` ranged reads at
  once, every byte hashed against the index, committed as a stored copy.

Both read the peer's page cache and write to this machine's disk, starting with no
dirty pages (``sync`` before each). Printed: GB/s per
method, the median over rounds, and the fetch's ratio to the plain copy.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests.netns

from sllm.client.launcher import Child, spawn, wait_healthy
from sllm.edge.auth import store_token
from sllm.store import catalog
from sllm.store.integrity import read_index
from sllm.store.peer_fetch import fetch
from tests.netns import Host, Network

TOKEN = "bench-token"
COPY_PORT = 9100
SENDER = """
import socket, sys
files = sys.argv[2:]
server = socket.create_server(("0.0.0.0", int(sys.argv[1])))
while True:
    conn, _ = server.accept()
    with conn:
        try:
            for name in files:
                with open(name, "rb") as f:
                    conn.sendfile(f)
        except OSError:
            pass  # a probe that hung up
"""


def start_peer(host: Host, work: Path, stored: Path) -> tuple[Child, Child]:
    worker_argv = [
        sys.executable, "-m", "sllm", "worker", "--host", "0.0.0.0", "--port", "8001",
        "--head-url", "http://127.0.0.1:9", "--advertise-url", f"http://{host.address}:8001",
        "--log-dir", str(work / "logs"), "--storage-path", str(work / "models"),
    ]  # fmt: skip
    env = {"SLLM_CLUSTER_TOKEN": TOKEN, "SLLM_WARM_PROCESSES": "0", "SLLM_LOG_LEVEL": "warning"}
    worker = spawn("peer", host.run(worker_argv), work / "peer.log",
                   f"http://{host.address}:8001", env)  # fmt: skip
    wait_healthy(worker, 60)
    index = read_index(stored)
    files = [str(stored / e.file) for e in [*index.chunks, *index.files]]
    sender_argv = [sys.executable, "-c", SENDER, str(COPY_PORT), *files]
    sender = spawn("sender", host.run(sender_argv), work / "sender.log", "")
    return worker, sender


def plain_copy(host: Host, stored: Path, target: Path) -> float:
    """Seconds to receive every file of ``stored`` over one connection into ``target``."""
    index = read_index(stored)
    entries = [*index.chunks, *index.files]
    target.mkdir(parents=True)
    buffer = bytearray(1 << 20)
    view = memoryview(buffer)
    started = time.perf_counter()
    with socket.create_connection((host.address, COPY_PORT), timeout=30) as conn:
        for entry in entries:
            path = target / entry.file
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "wb") as out:
                left = entry.size
                while left:
                    n = conn.recv_into(view[: min(left, len(buffer))])
                    if not n:
                        raise RuntimeError("the sender stopped early")
                    out.write(view[:n])
                    left -= n
                out.flush()
                os.fsync(out.fileno())  # on disk, as a fetched copy is
    return time.perf_counter() - started


def connectable(host: Host, port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection((host.address, port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", default="smollm2-135m")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--parallel", type=int, nargs="+", default=[1, 8])
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        print(f"storing {args.source} on the peer (once)...", flush=True)
        stored, index = catalog.save(args.source, work / "models")
        gb = index.nbytes / 1e9
        network = Network()
        procs: list[Child] = []
        try:
            network.add("client", here=True)
            host = network.add("peer")
            procs = list(start_peer(host, work, stored))
            connectable(host, COPY_PORT)
            peer = f"http://{host.address}:8001"
            results: dict[str, list[float]] = {}
            for r in range(args.rounds):
                dest = work / f"round-{r}"
                os.sync()  # no method pays for the last one's writes
                seconds = plain_copy(host, stored, dest / "plain")
                results.setdefault("plain copy (1 TCP stream, no checks)", []).append(seconds)
                for n in args.parallel:
                    target = dest / "store" / f"fetched-{n}"
                    os.sync()
                    started = time.perf_counter()
                    fetch(peer, args.source, index.auto_class, target, token=store_token(TOKEN),
                          parallel=n)  # fmt: skip
                    label = f"peer fetch, {n} at once, verified"
                    results.setdefault(label, []).append(time.perf_counter() - started)
                shutil.rmtree(dest)
        finally:
            for proc in procs:
                proc.stop()
            network.close()
    plain = statistics.median(results["plain copy (1 TCP stream, no checks)"])
    print(f"\n{args.source}: {gb:.3f} GB stored; {args.rounds} rounds, interleaved")
    print("| method | median s | GB/s | vs plain copy |")
    print("| --- | --- | --- | --- |")
    for label, times in results.items():
        median = statistics.median(times)
        print(f"| {label} | {median:.3f} | {gb / median:.2f} | {plain / median:.2f}x |")


if __name__ == "__main__":
    main()
