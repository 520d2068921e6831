"""devstack: real Mosquitto / Prometheus / VictoriaMetrics / gateway processes from a checkout.

Dev-only: used by `make demo` (`python -m devstack demo`), the tests and the benchmarks; not part
of the wheel or the image. Each service runs from the Debian package's binary (or, for the
gateway, this checkout's Python) in its own work dir on a port of its own, so any number of them
can run side by side. Import what you need from here (`from devstack import Mosquitto`).

Modules, one job each:
  ports             loopback, free ports, "does it accept connections"
  waiting           wait_for: poll a condition under a deadline
  process           ManagedProcess: start in its own session, wait until ready, stop by PID
  checkout          the shipped configs and rules this stack reads from the source tree
  http_service      HttpService: a ManagedProcess with an HTTP API
  mosquitto         Mosquitto from deploy/mosquitto/mosquitto.conf
  prometheus        Prometheus from deploy/prometheus/prometheus.yml
  secure_mosquitto  SecureMosquitto from deploy/mosquitto/secure/ (TLS, identities, ACL)
  victoria_metrics  VictoriaMetrics single-node
  vmauth            vmauth, a bearer-token gate in front of a receiver
  gateway_process   the gateway (`python -m gateway.cli run`), configured by FLEETGATE_* only
  demo              the demo stack (`python -m devstack demo`)
"""

from devstack.checkout import shipped_rule_files
from devstack.gateway_process import GatewayProcess
from devstack.http_service import HttpService
from devstack.mosquitto import Mosquitto
from devstack.ports import LOOPBACK, free_port
from devstack.process import ManagedProcess, ServiceFailed, ServiceNotInstalled
from devstack.prometheus import Prometheus, WebConfig
from devstack.secure_mosquitto import SecureMosquitto
from devstack.victoria_metrics import VictoriaMetrics
from devstack.vmauth import VmAuth
from devstack.waiting import wait_for

__all__ = [
    "LOOPBACK",
    "GatewayProcess",
    "HttpService",
    "ManagedProcess",
    "Mosquitto",
    "Prometheus",
    "SecureMosquitto",
    "ServiceFailed",
    "ServiceNotInstalled",
    "VictoriaMetrics",
    "VmAuth",
    "WebConfig",
    "free_port",
    "shipped_rule_files",
    "wait_for",
]
