"""The fleet page (GET /) in headless Chromium, against a real gateway fed through Mosquitto.

A device sends its death while the page is open: its row turns offline and the counts follow
without a reload (only the event stream can have told the page), then the device boots again
and its row turns online. FLEETGATE_SCREENSHOT=<path> keeps a screenshot of the page with the
device offline (docs/fleet-page.png is one). With API tokens set, the page asks for one and
sends it, also on the event stream (as ?access_token=, which EventSource needs).

A device that keeps sending (no state change, so no event) has its "Last seen" follow its frames
while the page stays open, and the text ticks. The device panel shows every value of its latest
metrics, long series names and all, without scrolling sideways, at laptop and narrow widths.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException, TimeoutException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.chrome.webdriver import WebDriver
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait

import tests.support.factories as f
from device_protocol import (
    Birth,
    Death,
    HistogramValue,
    MetricDef,
    MetricType,
    RawSample,
    RawTelemetry,
    birth_topic,
    death_topic,
    encode_birth,
    encode_death,
    encode_telemetry,
    telemetry_topic,
)
from devstack import GatewayProcess, Mosquitto, VictoriaMetrics, wait_for
from tests.support.publisher import Publisher

pytestmark = pytest.mark.e2e

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
PREFIX = "fleet"
DEVICES = range(8)
FRAMES = range(5)
GAP_DEVICE = 2  # skips one seq: completeness below 100 %
DYING = 1
# Far longer than the test: no device turns late or offline by timeout, so the death and the
# new boot are the only state changes.
INTERVAL_MS = 600_000
# Strings a device controls, which the page must show as text, never run as markup.
HOSTILE_FIRMWARE = "<img src=x onerror=window.pwned=1>"
HOSTILE_LABEL = ("site", "<script>window.pwned=2</script>")
WAIT_S = 15.0

# Viewports a user opens the page in: a common laptop, a narrow laptop or tablet, and one narrow
# enough for the one-column layout.
VIEWPORTS = ((1366, 768), (1024, 768), (900, 700))

ROW_STATES_JS = """
return Object.fromEntries(Array.from(
  document.querySelectorAll('#device-rows tr[data-device-id]'),
  (row) => [row.dataset.deviceId, row.dataset.state]));
"""


@pytest.fixture
def browser() -> Iterator[WebDriver]:
    """Debian's chromium through Debian's chromedriver (nothing downloaded)."""
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not os.access(p, os.X_OK)]
    if missing:
        message = (f"{' and '.join(missing)} missing: run `make install` "
                   "(scripts/install-system-deps.sh installs chromium and chromium-driver)")
        if os.environ.get("CI") == "true":
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    options = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                "--window-size=1400,1000"):
        options.add_argument(arg)
    options.binary_location = str(CHROMIUM)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        # Torn down before the gateway (set up after it): the gateway's stop never has the
        # page's event stream open.
        driver.quit()


def _boot(i: int, *, reboot: int = 0) -> list[tuple[str, bytes]]:
    """A birth, then telemetry stamped in the last seconds (the gap device skips seq 2)."""
    dev = f.device_id(i)
    seqs = [s for s in FRAMES if not (i == GAP_DEVICE and s == 2)]
    base = f.now_ms() - len(FRAMES) * 1000
    return [(birth_topic(PREFIX, dev),
             f.birth_payload(i, reboot=reboot, interval_ms=INTERVAL_MS)),
            *((telemetry_topic(PREFIX, dev),
               f.telemetry_payload(i, s, base_ms=base, reboot=reboot)) for s in seqs)]


def _api_states(gw: GatewayProcess, headers: dict[str, str] | None = None) -> dict[str, str]:
    body = gw.http.get("/api/v1/devices", headers=headers).raise_for_status().json()
    return {d["device_id"]: d["state"] for d in body["devices"]}


def _death(i: int) -> tuple[str, bytes]:
    return death_topic(PREFIX, f.device_id(i)), encode_death(Death(boot=f.boot_id(i)))


# The device's row's Last seen: [data-ts (the ms it stands for), the text shown].
LAST_SEEN_JS = """
const t = document.querySelector(`tr[data-device-id="${CSS.escape(arguments[0])}"] time`);
return t ? [Number(t.dataset.ts), t.textContent] : [0, ''];
"""

# In the open device panel: the panel's scroll and client widths, and every Latest metrics
# value cell that sticks out of the panel's visible box (sideways; the panel scrolls down).
# Beside it, the device table's right edge and its section's (past it, columns hide under the
# panel).
LATEST_FIT_JS = """
const panel = document.getElementById('detail');
const box = panel.getBoundingClientRect();
const left = box.left + panel.clientLeft, right = left + panel.clientWidth;
const heading = Array.from(panel.querySelectorAll('h3'))
  .find((h) => h.textContent.trim().toLowerCase() === 'latest metrics');
const table = heading?.nextElementSibling;
const cells = table?.tagName === 'TABLE' ? Array.from(table.querySelectorAll('tbody td')) : [];
const out = cells.filter((c) => {
  const r = c.getBoundingClientRect();
  return r.left < left - 0.5 || r.right > right + 0.5 || r.width === 0;
}).map((c) => c.textContent);
const devices = document.getElementById('devices').getBoundingClientRect();
const fleet = document.getElementById('fleet').getBoundingClientRect();
return {scrollWidth: panel.scrollWidth, clientWidth: panel.clientWidth, cells: cells.length,
        outside: out, devicesRight: devices.right, fleetRight: fleet.right};
"""


def _row_states(driver: WebDriver) -> dict[str, str]:
    return dict(driver.execute_script(ROW_STATES_JS))


def _row_text(driver: WebDriver, device_id: str) -> str:
    return str(driver.execute_script(
        "return document.querySelector(`tr[data-device-id=\"${CSS.escape(arguments[0])}\"]`)"
        "?.textContent ?? '';", device_id))


def _click_row(driver: WebDriver, device_id: str) -> None:
    """Click a device's row; the table may be re-rendered (rows replaced) meanwhile."""
    def click(d: WebDriver) -> bool:
        d.find_element(By.CSS_SELECTOR, f'tr[data-device-id="{device_id}"]').click()
        return True
    WebDriverWait(driver, WAIT_S, ignored_exceptions=(StaleElementReferenceException,)
                  ).until(click)


def _text(driver: WebDriver, element_id: str) -> str:
    return str(driver.find_element(By.ID, element_id).text)


def _attr(driver: WebDriver, element_id: str, name: str) -> str | None:
    return driver.find_element(By.ID, element_id).get_attribute(name)


def _counts(driver: WebDriver) -> dict[str, str]:
    return {s: _text(driver, f"count-{s}") for s in ("online", "late", "offline")}


def _wait(driver: WebDriver, what: str, condition: Callable[[WebDriver], Any]) -> None:
    try:
        WebDriverWait(driver, WAIT_S, poll_frequency=0.1).until(condition)
    except TimeoutException:
        log = [e["message"] for e in driver.get_log("browser")]
        raise AssertionError(
            f"page: not {what} within {WAIT_S:.0f} s; rows {_row_states(driver)}, counts "
            f"{_counts(driver)}, stream {_attr(driver, 'live-status', 'data-live')}, "
            f"browser log {log}") from None


def _counted(online: int, offline: int) -> dict[str, str]:
    return {"online": str(online), "late": "0", "offline": str(offline)}


def _open_live(driver: WebDriver, gw: GatewayProcess, states: dict[str, str]) -> None:
    """Open the page; return once it shows `states` and listens to the event stream."""
    driver.get(f"{gw.url}/")
    _wait(driver, f"showing {states}", lambda d: _row_states(d) == states)
    _wait(driver, "connected to the event stream",
          lambda d: _attr(d, "live-status", "data-live") == "open")


def _severe_log(driver: WebDriver) -> list[str]:
    return [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def test_fleet_page_follows_a_device_offline_and_back_without_a_reload(
        mosquitto: Mosquitto, victoria_metrics: VictoriaMetrics,
        gateway_factory: Callable[..., GatewayProcess], browser: WebDriver) -> None:
    gw = gateway_factory(mosquitto, victoria_metrics)
    n = len(DEVICES)
    dying = f.device_id(DYING)
    all_online = {f.device_id(i): "online" for i in DEVICES}
    with Publisher(mosquitto.url, client_id="fleet-page-test") as pub:
        pub.publish([m for i in DEVICES for m in _boot(i)])
        wait_for(lambda: _api_states(gw) == all_online, WAIT_S, what="API: every device online")

        _open_live(browser, gw, all_online)
        # Page state that a reload would wipe.
        browser.execute_script("window.fleetPageNotReloaded = true;")
        assert _counts(browser) == _counted(n, 0)
        _wait(browser, "showing the receiver caught up",
              lambda d: ": 0 frames behind" in _text(d, "endpoints"))

        _click_row(browser, dying)
        latest = str(int(f.sample_value(DYING, FRAMES[-1])))
        _wait(browser, "showing the device's latest temperature",
              lambda d: _attr(d, "detail", "data-device-id") == dying
              and "device_temperature_celsius" in _text(d, "detail")
              and latest in _text(d, "detail"))

        pub.publish([_death(DYING)])
        _wait(browser, f"{dying} offline, the others online",
              lambda d: _row_states(d) == {**all_online, dying: "offline"})
        _wait(browser, "counting one offline", lambda d: _counts(d) == _counted(n - 1, 1))
        _wait(browser, "detail panel offline",
              lambda d: _attr(d, "detail", "data-state") == "offline")
        if screenshot := os.environ.get("FLEETGATE_SCREENSHOT"):
            Path(screenshot).parent.mkdir(parents=True, exist_ok=True)
            browser.save_screenshot(screenshot)

        state_filter = Select(browser.find_element(By.NAME, "state"))
        state_filter.select_by_value("offline")
        _wait(browser, "filtered to the offline device",
              lambda d: _row_states(d) == {dying: "offline"})
        state_filter.select_by_value("")
        _wait(browser, "unfiltered again", lambda d: len(_row_states(d)) == n)

        pub.publish(_boot(DYING, reboot=1))
        _wait(browser, f"{dying} online again", lambda d: _row_states(d) == all_online)
        _wait(browser, "counting none offline", lambda d: _counts(d) == _counted(n, 0))
        _wait(browser, "detail panel online with the reboot",
              lambda d: _attr(d, "detail", "data-state") == "online"
              and "reboot" in _text(d, "detail"))

    assert browser.execute_script("return window.fleetPageNotReloaded === true;")
    assert _severe_log(browser) == []


def test_fleet_page_asks_for_a_token_and_streams_with_it(
        mosquitto: Mosquitto, gateway_factory: Callable[..., GatewayProcess],
        browser: WebDriver) -> None:
    token = "page-read-token"
    gw = gateway_factory(mosquitto, api_tokens=f"{token}:read")
    devices = range(2)
    all_online = {f.device_id(i): "online" for i in devices}
    hostile = f.device_id(1)
    hostile_birth = dataclasses.replace(f.birth(1, interval_ms=INTERVAL_MS),
                                        firmware=HOSTILE_FIRMWARE, labels=(HOSTILE_LABEL,))
    with Publisher(mosquitto.url, client_id="fleet-page-token-test") as pub:
        pub.publish([*_boot(0), (birth_topic(PREFIX, hostile), encode_birth(hostile_birth))])
        wait_for(lambda: _api_states(gw, {"Authorization": f"Bearer {token}"}) == all_online,
                 WAIT_S, what="API: every device online")

        browser.get(f"{gw.url}/")
        _wait(browser, "asking for a token",
              lambda d: d.find_element(By.ID, "auth").is_displayed())
        assert _row_states(browser) == {}
        browser.find_element(By.ID, "token-input").send_keys(token)
        browser.find_element(By.CSS_SELECTOR, "#auth-form button[type=submit]").click()
        _wait(browser, "every device online", lambda d: _row_states(d) == all_online)
        _wait(browser, "connected to the event stream",
              lambda d: _attr(d, "live-status", "data-live") == "open")
        assert not browser.find_element(By.ID, "auth").is_displayed()
        assert HOSTILE_FIRMWARE in _row_text(browser, hostile)
        _click_row(browser, hostile)
        _wait(browser, "showing the device's labels as text",
              lambda d: f"{HOSTILE_LABEL[0]}={HOSTILE_LABEL[1]}" in _text(d, "detail"))
        assert browser.execute_script("return window.pwned === undefined;")

        pub.publish([_death(0)])
        _wait(browser, "device 0 offline",
              lambda d: _row_states(d) == {**all_online, f.device_id(0): "offline"})

    # Kept for the next visit: a reload needs no token box.
    browser.refresh()
    _wait(browser, "device 0 offline after a reload",
          lambda d: _row_states(d) == {**all_online, f.device_id(0): "offline"})
    assert not browser.find_element(By.ID, "auth").is_displayed()


def _api_device(gw: GatewayProcess, device_id: str) -> dict[str, Any]:
    body: dict[str, Any] = gw.http.get(f"/api/v1/devices/{device_id}").raise_for_status().json()
    return body


def _api_latest(gw: GatewayProcess, device_id: str) -> dict[str, Any]:
    """The device's latest metrics; none while the gateway does not know it yet."""
    response = gw.http.get(f"/api/v1/devices/{device_id}")
    return {} if response.status_code == 404 else dict(response.raise_for_status().json()["latest"])


def _last_seen(driver: WebDriver, device_id: str) -> tuple[int, str]:
    ts, text = driver.execute_script(LAST_SEEN_JS, device_id)
    return int(ts), str(text)


def _await_seen_after(gw: GatewayProcess, device_id: str, before_ms: int) -> int:
    """The device's last_seen_ms in the API, once past `before_ms`."""
    wait_for(lambda: _api_device(gw, device_id)["last_seen_ms"] > before_ms, WAIT_S,
             what=f"API: {device_id} seen after {before_ms}")
    return int(_api_device(gw, device_id)["last_seen_ms"])


def _shows_seen_at(device_id: str, seen_ms: int) -> Callable[[WebDriver], bool]:
    return lambda d: _last_seen(d, device_id)[0] >= seen_ms


def test_fleet_page_last_seen_follows_a_device_that_keeps_sending(
        mosquitto: Mosquitto, gateway_factory: Callable[..., GatewayProcess],
        browser: WebDriver) -> None:
    """An online device that sends again changes no state: no event tells the page. Its row's
    Last seen must still follow its frames (the page refreshes what it shows) and tick."""
    gw = gateway_factory(mosquitto)
    devices = range(2)
    sender = f.device_id(0)
    all_online = {f.device_id(i): "online" for i in devices}
    with Publisher(mosquitto.url, client_id="fleet-page-last-seen-test") as pub:
        pub.publish([m for i in devices for m in _boot(i)])
        wait_for(lambda: _api_states(gw) == all_online, WAIT_S, what="API: every device online")
        _open_live(browser, gw, all_online)

        for seq in (len(FRAMES), len(FRAMES) + 1):
            before = _api_device(gw, sender)["last_seen_ms"]
            pub.publish([(telemetry_topic(PREFIX, sender),
                          f.telemetry_payload(0, seq, base_ms=f.now_ms() - seq * 1000))])
            seen = _await_seen_after(gw, sender, before)
            _wait(browser, f"Last seen of {sender} at its frame {seq} ({seen})",
                  _shows_seen_at(sender, seen))
        assert _row_states(browser) == all_online

        shown = _last_seen(browser, sender)[1]
        _wait(browser, f"Last seen of {sender} ticking on from {shown!r}",
              lambda d: _last_seen(d, sender)[1] not in ("", shown))
    assert _severe_log(browser) == []


# A device of a real profile's kind: long metric names, histograms, labels of its own on the
# samples, and values of every width.
LONG_METRICS = (
    MetricDef(0, "liquid_inference_duration_seconds", MetricType.HISTOGRAM, (0.005, 0.01, 0.05)),
    MetricDef(1, "liquid_memory_usage_bytes", MetricType.GAUGE),
    MetricDef(2, "device_temperature_celsius", MetricType.GAUGE),
)
LONG_LABELS = (("model", "keyword-spotting-conformer-v2-int8-quantized"),
               ("arena", "tensor_arena_primary_sram"))


def _long_metrics_device(i: int) -> list[tuple[str, bytes]]:
    dev = f.device_id(i)
    now = f.now_ms()
    birth = Birth(boot=3_141_592_653 + i, time_ms=now, platform="liquid-edge-lfm2-devboard",
                  firmware="3.14.159-rc2+build.20261202", labels=(("site", "lab"),),
                  interval_ms=INTERVAL_MS, metrics=LONG_METRICS)
    samples = (
        RawSample(0, HistogramValue(1234567.0, 9876.54321, (1000.0, 200000.0, 1234000.0)), 0,
                  LONG_LABELS),
        RawSample(1, 123456789012.0, 0, LONG_LABELS),
        RawSample(1, 0.000123456789, 0, (("arena", "scratch"),)),
        RawSample(2, 41.5, 0, ()),
    )
    frame = RawTelemetry(boot=birth.boot, seq=0, time_ms=now, samples=samples,
                         historical=False)
    return [(birth_topic(PREFIX, dev), encode_birth(birth)),
            (telemetry_topic(PREFIX, dev), encode_telemetry(frame))]


def test_device_panel_shows_every_latest_value_without_sideways_scrolling(
        mosquitto: Mosquitto, gateway_factory: Callable[..., GatewayProcess],
        browser: WebDriver) -> None:
    gw = gateway_factory(mosquitto)
    dev = f.device_id(0)
    with Publisher(mosquitto.url, client_id="fleet-page-metrics-test") as pub:
        pub.publish(_long_metrics_device(0))
        wait_for(lambda: len(_api_latest(gw, dev)) == 5, WAIT_S,
                 what=f"API: the device's latest metrics: {_api_latest(gw, dev)}")
    latest = _api_latest(gw, dev)

    for width, height in VIEWPORTS:
        browser.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
            "width": width, "height": height, "deviceScaleFactor": 1, "mobile": False})
        _open_live(browser, gw, {dev: "online"})
        _click_row(browser, dev)
        _wait(browser, "showing the device's latest metrics",
              lambda d: _attr(d, "detail", "data-device-id") == dev
              and d.execute_script(LATEST_FIT_JS)["cells"] == 3 * len(latest))
        fit = browser.execute_script(LATEST_FIT_JS)
        if screenshot := os.environ.get("FLEETGATE_PANEL_SCREENSHOT"):
            browser.save_screenshot(screenshot.replace(".png", f"-{width}.png"))
        assert fit["outside"] == [], f"at {width}x{height}: cut off: {fit}"
        assert fit["scrollWidth"] <= fit["clientWidth"], f"at {width}x{height}: {fit}"
        assert fit["devicesRight"] <= fit["fleetRight"] + 0.5, f"at {width}x{height}: {fit}"
    assert _severe_log(browser) == []
