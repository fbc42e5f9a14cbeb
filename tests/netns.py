"""Hosts of their own for tests: network namespaces on one bridge, each with its own
address and network stack, and partitions between them.

The bridge lives in a namespace of its own; this process's namespace joins it as one
more host (the client's), so tests talk to every host directly. Needs root and
iproute2; a test that cannot have them is skipped, saying why.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from dataclasses import dataclass, field

import pytest

SUBNET = "10.213.{net}.{host}"
# A locally administered MAC that no host on the bridge has.
NOWHERE = "02:00:5e:00:00:01"


def ip(*args: str, namespace: str | None = None) -> None:
    argv = ["ip", *(["-n", namespace] if namespace else []), *args]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {done.stderr.strip()}")


def skip_unless_possible() -> None:
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("network namespaces need root and iproute2")


@dataclass
class Host:
    name: str
    namespace: str | None  # None: this process's own namespace (the client)
    address: str
    device: str  # its end of the veth pair to the bridge

    def run(self, argv: list[str]) -> list[str]:
        """``argv`` as run on this host."""
        return ["ip", "netns", "exec", self.namespace, *argv] if self.namespace else argv


@dataclass
class Network:
    """Hosts on one bridge; ``cut`` and ``heal`` partition pairs of them."""

    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:5])
    net: int = field(default_factory=lambda: 100 + int(uuid.uuid4().hex[:2], 16) % 100)
    hosts: dict[str, Host] = field(default_factory=dict)
    _cut: set[tuple[str, str]] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.switch = f"sl{self.tag}sw"
        ip("netns", "add", self.switch)
        ip("link", "add", "br0", "type", "bridge", namespace=self.switch)
        ip("link", "set", "br0", "up", namespace=self.switch)

    def add(self, name: str, *, here: bool = False) -> Host:
        """A new host on the bridge; ``here``: this process's namespace is that host."""
        index = len(self.hosts) + 1
        namespace = None if here else f"sl{self.tag}{index}"
        outer, inner = f"sl{self.tag}o{index}", f"sl{self.tag}i{index}"
        address = SUBNET.format(net=self.net, host=index)
        ip("link", "add", outer, "type", "veth", "peer", "name", inner)
        ip("link", "set", outer, "netns", self.switch)
        ip("link", "set", outer, "master", "br0", namespace=self.switch)
        ip("link", "set", outer, "up", namespace=self.switch)
        if namespace:
            ip("netns", "add", namespace)
            ip("link", "set", inner, "netns", namespace)
            ip("link", "set", "lo", "up", namespace=namespace)
        ip("addr", "add", f"{address}/24", "dev", inner, namespace=namespace)
        ip("link", "set", inner, "up", namespace=namespace)
        host = Host(name, namespace, address, inner)
        self.hosts[name] = host
        return host

    def cut(self, a: str, b: str) -> None:
        """Packets between hosts ``a`` and ``b`` vanish, both ways, as on a network that
        partitions: nobody is told. Each sends to the other's address at a MAC no host
        has (the kernel has no netem or tc filters here; a blackhole route would fail
        the sender at once instead)."""
        for one, other in ((a, b), (b, a)):
            src, dst = self.hosts[one], self.hosts[other]
            ip("neigh", "replace", dst.address, "lladdr", NOWHERE, "dev", src.device,
               "nud", "permanent", namespace=src.namespace)  # fmt: skip
        self._cut.add((a, b))

    def heal(self, a: str | None = None, b: str | None = None) -> None:
        """Undo ``cut(a, b)``; every cut when no pair is named."""
        pairs = [(a, b)] if a and b else sorted(self._cut)
        for pair in pairs:
            for one, other in (pair, pair[::-1]):
                src, dst = self.hosts[one], self.hosts[other]
                ip("neigh", "del", dst.address, "dev", src.device, namespace=src.namespace)
            self._cut.discard(pair)

    def close(self) -> None:
        for host in self.hosts.values():
            if host.namespace:
                subprocess.run(["ip", "netns", "del", host.namespace], timeout=10, check=False)
            else:  # the client's end (deleting one end of a veth deletes both; its
                # neighbour entries go with it)
                subprocess.run(["ip", "link", "del", host.device],
                               timeout=10, check=False, capture_output=True)  # fmt: skip
        subprocess.run(["ip", "netns", "del", self.switch], timeout=10, check=False)
