"""The operator API served in-process (httpx.ASGITransport) against a fake GatewayPort.

No broker, no SQLite file, no gateway process: the routes see a real FleetState and dedup
ledger fed with decoded frames, and a fake for everything else, so the device list and detail,
the fleet summary, auth, readiness and the two commands are checked in milliseconds. Then the
real port, gateway.gateway_port.GatewayView, over a gateway's parts (SQLite in memory, fake
forwarders): its queries, forgetting and the dead-letter replay's settling. The same routes
against a real gateway: tests/e2e/test_fleet_status.py and tests/e2e/test_api_schema.py.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Coroutine, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, TypeVar, cast

import httpx
import pytest

from device_protocol import Birth, MetricDef, MetricType, RawSample
from gateway.api.factory import create_api
from gateway.api.port import EndpointStatus, FleetSliceInfo, PipelineStatus, ReplayOutcome
from gateway.errors import ForwardUnavailable
from gateway.fleet.events import EventHub, Subscription
from gateway.fleet.state import FleetState
from gateway.forward.policy import ForwarderStatus
from gateway.gateway_port import GatewayView, RunningGateway
from gateway.pipeline.dedup import Ledger
from gateway.pipeline.series_budget import SeriesBudget
from gateway.seq_ranges import SeqRanges
from gateway.settings import Settings
from tests.support.factories import decoded_frame, fixed_birth
from tests.support.fakes import MemoryStore

T = TypeVar("T")
T0 = 1_790_000_000_000
ADMIN, READ = "admin-token", "read-token"
ENDPOINT = "http://prometheus/api/v1/write"
METRICS = (MetricDef(0, "temperature_celsius", MetricType.GAUGE),)


def birth(boot: int, platform: str = "esp32-s3", site: str = "lab") -> Birth:
    return fixed_birth(boot, T0, METRICS, interval_ms=10_000, platform=platform,
                       labels=(("site", site),))


@dataclass
class FakePort:
    """A GatewayPort over a real FleetState and Ledger; records the commands it is given."""

    api_tokens: Mapping[str, str] = field(default_factory=lambda: {ADMIN: "admin",
                                                                   READ: "read"})
    endpoint_names: tuple[str, ...] = (ENDPOINT,)
    fleet: FleetState = field(default_factory=FleetState)
    ledger: Ledger = field(default_factory=Ledger)
    series_budget: SeriesBudget = field(default_factory=lambda: SeriesBudget(100))
    mqtt_connected: bool = True
    last_commit_ok: bool = True
    writable: Exception | None = None  # what probe_write raises, if anything
    events: list[dict[str, Any]] = field(default_factory=list)  # stored, oldest first
    forgotten: list[str] = field(default_factory=list)
    replays: list[tuple[str | None, int]] = field(default_factory=list)
    replay_outcome: ReplayOutcome | ForwardUnavailable = field(
        default_factory=lambda: ReplayOutcome(3, 1, 1))
    hub: EventHub = field(default_factory=EventHub)
    streamed: list[dict[str, Any]] = field(default_factory=list)  # then the stream ends
    fleet_slice: FleetSliceInfo = field(default_factory=lambda: FleetSliceInfo(
        "gw-a", "siteA", ("siteA/+/birth", "siteA/+/telemetry", "siteA/+/death"),
        "mqtt://broker:1883", "fleetgate-gw-a"))

    def clock_ahead_ms(self, device_id: str, boot: int) -> int:
        return 250

    def subscribe_events(self, device_id: str | None) -> Subscription:
        subscription = self.hub.subscribe(device_id)
        self.hub.publish(self.streamed)
        self.hub.close()
        return subscription

    def unsubscribe_events(self, subscription: Subscription) -> None:
        self.hub.unsubscribe(subscription)

    def render_metrics(self) -> bytes:
        return b"fleetgate_up 1\n"

    async def probe_write(self) -> None:
        if self.writable is not None:
            raise self.writable

    def pipeline_status(self) -> PipelineStatus:
        endpoint = EndpointStatus(
            endpoint=ENDPOINT, cursor=7, cursor_offset=0, paused=None, retrying=True,
            max_samples_per_request=2000, oldest_unsent_age_s=1.5,
            send_rate_samples_per_s=12.345, sent_samples=90, retries=2, dead_letters=1,
            last_error="HTTP 503", last_success_ms=T0, live_lane=(5, 6))
        return PipelineStatus(
            mqtt_connected=self.mqtt_connected, started_ms=T0, committed_upto=10,
            buffer_frames=3, buffer_bytes=300, held_frames=0, buffer_max_bytes=1 << 30,
            buffer_full_policy="block", dedup_keys=len(self.ledger), endpoints=(endpoint,),
            last_recovery=None)

    async def device_events(self, device_id: str, limit: int,
                            before_id: int | None = None) -> list[dict[str, Any]]:
        rows = [e for e in reversed(self.events) if e["device_id"] == device_id
                and (before_id is None or e["id"] < before_id)]
        return rows[:limit]

    async def quarantine_rows(self, limit: int) -> list[dict[str, object]]:
        return [{"id": 1, "reason": "not msgpack"}][:limit]

    async def dead_letter_rows(self, limit: int) -> list[dict[str, object]]:
        return []

    async def forget_device(self, device_id: str) -> None:
        self.forgotten.append(device_id)
        self.fleet.forget(device_id)

    async def replay_dead_letters(self, endpoint: str | None, limit: int) -> ReplayOutcome:
        self.replays.append((endpoint, limit))
        if isinstance(self.replay_outcome, ForwardUnavailable):
            raise self.replay_outcome
        return self.replay_outcome


def send(port: FakePort, device_id: str, boot: int, seqs: range, value: float = 21.5) -> None:
    """Frames as the pipeline applies them: the fleet observes, the ledger records the seq."""
    ranges = port.ledger.get((device_id, boot)) or SeqRanges()
    for seq in seqs:
        raw = decoded_frame(boot, seq, T0 + seq * 1000, [RawSample(0, value, 0, ())])
        port.fleet.observe_telemetry(device_id, raw, T0 + seq * 1000)
        ranges.add(seq)
    port.ledger.load((device_id, boot), ranges)
    if ranges.missing():
        port.fleet.observe_gaps(device_id)


@pytest.fixture
def port() -> FakePort:
    port = FakePort()
    port.fleet.observe_birth("dev-a", birth(1), T0)
    send(port, "dev-a", 1, range(10))
    port.fleet.observe_birth("dev-b", birth(4, platform="rp2040", site="roof"), T0)
    send(port, "dev-b", 4, range(0, 3))
    send(port, "dev-b", 4, range(4, 5))  # seq 3 missing: 4 of 5, 80 %
    port.fleet.observe_birth("dev-c", birth(2), T0)  # a birth, no telemetry yet
    port.series_budget.count_refused("dev-b", 17)
    port.events = [{"id": i, "device_id": "dev-a", "ts_ms": T0 + i, "kind": "state",
                    "state": "online", "previous": None, "reason": "birth", "boot": 1}
                   for i in range(1, 4)]
    return port


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


async def call(port: FakePort, method: str, url: str, token: str | None = READ,
               **kwargs: Any) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    transport = httpx.ASGITransport(app=create_api(port))
    async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
        return await client.request(method, url, headers=headers, **kwargs)


def get(port: FakePort, url: str, token: str | None = READ, **kwargs: Any) -> httpx.Response:
    return run(call(port, "GET", url, token, **kwargs))


# ---------------------------------------------------------------------------------- fleet
def test_the_device_list_pages_the_fleet_with_filters_and_whole_fleet_counts(
        port: FakePort) -> None:
    body = get(port, "/api/v1/devices", params={"limit": 2}).json()
    assert body["total"] == 3
    assert body["counts"] == {"online": 3, "late": 0, "offline": 0}
    assert [d["device_id"] for d in body["devices"]] == ["dev-a", "dev-b"]
    rest = get(port, "/api/v1/devices", params={"limit": 2, "cursor": body["next_cursor"]})
    assert [d["device_id"] for d in rest.json()["devices"]] == ["dev-c"]
    assert rest.json()["next_cursor"] is None

    by_label = get(port, "/api/v1/devices", params={"label": "site=roof"}).json()
    assert [d["device_id"] for d in by_label["devices"]] == ["dev-b"]
    worst_first = get(port, "/api/v1/devices", params={"sort": "completeness"}).json()
    assert [(d["device_id"], d["completeness_pct"]) for d in worst_first["devices"]] == [
        ("dev-b", 80.0), ("dev-a", 100.0), ("dev-c", None)]


def test_bad_list_parameters_are_refused_with_the_one_error_shape(port: FakePort) -> None:
    bad_cursor = get(port, "/api/v1/devices", params={"cursor": "not-ours"})
    assert bad_cursor.status_code == 422
    assert bad_cursor.json() == {"error": "invalid_request",
                                 "detail": "cursor is not one this API gave out"}
    bad_state = get(port, "/api/v1/devices", params={"state": "asleep"})
    assert bad_state.status_code == 422
    assert bad_state.json()["error"] == "invalid_request"


def test_a_device_detail_has_completeness_budget_clock_and_events(port: FakePort) -> None:
    detail = get(port, "/api/v1/devices/dev-b").json()
    assert (detail["device_id"], detail["platform"], detail["boot"]) == ("dev-b", "rp2040", 4)
    assert detail["labels"] == {"site": "roof"}
    assert detail["clock_ahead_ms"] == 250
    assert detail["latest"] == {"temperature_celsius": {"value": 21.5,
                                                        "timestamp_ms": T0 + 4000}}
    assert detail["completeness"] == {
        "received": 4, "duplicates": 0, "missing": 1, "quarantined": 0,
        "completeness_pct": 80.0,
        "boots": [{"boot": 4, "received": 4, "duplicates": 0, "missing": 1,
                   "completeness_pct": 80.0, "first_seq": 0, "last_seq": 4,
                   "gaps": [[3, 4]]}]}
    assert detail["series_budget"] == {"limit": 100, "series": 0, "refused_samples": 17}
    assert detail["events"] == []

    events = get(port, "/api/v1/devices/dev-a").json()["events"]
    assert [e["id"] for e in events] == [3, 2, 1]  # newest first


def test_events_page_backwards_and_an_unknown_device_is_404(port: FakePort) -> None:
    page = get(port, "/api/v1/devices/dev-a/events", params={"limit": 2}).json()
    assert [e["id"] for e in page["events"]] == [3, 2]
    assert page["next_before_id"] == 2
    older = get(port, "/api/v1/devices/dev-a/events",
                params={"limit": 2, "before_id": page["next_before_id"]}).json()
    assert ([e["id"] for e in older["events"]], older["next_before_id"]) == ([1], None)

    missing = get(port, "/api/v1/devices/nope")
    assert missing.status_code == 404
    assert missing.json() == {"error": "not_found", "detail": "unknown device 'nope'"}


def test_the_fleet_summary_buckets_completeness_and_ranks_the_worst(port: FakePort) -> None:
    summary = get(port, "/api/v1/fleet/summary").json()
    assert summary["slice"] == {
        "gateway_id": "gw-a", "topic_prefix": "siteA",
        "subscriptions": ["siteA/+/birth", "siteA/+/telemetry", "siteA/+/death"],
        "broker": "mqtt://broker:1883", "mqtt_client_id": "fleetgate-gw-a"}
    assert summary["total"] == 3
    assert summary["by_state"] == {"online": 3, "late": 0, "offline": 0}
    assert summary["by_platform"] == {"esp32-s3": 2, "rp2040": 1}
    assert summary["completeness"] == {"100": 1, "99-100": 0, "95-99": 0, "90-95": 0,
                                       "<90": 1}
    assert summary["worst"] == [{"device_id": "dev-b", "state": "online",
                                 "completeness_pct": 80.0, "missing": 1}]
    assert summary["over_series_budget"] == [{"device_id": "dev-b", "series": 0,
                                              "refused_samples": 17}]


# ---------------------------------------------------------------------------------- auth
def test_a_read_route_needs_a_known_token(port: FakePort) -> None:
    none = get(port, "/api/v1/devices", token=None)
    assert none.status_code == 401
    assert none.headers["WWW-Authenticate"] == "Bearer"
    assert none.json() == {"error": "unauthorized", "detail": "a bearer token is required "
                                                              "(Authorization: Bearer <token>)"}
    wrong = get(port, "/api/v1/devices", token="guess")
    assert (wrong.status_code, wrong.json()) == (
        401, {"error": "unauthorized", "detail": "unknown token"})
    assert get(port, "/api/v1/devices", token=ADMIN).status_code == 200  # admin may read


def test_a_read_token_on_an_admin_route_is_forbidden_and_nothing_happens(
        port: FakePort) -> None:
    forbidden = run(call(port, "DELETE", "/api/v1/devices/dev-a", token=READ))
    assert (forbidden.status_code, forbidden.json()) == (
        403, {"error": "forbidden", "detail": "this route needs a token with the admin scope"})
    replay = run(call(port, "POST", "/api/v1/dead-letters/replay", token=READ))
    assert replay.status_code == 403
    assert (port.forgotten, port.replays) == ([], [])


def test_without_tokens_the_api_is_open(port: FakePort) -> None:
    port.api_tokens = {}
    assert get(port, "/api/v1/fleet/summary", token=None).status_code == 200


def test_the_event_stream_takes_its_token_in_the_query_and_streams_events(
        port: FakePort) -> None:
    event = {"id": 9, "device_id": "dev-a", "ts_ms": T0, "kind": "reboot", "boot": 2,
             "previous_boot": 1}
    port.streamed = [event]
    refused = get(port, "/api/v1/events/stream", token=None)
    assert (refused.status_code, refused.json()["error"]) == (401, "unauthorized")
    stream = get(port, "/api/v1/events/stream", token=None, params={"access_token": READ})
    assert stream.status_code == 200
    assert stream.headers["content-type"].startswith("text/event-stream")
    assert stream.text == (": connected\n\n"
                           f"event: device\nid: 9\ndata: {json.dumps(event)}\n\n")
    assert len(port.hub) == 0  # the stream's subscription ended with it


# ---------------------------------------------------------------------------------- commands
def test_forget_reaches_the_port_and_the_device_is_gone(port: FakePort) -> None:
    answer = run(call(port, "DELETE", "/api/v1/devices/dev-a", token=ADMIN))
    assert (answer.status_code, answer.content) == (204, b"")
    assert port.forgotten == ["dev-a"]
    assert get(port, "/api/v1/devices/dev-a").status_code == 404
    unknown = run(call(port, "DELETE", "/api/v1/devices/nope", token=ADMIN))
    assert unknown.status_code == 404
    assert port.forgotten == ["dev-a"]


def test_replay_reaches_the_port_with_its_endpoint_and_limit(port: FakePort) -> None:
    default = run(call(port, "POST", "/api/v1/dead-letters/replay", token=ADMIN))
    assert default.json() == {"replayed": 3, "refused": 1, "remaining": 1}
    one = run(call(port, "POST", "/api/v1/dead-letters/replay", token=ADMIN,
                   json={"endpoint": ENDPOINT, "limit": 5}))
    assert one.status_code == 200
    assert port.replays == [(None, 1000), (ENDPOINT, 5)]

    unknown = run(call(port, "POST", "/api/v1/dead-letters/replay", token=ADMIN,
                       json={"endpoint": "http://elsewhere/write"}))
    assert unknown.status_code == 422
    assert unknown.json()["detail"] == "no endpoint 'http://elsewhere/write' configured"
    assert len(port.replays) == 2  # refused before the port was asked

    port.replay_outcome = unreachable = ForwardUnavailable(ENDPOINT, "connection refused")
    down = run(call(port, "POST", "/api/v1/dead-letters/replay", token=ADMIN))
    assert (down.status_code, down.json()) == (
        503, {"error": "unavailable", "detail": str(unreachable)})
    assert "cannot be reached: connection refused" in down.json()["detail"]


# ---------------------------------------------------------------------------------- health
def test_ready_when_connected_writable_and_committing(port: FakePort) -> None:
    ready = get(port, "/readyz", token=None)
    assert (ready.status_code, ready.json()) == (200, {"ready": True, "problems": []})


def test_readiness_shows_every_problem(port: FakePort) -> None:
    port.mqtt_connected = False
    port.last_commit_ok = False
    port.writable = OSError("disk I/O error")
    answer = get(port, "/readyz", token=None)
    assert answer.status_code == 503
    assert answer.json() == {"ready": False, "problems": [
        "not connected to the MQTT broker", "database not writable: disk I/O error",
        "last group commit failed (retrying)"]}


def test_open_routes_need_no_token(port: FakePort) -> None:
    assert get(port, "/healthz", token=None).json() == {"status": "ok"}
    metrics = get(port, "/metrics", token=None)
    assert metrics.text == "fleetgate_up 1\n"
    assert metrics.headers["content-type"].startswith("text/plain")


def test_the_pipeline_status_shows_each_endpoint(port: FakePort) -> None:
    status = get(port, "/api/v1/pipeline").json()
    assert status["committed_upto"] == 10
    assert status["buffer"] == {"frames": 3, "bytes": 300, "held_frames": 0,
                                "max_bytes": 1 << 30, "full_policy": "block"}
    assert status["dedup"] == {"keys": 2}
    [endpoint] = status["endpoints"]
    assert endpoint["state"] == "retrying"
    assert endpoint["behind_frames"] == 3
    assert endpoint["send_rate_samples_per_s"] == 12.3
    assert endpoint["live_lane"] == [5, 6]
    assert get(port, "/api/v1/quarantine", params={"limit": 1}).json() == [
        {"id": 1, "reason": "not msgpack"}]


def test_unknown_routes_and_methods_keep_the_error_shape(port: FakePort) -> None:
    assert get(port, "/api/v1/nothing").json()["error"] == "not_found"
    wrong_method = run(call(port, "PUT", "/api/v1/devices/dev-a"))
    assert (wrong_method.status_code, wrong_method.json()["error"]) == (
        405, "method_not_allowed")


# ---------------------------------------------------------------------------------- GatewayView
# The real port over the parts of a gateway: a real fleet, ledger and budget, the buffer's
# database in memory (tests/support/fakes.MemoryStore, the real migrations), fake forwarders.
class FakeForwarder:
    """Takes every dead letter but those of `refuse` (refused again with a 400) or, if
    `unreachable`, raises ForwardUnavailable like a forwarder whose endpoint is down."""

    def __init__(self, endpoint: str, refuse: frozenset[int] = frozenset(),
                 unreachable: bool = False) -> None:
        self.endpoint, self.cursor, self.retrying = endpoint, 7, False
        self.status = ForwarderStatus(cursor=7, sent_samples=90, paused="HTTP 401",
                                      max_samples_per_request=500)
        self.refuse, self.unreachable = refuse, unreachable

    async def replay(self, letters: list[tuple[int, bytes]]
                     ) -> tuple[list[int], list[tuple[int, str, int]]]:
        if self.unreachable:
            raise ForwardUnavailable(self.endpoint, "connection refused")
        return ([i for i, _ in letters if i not in self.refuse],
                [(400, "out of order", i) for i, _ in letters if i in self.refuse])


class MemoryDatabase(MemoryStore):
    last_recovery: dict[str, Any] | None = None


@dataclass
class GatewayParts:
    """What GatewayView reads of a running Gateway (gateway_port.RunningGateway)."""

    port: FakePort  # its fleet, ledger and budget, as fed by the fixture
    db: MemoryDatabase = field(default_factory=MemoryDatabase)
    forwarders: list[FakeForwarder] = field(default_factory=list)
    forgotten_series: list[str] = field(default_factory=list)
    started_ms: int = T0

    def __post_init__(self) -> None:
        self.settings = SimpleNamespace(api_tokens={ADMIN: "admin", READ: "read"},
                                        buffer_max_bytes=1 << 20,
                                        buffer_full_policy="drop_oldest")
        self.fleet, self.series_budget = self.port.fleet, self.port.series_budget
        self.pipeline = SimpleNamespace(ledger=self.port.ledger, held={("dev-a", 1): [b"f"]},
                                        last_commit_ok=True)
        self.buffer = SimpleNamespace(committed_upto=10, frames=3, bytes=300)
        self.ingest = SimpleNamespace(connected=True)
        self.births = SimpleNamespace(clock_ahead_ms=lambda device_id, boot: 0)
        self.compiler = SimpleNamespace(forget_device=self.forgotten_series.append)
        self.events = self.port.hub
        self.unsent_age_s = {ENDPOINT: 4.0}

    def send_rate(self, endpoint: str) -> float:
        return 2.25

    def missing_of(self, record: Any) -> int:
        return 0


def view_of(parts: GatewayParts) -> FakePort:
    return cast(FakePort, GatewayView(cast(RunningGateway, parts)))  # served like the fake


def test_gateway_view_reads_events_and_forgets_a_device_in_sqlite(port: FakePort) -> None:
    parts = GatewayParts(port)
    parts.db.conn.executemany(
        "INSERT INTO device_events (id, device_id, ts_ms, kind, state, reason) VALUES"
        " (?, ?, ?, 'state', 'online', 'birth')", [(1, "dev-a", T0), (2, "dev-b", T0)])
    events = get(view_of(parts), "/api/v1/devices/dev-a/events").json()["events"]
    assert [(e["id"], e["device_id"]) for e in events] == [(1, "dev-a")]

    answer = run(call(view_of(parts), "DELETE", "/api/v1/devices/dev-a", token=ADMIN))
    assert answer.status_code == 204
    assert "dev-a" not in port.fleet.devices
    assert parts.forgotten_series == ["dev-a"]
    assert parts.db.rows("SELECT device_id FROM device_events") == [("dev-b",)]


def test_gateway_view_replays_per_endpoint_and_settles_what_was_taken(port: FakePort) -> None:
    other = "http://victoria/api/v1/write"
    parts = GatewayParts(port, forwarders=[FakeForwarder(ENDPOINT, refuse=frozenset({2})),
                                           FakeForwarder(other, unreachable=True)])
    letters = [(ENDPOINT, 7, T0, 400, "r", "up{}", b"e")] * 3 + [
        ("http://gone/write", 7, T0, 400, "r", "up{}", b"e")]
    parts.db.conn.executemany("INSERT INTO dead_letters (endpoint, frame_id, created_ms, status,"
                              " reason, series, entry) VALUES (?,?,?,?,?,?,?)", letters)
    done = run(call(view_of(parts), "POST", "/api/v1/dead-letters/replay", token=ADMIN))
    assert done.json() == {"replayed": 2, "refused": 1, "remaining": 2}
    assert parts.db.rows("SELECT id, endpoint, reason FROM dead_letters ORDER BY id") == [
        (2, ENDPOINT, "out of order"), (4, "http://gone/write", "r")]  # no longer configured

    # The first endpoint takes letter 6, the second cannot be reached: 503, and letter 6 is
    # settled all the same (it was delivered; sending it again would duplicate it).
    parts.db.conn.executemany("INSERT INTO dead_letters (endpoint, frame_id, created_ms, status,"
                              " reason, series, entry) VALUES (?,?,?,?,?,?,?)",
                              [(other, *letters[0][1:]), letters[0]])
    down = run(call(view_of(parts), "POST", "/api/v1/dead-letters/replay", token=ADMIN))
    assert (down.status_code, down.json()["error"]) == (503, "unavailable")
    assert parts.db.rows("SELECT id FROM dead_letters ORDER BY id") == [(2,), (4,), (5,)]


def test_gateway_view_pipeline_status_names_each_part(port: FakePort) -> None:
    parts = GatewayParts(port, forwarders=[FakeForwarder(ENDPOINT)])
    status = get(view_of(parts), "/api/v1/pipeline", token=ADMIN).json()
    assert status["buffer"] == {"frames": 3, "bytes": 300, "held_frames": 1,
                                "max_bytes": 1 << 20, "full_policy": "drop_oldest"}
    assert status["last_recovery"] is None
    [endpoint] = status["endpoints"]
    assert {k: endpoint[k] for k in ("state", "paused_reason", "behind_frames",
                                     "oldest_unsent_age_s", "send_rate_samples_per_s",
                                     "max_samples_per_request", "sent_samples")} == {
        "state": "paused", "paused_reason": "HTTP 401", "behind_frames": 3,
        "oldest_unsent_age_s": 4.0, "send_rate_samples_per_s": 2.2,
        "max_samples_per_request": 500, "sent_samples": 90}


@pytest.mark.parametrize(("url", "client_id", "broker", "session"), [
    ("mqtt://127.0.0.1", None, "mqtt://127.0.0.1:1883", "fleetgate-gw-b"),
    ("tcp://broker.lan:1884", "site-b-primary", "mqtt://broker.lan:1884", "site-b-primary"),
    ("mqtts://[::1]:8884", None, "mqtts://[::1]:8884", "fleetgate-gw-b"),
])
def test_gateway_view_names_the_slice_it_owns_from_the_settings(
        port: FakePort, tmp_path: Path, url: str, client_id: str | None, broker: str,
        session: str) -> None:
    parts = GatewayParts(port)
    parts.settings = Settings(  # type: ignore[assignment]
        data_dir=tmp_path, remote_write_url=["http://127.0.0.1:9/write"], gateway_id="gw-b",
        topic_prefix="plant/siteB", mqtt_url=url, mqtt_client_id=client_id,
        mqtt_username="gw-b", mqtt_password="broker-secret")
    answer = get(view_of(parts), "/api/v1/fleet/summary")
    assert answer.json()["slice"] == {
        "gateway_id": "gw-b", "topic_prefix": "plant/siteB",
        "subscriptions": ["plant/siteB/+/birth", "plant/siteB/+/telemetry",
                          "plant/siteB/+/death"],
        "broker": broker, "mqtt_client_id": session}
    assert "broker-secret" not in answer.text
