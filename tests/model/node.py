"""One gateway incarnation under the model: the real `Gateway.start()` wiring (restore from
SQLite, pipeline, forwarders, fleet) with the two network seams replaced and no background
task started; the machine runs each stage itself, one step at a time.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from pathlib import Path
from typing import Any
from unittest import mock

from gateway import app
from gateway.app import Gateway
from gateway.settings import Settings

from .seams import BrokerSide, Receiver


class Node(Gateway):
    """A Gateway whose API, MQTT client and background loops are not started."""

    async def _start_api(self) -> None:
        pass

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        coro.close()  # the machine drives the pipeline, forwarder and lifecycle itself


def settings(data_dir: Path, *, max_samples: int, cap: int, policy: str,
             external: dict[str, str]) -> Settings:
    return Settings(
        data_dir=data_dir, remote_write_url=[Receiver.endpoint],
        remote_write_max_samples=max_samples, remote_write_flush_ms=0,
        remote_write_retry_min_s=0.0001, remote_write_retry_max_s=0.0002,
        buffer_max_bytes=cap, buffer_full_policy=policy,  # type: ignore[arg-type]
        sqlite_synchronous="normal", sqlite_startup_check="off", max_frame_bytes=4096,
        fleet_metrics_interval_s=0, external_labels=external, commit_max_delay_ms=0,
        shutdown_forward_deadline_s=0)


async def start(config: Settings, broker: BrokerSide, receiver: Receiver) -> Node:
    node = Node(config)
    with mock.patch.object(app, "MqttIngest", lambda *a, **k: broker), \
            mock.patch.object(app, "HttpRemoteWriteClient", receiver):
        await node.start()
    return node


async def abandon(node: Node, tasks: list[asyncio.Task[Any]]) -> None:
    """A kill: nothing is flushed, drained or checkpointed; what SQLite committed stays."""
    for task in tasks:
        if not task.done():
            task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await node.db.close()
    node.lock.release()
