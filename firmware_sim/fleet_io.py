"""The fleet's sockets: one selector (epoll on Linux) for every device's paho client.

paho runs in its external-loop mode: it tells us which sockets to watch (and when one has
bytes to write), and we hand readiness back to it with `loop_read` / `loop_write`.
"""

from __future__ import annotations

import resource
import selectors
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from firmware_sim.fleet_link import DeviceLink


class SocketLoop:
    """Every client's socket in one selector; readiness is handed to paho."""

    def __init__(self) -> None:
        self.selector = selectors.DefaultSelector()

    def watch(self, sock: Any, link: DeviceLink) -> None:
        self.selector.register(sock, selectors.EVENT_READ, link)

    def unwatch(self, sock: Any) -> None:
        try:
            self.selector.unregister(sock)
        except (KeyError, ValueError):
            pass

    def want_write(self, sock: Any, link: DeviceLink, on: bool) -> None:
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if on else 0)
        try:
            self.selector.modify(sock, events, link)
        except (KeyError, ValueError):
            pass

    def poll(self, timeout_s: float) -> None:
        for key, mask in self.selector.select(timeout_s):
            client = key.data.client
            if mask & selectors.EVENT_READ:
                client.loop_read()
            if mask & selectors.EVENT_WRITE and client.socket() is not None:
                client.loop_write()

    def busy(self) -> bool:
        return bool(self.selector.get_map())

    def close(self) -> None:
        self.selector.close()


def raise_fd_limit(wanted: int) -> None:
    """One socket per device: lift the soft limit towards the hard one when the fleet needs it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
