"""Real network faults between the gateway and its neighbours: a network namespace of its own.

The gateway runs inside a namespace this module creates (`ip netns exec NS python -m
gateway.cli run`, which execs: the PID is the gateway's), joined to the root namespace by one
link per hop, each a private /30 inside that link only (root end .1, namespace end .2):

    hop "mqtt": the gateway -> Mosquitto (an extra listener on the root end's address)
    hop "rw":   the gateway -> VictoriaMetrics (listening on the root end's address)
    hop "api":  the test -> the gateway's HTTP API (a veth pair, never faulted: the test's eyes)

The faulted hops are a `Wire`: two TUN devices, one in each namespace, and a thread that moves
every IP packet between them and can drop or hold it. (`tc netem` would be the usual tool, but
this machine's kernel has neither the netem qdisc nor the gact/matchall tc modules; the wire does
the same at the same layer: both ends are the kernels' own TCP stacks, with their real
retransmissions, timeouts and keepalives.) A partition drops every packet both ways, "loss"
drops each packet with that probability (seeded), "delay" holds each packet that long per
direction (a round trip takes twice that), in order.

Traffic from the root namespace to the root ends' own addresses (the test reading
VictoriaMetrics, the fleet publishing to Mosquitto) stays on loopback and is never faulted.

Names carry the test process's PID and a counter, so parallel runs never collide; `close()`
stops the wires (TUN devices vanish with their file descriptors) and removes the namespace (the
veth pair goes with it), from a `finally`, also when the test fails. Only loopback and
namespaces made here are ever touched. In CI a missing capability (not root, no `ip`, no
/dev/net/tun) fails the test; elsewhere it skips, as tests/support/tools.py does for a missing tool.
"""

from __future__ import annotations

import fcntl
import heapq
import ipaddress
import itertools
import os
import random
import select
import shutil
import struct
import subprocess
import threading
import time
from dataclasses import dataclass

import pytest

HOPS = ("mqtt", "rw", "api")
FAULTED_HOPS = ("mqtt", "rw")
FAULTS = ("partition", "loss", "latency")
LOSS = 0.30  # the "30% loss", per packet and direction
LATENCY_S = 2.0  # the "2 s latency", per direction
# 10.213.0.0/16 cut into /28 blocks, one per namespace: three /30s, one per hop.
_NET = ipaddress.IPv4Network("10.213.0.0/16")
_BLOCKS = _NET.num_addresses // 16
_TUNSETIFF, _IFF_TUN, _IFF_NO_PI = 0x400454CA, 0x0001, 0x1000
_counter = itertools.count()


def capability_missing(message: str) -> None:
    """In CI a missing capability fails (a skip would hide it); elsewhere it skips."""
    if os.environ.get("CI") == "true":
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def require_root(what: str) -> None:
    if os.geteuid() != 0:
        capability_missing(f"{what} needs root (CAP_NET_ADMIN / CAP_SYS_ADMIN); run as root")


def tool(name: str, package: str = "iproute2") -> str:
    path = shutil.which(name) or f"/usr/sbin/{name}"
    if not os.access(path, os.X_OK):
        capability_missing(f"{name} missing: install Debian package {package}")
    return path


def _run(*args: str) -> None:
    done = subprocess.run(args, capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} -> {done.returncode}: {done.stderr.strip()}")


def _open_tun(name: str) -> int:
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
    try:
        fcntl.ioctl(fd, _TUNSETIFF, struct.pack("16sH", name.encode(), _IFF_TUN | _IFF_NO_PI))
    except OSError:
        os.close(fd)
        raise
    return fd


class Wire(threading.Thread):
    """Moves IP packets between two TUN devices, dropping or holding them as told."""

    def __init__(self, name: str, fd_a: int, fd_b: int, seed: int) -> None:
        super().__init__(name=f"wire-{name}", daemon=True)
        self._fds = (fd_a, fd_b)
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self.loss = 0.0
        self.delay_s = 0.0
        self.passed = self.dropped = 0
        self._held: list[tuple[float, int, int, bytes]] = []  # (due, serial, out fd, packet)
        self._serial = itertools.count()
        self._stop_r, self._stop_w = os.pipe()

    def set(self, loss: float = 0.0, delay_s: float = 0.0) -> None:
        with self._lock:
            self.loss, self.delay_s = loss, delay_s

    def run(self) -> None:
        a, b = self._fds
        poller = select.poll()
        for fd in (a, b, self._stop_r):
            poller.register(fd, select.POLLIN)
        while True:
            timeout = None
            if self._held:
                timeout = max(0, int((self._held[0][0] - time.monotonic()) * 1000) + 1)
            for fd, _ in poller.poll(timeout):
                if fd == self._stop_r:
                    return
                self._take(fd, b if fd == a else a)
            self._deliver_due()

    def _take(self, src: int, dst: int) -> None:
        while True:
            try:
                packet = os.read(src, 65536)
            except BlockingIOError:
                return
            with self._lock:
                loss, delay_s = self.loss, self.delay_s
            if loss and self._rng.random() < loss:
                self.dropped += 1
                continue
            heapq.heappush(self._held, (time.monotonic() + delay_s, next(self._serial), dst,
                                        packet))

    def _deliver_due(self) -> None:
        now = time.monotonic()
        while self._held and self._held[0][0] <= now:
            _, _, dst, packet = heapq.heappop(self._held)
            try:
                os.write(dst, packet)
                self.passed += 1
            except OSError:  # the device is going away, or its queue is full: a lost packet
                self.dropped += 1

    def close(self) -> None:
        os.write(self._stop_w, b"x")
        self.join(10)
        for fd in (*self._fds, self._stop_r, self._stop_w):
            os.close(fd)


@dataclass(frozen=True)
class Hop:
    name: str
    root_dev: str
    ns_dev: str
    root_addr: str  # the neighbour's side (Mosquitto, VictoriaMetrics, the test)
    ns_addr: str  # the gateway's side


class GatewayNetns:
    """A namespace for one gateway with its three hops; a context manager."""

    def __init__(self, seed: int = 0) -> None:
        require_root("a network namespace")
        self.ip = tool("ip")
        if not os.path.exists("/dev/net/tun"):
            capability_missing("/dev/net/tun missing (the tun kernel module)")
        self.seed = seed
        serial = next(_counter)
        self.name = f"fg{os.getpid()}n{serial}"
        self.hops: dict[str, Hop] = {}
        block = self._free_block((os.getpid() * 7 + serial) % _BLOCKS)
        for k, hop in enumerate(HOPS):
            net = ipaddress.IPv4Network((int(block) + 4 * k, 30))
            root, ns = (str(a) for a in list(net.hosts()))
            tag = f"{os.getpid() % 10**6}{serial}{hop[0]}"  # device names: 15 characters at most
            self.hops[hop] = Hop(hop, f"fg{tag}r", f"fg{tag}g", root, ns)
        self.wires: dict[str, Wire] = {}
        self.faults: dict[str, str] = {}
        self._created = False

    def _free_block(self, start: int) -> ipaddress.IPv4Address:
        """The first /28 from `start` that no interface on this host has an address in."""
        listing = subprocess.run([self.ip, "-4", "-o", "addr"], capture_output=True, text=True,
                                 check=True).stdout
        used = {ipaddress.IPv4Interface(word).ip for line in listing.splitlines()
                for word in line.split()[3:4]}
        for i in range(_BLOCKS):
            first = int(_NET.network_address) + 16 * ((start + i) % _BLOCKS)
            block = ipaddress.IPv4Network((first, 28))
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
            capability_missing(f"cannot create a network namespace: {exc}")
        self._created = True
        try:
            _run(self.ip, "-n", self.name, "link", "set", "lo", "up")
            api = self.hops["api"]
            _run(self.ip, "link", "add", api.root_dev, "type", "veth", "peer", "name",
                 api.ns_dev, "netns", self.name)
            for hop in FAULTED_HOPS:
                self._open_wire(self.hops[hop])
            for hop in self.hops.values():
                _run(self.ip, "addr", "add", hop.root_addr, "peer", f"{hop.ns_addr}/30",
                     "dev", hop.root_dev)
                _run(self.ip, "link", "set", hop.root_dev, "up")
                _run(self.ip, "-n", self.name, "addr", "add", hop.ns_addr, "peer",
                     f"{hop.root_addr}/30", "dev", hop.ns_dev)
                _run(self.ip, "-n", self.name, "link", "set", hop.ns_dev, "up")
        except BaseException:
            self.close()
            raise
        return self

    def _open_wire(self, hop: Hop) -> None:
        root_fd = _open_tun(hop.root_dev)
        try:
            ns_fd = _open_tun(hop.ns_dev)
        except OSError:
            os.close(root_fd)
            raise
        wire = Wire(hop.name, root_fd, ns_fd, seed=self.seed * 31 + len(self.wires))
        self.wires[hop.name] = wire
        wire.start()
        _run(self.ip, "link", "set", "dev", hop.ns_dev, "netns", self.name)

    # ------------------------------------------------------------------ faults
    def apply(self, hop: str, fault: str) -> None:
        """fault: "partition" (every packet dropped both ways), "loss" (30 % of packets each
        way) or "latency" (2 s each way)."""
        wire = self.wires[hop]
        if fault == "partition":
            wire.set(loss=1.0)
        elif fault == "loss":
            wire.set(loss=LOSS)
        elif fault == "latency":
            wire.set(delay_s=LATENCY_S)
        else:
            raise ValueError(f"unknown fault {fault!r}")
        self.faults[hop] = fault

    def heal(self, hop: str) -> None:
        self.wires[hop].set()
        self.faults.pop(hop, None)

    # ------------------------------------------------------------------ teardown
    def close(self) -> None:
        """Stop the wires (their TUN devices vanish) and remove the namespace (and veth)."""
        for wire in self.wires.values():
            wire.close()
        self.wires.clear()
        if not self._created:
            return
        subprocess.run([self.ip, "netns", "del", self.name], capture_output=True, timeout=30)
        for hop in self.hops.values():  # normally gone already; never leave one behind
            if os.path.exists(f"/sys/class/net/{hop.root_dev}"):
                subprocess.run([self.ip, "link", "del", hop.root_dev], capture_output=True,
                               timeout=30)
        self._created = False

    def __enter__(self) -> GatewayNetns:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()
