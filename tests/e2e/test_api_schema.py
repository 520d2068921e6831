"""The operator API checked against its own OpenAPI schema by schemathesis, on a real gateway.

One gateway process (with Mosquitto and a Prometheus that refuses samples two hours old, so
the dead-letter routes have rows) serves every operation its /openapi.json lists; schemathesis
generates valid and invalid requests for each and runs its default response checks: no 5xx,
status codes and content types the schema documents, bodies and headers that match it, invalid
input refused, valid input accepted, routes with security refuse a request without the token.
The admin token goes with every request, so destructive routes (DELETE a device, replay dead
letters) run too; they must answer as documented like any other.

Requests are generated deterministically (derandomize), so a failure comes back on every run;
failures known today are pinned by strict xfails (KNOWN_BUGS). Run by hand with more examples
and derandomize=False to search wider.

The tests after it check what a schema cannot say: the error bodies of docs/api.md, which
scope may do what, that cursors walk the fleet, that the fed fleet reads back as sent.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import APIOperation, GenerationMode
from schemathesis.checks import positive_data_acceptance
from schemathesis.core.result import Err

import tests.support.factories as f
import tests.support.publisher as publisher
from device_protocol import Death, death_topic, encode_death
from devstack import GatewayProcess, Mosquitto, Prometheus, wait_for
from tests.support.publisher import Publisher

pytestmark = pytest.mark.e2e

ADMIN_TOKEN = "secret-admin"
READ_TOKEN = "secret-read"
API_TOKENS = f"{ADMIN_TOKEN}:admin,{READ_TOKEN}:read"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
READ = {"Authorization": f"Bearer {READ_TOKEN}"}

DEVICES = range(6)
FRAMES = range(8)
GAP_DEVICE = 1  # skips seqs 8..10: completeness below 100 %, one gap
DEAD_DEVICE = 2  # sends its death (MQTT Will): offline
QUIET_DEVICE = 3  # declares a 1 s interval, then stays quiet: late, then offline (timeout)
OLD_DEVICES = range(4, 6)  # data Prometheus refuses: dead letters
INTERVAL_MS = 600_000  # the others stay online for the whole test
# Per operation and generation mode: the whole file takes ~40 s on 2 shared cores.
MAX_EXAMPLES = 100


def _feed(gw: GatewayProcess, mqtt_url: str) -> None:
    base = f.now_ms() - 60_000
    # Older than Prometheus's out-of-order window (30 min): refused for good, dead-lettered.
    old_base = f.now_ms() - 2 * 3600_000
    live = range(OLD_DEVICES.start)
    death = (death_topic("fleet", f.device_id(DEAD_DEVICE)),
             encode_death(Death(f.boot_id(DEAD_DEVICE))))
    frames = len(DEVICES) + len(live) * len(FRAMES) + 3 + len(OLD_DEVICES) * 3
    with Publisher(mqtt_url, client_id="schema-test-fleet") as pub:
        pub.publish([(f"fleet/{f.device_id(i)}/birth", f.birth_payload(
            i, interval_ms=1000 if i == QUIET_DEVICE else INTERVAL_MS)) for i in DEVICES])
        pub.publish(publisher.telemetry(live, FRAMES, base, with_histogram=True))
        pub.publish(publisher.telemetry(range(GAP_DEVICE, GAP_DEVICE + 1), range(11, 14), base))
        pub.publish([death])
        # Once the live data is at Prometheus: in one request with it, the old samples would
        # be sent first (a request is in time order) and an empty head would take them.
        wait_for(lambda: gw.metric("fleetgate_frames_stored_total") == frames - len(OLD_DEVICES) * 3
                 and gw.caught_up(), 60, what="the live frames forwarded")
        pub.publish(publisher.telemetry(OLD_DEVICES, range(3), old_base))
    wait_for(lambda: gw.metric("fleetgate_frames_stored_total") == frames
             and gw.metric("fleetgate_forward_dead_letters_total") > 0, 60,
             what="every frame stored and the old ones dead-lettered")


@pytest.fixture
def gateway(mosquitto: Mosquitto, prometheus: Prometheus,
            gateway_factory) -> Iterator[GatewayProcess]:  # type: ignore[no-untyped-def]
    gw = gateway_factory(mosquitto, prometheus, api_tokens=API_TOKENS)
    _feed(gw, mosquitto.url)
    yield gw


# Failures schemathesis finds today, each pinned by a strict xfail below that turns XPASS once
# fixed (then drop its line here): (operation, generation mode, text of the failure). A run
# stopped by a known bug tested less of its operation than it would have.
KNOWN_BUGS: tuple[tuple[str, str, re.Pattern[str]], ...] = ()


def _known_bug(label: str, mode: GenerationMode, failure: str) -> bool:
    return any(label == op and mode.value == m and text.search(failure)
               for op, m, text in KNOWN_BUGS)


def _fuzz(operation: APIOperation, mode: GenerationMode, base_url: str,
          path_parameters: dict[str, str] | None = None) -> None:
    """MAX_EXAMPLES generated requests to one operation; raises on the first failed check."""

    @settings(max_examples=MAX_EXAMPLES, deadline=None, database=None, derandomize=True,
              # Bounded time: report the first failing example as found, without shrinking
              # (schemathesis's message has the request to replay it by hand).
              phases=[Phase.explicit, Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(case=operation.as_strategy(generation_mode=mode, path_parameters=path_parameters))
    def run(case: schemathesis.Case) -> None:
        excluded = [positive_data_acceptance] if _names_something_made_up(case) else []
        case.call_and_validate(base_url=base_url, headers=ADMIN, timeout=10,
                               excluded_checks=excluded)

    run()


def _names_something_made_up(case: schemathesis.Case) -> bool:
    """A cursor or an endpoint the generator made up. The schema can only say "a string"; the
    API refuses one it never gave out or has no such endpoint (422), which schemathesis's
    positive_data_acceptance would count as a valid request refused. Every other check still
    applies to these requests (no 5xx, documented status, body matching the schema)."""
    body = case.body if isinstance(case.body, dict) else {}
    return "cursor" in (case.query or {}) or "endpoint" in body


def _passes(operation: APIOperation) -> list[tuple[GenerationMode, dict[str, str] | None]]:
    """Generated data, valid and invalid; for a device's routes also a device that exists
    (a generated id is almost never one), so the bodies of real answers are checked too."""
    passes: list[tuple[GenerationMode, dict[str, str] | None]] = [
        (GenerationMode.POSITIVE, None), (GenerationMode.NEGATIVE, None)]
    if "{device_id}" in operation.path:
        passes.insert(0, (GenerationMode.POSITIVE, {"device_id": f.device_id(GAP_DEVICE)}))
    return passes


def test_every_operation_conforms_to_the_schema(gateway: GatewayProcess) -> None:
    # Not schemathesis.pytest.from_fixture + @schema.parametrize(): with pytest 9.2 that
    # plugin path fails (it sets Function._nodeid, which pytest 9.2 no longer has).
    # Unknown query parameters and headers are ignored, as HTTP APIs customarily do (docs/api.md
    # lists the parameters, it does not promise to refuse others): invalid requests are made
    # by breaking the declared ones only.
    # The admin token goes with every request (call_and_validate's headers), so no
    # Authorization header is generated: it would be replaced before it is sent.
    config = schemathesis.Config.from_dict({"generation": {
        "allow-extra-parameters": False, "with-security-parameters": False}})
    schema = schemathesis.openapi.from_url(f"{gateway.url}/openapi.json", config=config)
    tested, failures, runs = [], [], 0
    for result in schema.get_all_operations():
        if isinstance(result, Err):  # an operation schemathesis cannot read: a schema bug too
            failures.append(f"unreadable operation: {result.err()}")
            continue
        operation = result.ok()
        if operation.path == "/api/v1/events/stream":
            continue  # it never ends: a client reading it to the end would hang
        tested.append(operation.label)
        for mode, path_parameters in _passes(operation):
            runs += 1
            try:
                _fuzz(operation, mode, gateway.url, path_parameters)
            except Unsatisfiable:
                # No input can break the schema of a route without parameters or body.
                assert mode is GenerationMode.NEGATIVE, operation.label
            # A failed check is an AssertionError, several a group: every operation's reported.
            except (AssertionError, BaseExceptionGroup) as exc:
                if _known_bug(operation.label, mode, str(exc)):
                    continue
                given_ids = f", device_id={path_parameters['device_id']}" if path_parameters else ""
                failures.append(f"{operation.label} ({mode.value} data{given_ids}):\n{exc}")
    assert {"GET /api/v1/devices", "GET /api/v1/devices/{device_id}",
            "GET /api/v1/pipeline"} <= set(tested)
    if failures:
        pytest.fail(f"{len(failures)} of {runs} runs failed:\n\n" + "\n\n".join(failures),
                    pytrace=False)


# --------------------------------------------------------------- what the schema cannot say
def _client(gw: GatewayProcess, headers: dict[str, str] | None = None) -> httpx.Client:
    return httpx.Client(base_url=gw.url, headers=headers or {}, timeout=10)


def test_without_a_token_the_api_answers_401_with_the_error_shape(
        gateway: GatewayProcess) -> None:
    with _client(gateway) as http:
        for path in ("/api/v1/devices", f"/api/v1/devices/{f.device_id(0)}",
                     "/api/v1/fleet/summary", "/api/v1/pipeline"):
            response = http.get(path)
            assert response.status_code == 401, path
            assert response.json()["error"] == "unauthorized", path
            assert isinstance(response.json()["detail"], str), path
            assert response.headers["www-authenticate"].startswith("Bearer"), path
        wrong = http.get("/api/v1/devices", headers={"Authorization": "Bearer not-a-token"})
        assert wrong.status_code == 401 and wrong.json()["error"] == "unauthorized"
        # Always open: probes and the page
        assert http.get("/healthz").status_code == 200
        assert http.get("/metrics").status_code == 200


def test_a_read_token_reads_but_may_not_replay_or_delete(gateway: GatewayProcess) -> None:
    with _client(gateway, READ) as http:
        assert http.get("/api/v1/devices").status_code == 200
        assert http.get("/api/v1/dead-letters").status_code == 200
        replay = http.post("/api/v1/dead-letters/replay", json={})
        assert replay.status_code == 403
        assert replay.json()["error"] == "forbidden"
        delete = http.delete(f"/api/v1/devices/{f.device_id(0)}")
        assert delete.status_code == 403 and delete.json()["error"] == "forbidden"
        assert http.get(f"/api/v1/devices/{f.device_id(0)}").status_code == 200  # still there


def test_an_unknown_device_is_a_404_with_the_error_shape(gateway: GatewayProcess) -> None:
    with _client(gateway, ADMIN) as http:
        for response in (http.get("/api/v1/devices/no-such-device"),
                         http.get("/api/v1/devices/no-such-device/events")):
            assert response.status_code == 404
            assert response.headers["content-type"].startswith("application/json")
            assert response.json()["error"] == "not_found"
            assert isinstance(response.json()["detail"], str)


def test_cursor_pages_cover_the_fleet_once_and_a_made_up_cursor_is_refused(
        gateway: GatewayProcess) -> None:
    with _client(gateway, READ) as http:
        seen: list[str] = []
        params: dict[str, str | int] = {"limit": 4, "sort": "-device_id"}
        for _ in range(len(DEVICES)):
            page = http.get("/api/v1/devices", params=params).json()
            seen += [d["device_id"] for d in page["devices"]]
            if page["next_cursor"] is None:
                break
            params["cursor"] = page["next_cursor"]
        assert seen == sorted((f.device_id(i) for i in DEVICES), reverse=True)
        refused = http.get("/api/v1/devices", params={"cursor": "not-a-cursor"})
        assert refused.status_code == 422 and refused.json()["error"] == "invalid_request"


def test_the_schema_says_which_state_and_label_values_are_valid(
        gateway: GatewayProcess) -> None:
    with _client(gateway) as http:
        schema = http.get("/openapi.json").json()
    parameters = {p["name"]: p["schema"] for p in
                  schema["paths"]["/api/v1/devices"]["get"]["parameters"]}
    for name in ("state", "label"):
        declared = json.dumps(parameters[name])
        assert '"pattern"' in declared or '"enum"' in declared, f"{name}: {declared}"


def test_a_body_that_is_not_json_is_an_invalid_request(gateway: GatewayProcess) -> None:
    with _client(gateway, {**ADMIN, "Content-Type": "application/json"}) as http:
        for body in (b"{", b"\xff\xfe not json"):
            response = http.post("/api/v1/dead-letters/replay", content=body)
            assert response.status_code == 422, (body, response.text)
            assert response.json()["error"] == "invalid_request", (body, response.text)


def test_the_fed_fleet_reads_back_as_sent(gateway: GatewayProcess) -> None:
    """The states and completeness the schema run saw were the interesting ones."""
    with _client(gateway, ADMIN) as http:
        listing = http.get("/api/v1/devices", params={"limit": 1000}).json()
        by_id = {d["device_id"]: d for d in listing["devices"]}
        assert set(by_id) == {f.device_id(i) for i in DEVICES}
        assert by_id[f.device_id(DEAD_DEVICE)]["state"] == "offline"
        assert by_id[f.device_id(0)]["state"] == "online"
        quiet = f"/api/v1/devices/{f.device_id(QUIET_DEVICE)}"
        wait_for(lambda: http.get(quiet).json()["state"] in ("late", "offline"), 20,
                 what="a device quiet for 2 of its intervals turning late")
        gap = http.get(f"/api/v1/devices/{f.device_id(GAP_DEVICE)}").json()
        assert gap["completeness"]["missing"] == 3
        assert gap["completeness"]["boots"][0]["gaps"] == [[8, 11]]
        assert by_id[f.device_id(GAP_DEVICE)]["completeness_pct"] < 100

        # Still two hours old for Prometheus: refused again, so they stay dead letters.
        before = http.get("/api/v1/dead-letters", params={"limit": 1000}).json()
        replay = http.post("/api/v1/dead-letters/replay", json={"limit": 4})
        assert replay.status_code == 200, replay.text
        assert replay.json()["refused"] == 4
        assert replay.json()["remaining"] == len(before)
        after = http.get("/api/v1/dead-letters", params={"limit": 1000}).json()
        assert len(after) == len(before)
