"""What Mosquitto itself says it holds, from its $SYS topics (needs `sys_interval 1`)."""

from __future__ import annotations

import threading

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from devstack import Mosquitto

SYS_CONF = "sys_interval 1"  # Mosquitto's extra_conf: $SYS every second (default 10 s)
_STORED = "$SYS/broker/store/messages/count"
_RETAINED = "$SYS/broker/retained messages/count"


class BrokerStats:
    """Messages the broker stores for sessions (its message store minus retained messages):
    with the fleet's publisher not subscribed, these are the gateway's unacknowledged and
    queued messages."""

    def __init__(self, broker: Mosquitto) -> None:
        self._values: dict[str, int] = {}
        self._updated = threading.Condition()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="sys-watcher")
        self.client.on_message = self._on_message
        self.client.on_connect = lambda c, u, fl, rc, p: c.subscribe([(_STORED, 0),
                                                                      (_RETAINED, 0)])
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()

    def _on_message(self, client: mqtt.Client, userdata: object,
                    msg: mqtt.MQTTMessage) -> None:
        with self._updated:
            self._values[msg.topic] = int(msg.payload)
            self._updated.notify_all()

    def queued(self) -> int | None:
        """Messages held for sessions as of the broker's latest $SYS update (None: none yet)."""
        with self._updated:
            if _STORED not in self._values or _RETAINED not in self._values:
                return None
            return self._values[_STORED] - self._values[_RETAINED]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
