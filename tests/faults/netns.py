"""Real network faults between the gateway and its neighbours: a network namespace of its own.

The gateway runs inside a namespace this module creates (`ip netns exec NS python -m
gateway.cli run`), joined to the root namespace by three veth pairs, one per hop, each with a
private /30 inside that pair only (root end .1, namespace end .2):

    hop "mqtt": the gateway -> Mosquitto (an extra listener on the root end's address)
    hop "rw":   the gateway -> VictoriaMetrics (listening on the root end's address)
    hop "api":  the test -> the gateway's HTTP API (never faulted: the test's eyes)

A fault is `tc netem` on BOTH ends of one hop's pair (netem shapes egress only, so one end would
fault one direction): a partition is 100 % loss each way, "loss" and "delay" are per direction.
Traffic from the root namespace to the root ends' own addresses (the test reading
VictoriaMetrics, the fleet publishing to Mosquitto) stays on loopback and is never faulted.

Names carry the test process's PID and a counter, so parallel runs never collide; `close()`
removes the namespace (which removes the veth pairs and their qdiscs) and is called from a
`finally`, also when the test fails. Only loopback and namespaces made here are ever touched.
"""

from __future__ import annotations

import ipaddress
import itertools
import os
import shutil
import subprocess
from dataclasses import dataclass

import pytest

HOPS = ("mqtt", "rw", "api")
FAULTED_HOPS = ("mqtt", "rw")
# 10.213.0.0/16 cut into /28 blocks, one per namespace: three /30s, one per hop.
_NET = ipaddress.IPv4Network("10.213.0.0/16")
_BLOCKS = _NET.num_addresses // 16
_counter = itertools.count()


def _capability_missing(message: str) -> None:
    """In CI a missing capability fails (a skip would hide it); elsewhere it skips, as
    tests/tools.py does for a missing tool."""
    if os.environ.get("CI") == "true":
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def require_root(what: str) -> None:
    if os.geteuid() != 0:
        _capability_missing(f"{what} needs root (CAP_NET_ADMIN / CAP_SYS_ADMIN); run as root")


def tool(name: str) -> str:
    path = shutil.which(name) or f"/usr/sbin/{name}"
    if not os.access(path, os.X_OK):
        _capability_missing(f"{name} missing: install Debian package iproute2")
    return path


def _run(*args: str) -> None:
    done = subprocess.run(args, capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} -> {done.returncode}: {done.stderr.strip()}")


@dataclass(frozen=True)
class Hop:
    name: str
    root_dev: str
    ns_dev: str
    root_addr: str  # the neighbour's side (Mosquitto, VictoriaMetrics, the test)
    ns_addr: str  # the gateway's side


class GatewayNetns:
    """A namespace for one gateway, with one veth pair per hop; a context manager."""

    def __init__(self) -> None:
        require_root("a network namespace")
        self.ip, self.tc = tool("ip"), tool("tc")
        serial = next(_counter)
        self.name = f"fg{os.getpid()}n{serial}"
        self.hops: dict[str, Hop] = {}
        block = self._free_block((os.getpid() * 7 + serial) % _BLOCKS)
        for k, hop in enumerate(HOPS):
            net = ipaddress.IPv4Network((int(block) + 4 * k, 30))
            root, ns = (str(a) for a in list(net.hosts()))
            tag = f"{os.getpid() % 10**6}{serial}{hop[0]}"  # veth names: 15 characters at most
            self.hops[hop] = Hop(hop, f"fg{tag}r", f"fg{tag}g", root, ns)
        self.faults: dict[str, str] = {}
        self._created = False

    def _free_block(self, start: int) -> ipaddress.IPv4Address:
        """The first /28 from `start` that no interface on this host has an address in."""
        listing = subprocess.run([self.ip, "-4", "-o", "addr"], capture_output=True, text=True,
                                 check=True).stdout
        used = {ipaddress.IPv4Interface(word).ip for line in listing.splitlines()
                for word in line.split()[3:4]}
        for i in range(_BLOCKS):
            block = ipaddress.IPv4Network((int(_NET.network_address) + 16 * ((start + i)
                                                                             % _BLOCKS), 28))
            if not any(a in block for a in used):
                return block.network_address
        raise RuntimeError(f"no free /28 left in {_NET}")

    @property
    def exec_prefix(self) -> tuple[str, ...]:
        """Prefix of a command run inside the namespace (`ip netns exec` execs it: same PID)."""
        return (self.ip, "netns", "exec", self.name)

    def open(self) -> GatewayNetns:
        try:
            _run(self.ip, "netns", "add", self.name)
        except RuntimeError as exc:
            _capability_missing(f"cannot create a network namespace: {exc}")
        self._created = True
        try:
            _run(self.ip, "-n", self.name, "link", "set", "lo", "up")
            for hop in self.hops.values():
                _run(self.ip, "link", "add", hop.root_dev, "type", "veth",
                     "peer", "name", hop.ns_dev, "netns", self.name)
                _run(self.ip, "addr", "add", f"{hop.root_addr}/30", "dev", hop.root_dev)
                _run(self.ip, "link", "set", hop.root_dev, "up")
                _run(self.ip, "-n", self.name, "addr", "add", f"{hop.ns_addr}/30",
                     "dev", hop.ns_dev)
                _run(self.ip, "-n", self.name, "link", "set", hop.ns_dev, "up")
        except BaseException:
            self.close()
            raise
        return self

    # ------------------------------------------------------------------ faults
    def _netem(self, hop: str, *spec: str) -> None:
        h = self.hops[hop]
        # limit: packets netem holds (the default 1,000 would add its own drops under delay)
        _run(self.tc, "qdisc", "replace", "dev", h.root_dev, "root", "netem", "limit",
             "100000", *spec)
        _run(self.tc, "-n", self.name, "qdisc", "replace", "dev", h.ns_dev, "root", "netem",
             "limit", "100000", *spec)
        self.faults[hop] = " ".join(spec)

    def partition(self, hop: str) -> None:
        """Every packet lost both ways: connections stall silently, as behind a dead switch."""
        self._netem(hop, "loss", "100%")

    def loss(self, hop: str, percent: int) -> None:
        self._netem(hop, "loss", f"{percent}%")

    def delay(self, hop: str, ms: int) -> None:
        """`ms` each way (a round trip takes twice that)."""
        self._netem(hop, "delay", f"{ms}ms")

    def heal(self, hop: str) -> None:
        h = self.hops[hop]
        if self.faults.pop(hop, None) is None:
            return
        _run(self.tc, "qdisc", "del", "dev", h.root_dev, "root")
        _run(self.tc, "-n", self.name, "qdisc", "del", "dev", h.ns_dev, "root")

    def apply(self, hop: str, fault: str) -> None:
        """fault: "partition", "loss" (30 %) or "latency" (2 s each way)."""
        if fault == "partition":
            self.partition(hop)
        elif fault == "loss":
            self.loss(hop, 30)
        elif fault == "latency":
            self.delay(hop, 2000)
        else:
            raise ValueError(f"unknown fault {fault!r}")

    # ------------------------------------------------------------------ teardown
    def close(self) -> None:
        """Remove the namespace: its veth ends go with it, and their root peers with them."""
        if not self._created:
            return
        for hop in list(self.faults):
            try:
                self.heal(hop)
            except RuntimeError:
                pass
        subprocess.run([self.ip, "netns", "del", self.name], capture_output=True, timeout=30)
        for hop in self.hops.values():  # normally gone with their peers; never leave one
            subprocess.run([self.ip, "link", "del", hop.root_dev], capture_output=True,
                           timeout=30)
        self._created = False

    def __enter__(self) -> GatewayNetns:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()
