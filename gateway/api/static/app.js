"use strict";
// The fleet page: plain DOM, no framework, no build step. Device ids, labels and firmware
// strings come from devices, so every text goes in through el() (text nodes), never innerHTML.

const TOKEN_KEY = "fleetgate.apiToken";
const STATES = ["online", "late", "offline"];
const RECONNECT_DELAY_MS = 2000;
const PIPELINE_POLL_MS = 2000;
// State changes arrive on the event stream; completeness and platforms change without an
// event, so the summary is also polled.
const SUMMARY_POLL_MS = 15000;
// A device that keeps sending changes no state, so no event says it was seen: the rows shown
// (and the open device panel) are refreshed this often for Last seen, completeness and the
// latest values to follow it. Not while the page is hidden.
const LIVE_POLL_MS = 2000;

const $ = (id) => document.getElementById(id);
const view = {
  cursor: null, page: 1, nextCursor: null, loadSeq: 0,
  loadedSeq: 0,  // the last load that finished: loadSeq differs while one is in flight
  missed: null,  // events that arrived while the table was loading: applied on top of it
  detailId: null, source: null, reconnectTimer: null,
};

// --- formatting ---------------------------------------------------------------------------

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "dataset") Object.assign(node.dataset, value);
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : String(child));  // strings become text nodes
  }
  return node;
}

const known = (state) => (STATES.includes(state) ? state : "unknown");
const badge = (state) => el("span", { class: `badge state-${known(state)}` }, state ?? "unknown");
const dash = (value) => (value === null || value === undefined || value === "" ? "–" : value);
const isNumber = (value) => typeof value === "number";

function pct(value) {
  return isNumber(value) ? `${value.toFixed(value === 100 ? 0 : 2)} %` : "–";
}

function ago(ms) {
  if (!ms) return "never";
  const s = Math.max(0, Math.round((Date.now() - ms) / 1000));
  if (s < 60) return `${s} s ago`;
  if (s < 3600) return `${Math.floor(s / 60)} min ago`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ago`;
  return `${Math.floor(s / 86400)} d ago`;
}

function timeEl(ms) {
  const date = ms ? new Date(ms) : null;
  return el("time", { "data-ts": ms || 0, datetime: date?.toISOString(),
    title: date?.toLocaleString() }, ago(ms));
}

function refreshTimes() {
  for (const t of document.querySelectorAll("time[data-ts]")) {
    t.textContent = ago(Number(t.dataset.ts));
  }
}

// NaN and the infinities arrive as the strings "NaN", "+Inf", "-Inf": shown as they are.
function formatValue(value) {
  if (!isNumber(value)) return dash(value);
  return Number.isInteger(value) ? String(value) : String(Number(value.toPrecision(6)));
}

function formatBytes(n) {
  if (!isNumber(n)) return "–";
  const units = ["B", "kB", "MB", "GB"];
  let i = 0;
  while (n >= 1000 && i < units.length - 1) { n /= 1000; i += 1; }
  return `${i ? n.toFixed(1) : n} ${units[i]}`;
}

// An endpoint URL may carry credentials (user:pass@host): show host and path only.
function endpointName(url) {
  try { const u = new URL(url); return u.host + u.pathname; } catch { return String(url); }
}

const byCount = (object) => Object.entries(object ?? {}).sort((a, b) => b[1] - a[1]);

// --- API ----------------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

const token = () => localStorage.getItem(TOKEN_KEY) || "";

async function api(path, params = []) {
  const url = new URL(path, location.origin);
  for (const [key, value] of params) url.searchParams.append(key, value);
  const headers = token() ? { Authorization: `Bearer ${token()}` } : {};
  const response = await fetch(url, { headers });
  if (response.status === 401) showAuth(true);
  if (!response.ok) {
    const body = await response.json().catch(() => ({}));
    const detail = body.detail ?? body.error ?? "";
    throw new ApiError(response.status, `${path}: ${response.status} ${detail}`);
  }
  return response.json();
}

function report(error) {
  console.error(error);
  if (error instanceof ApiError && error.status === 401) return;  // the token box says it
  $("error").textContent = String(error.message ?? error);
  $("error").hidden = false;
}

// Runs load() once `ms` after the first request for `key`: a burst of events costs one
// request, and a steady stream still gets one every `ms` (a debounce would starve).
const pending = {};
function soon(key, ms, load) {
  if (pending[key]) return;
  pending[key] = setTimeout(() => { delete pending[key]; load().catch(report); }, ms);
}

// --- header: pipeline health and fleet summary --------------------------------------------

function endpointItem(e) {
  const age = e.oldest_unsent_age_s;
  return el("li", {},
    el("span", { class: "mono" }, endpointName(e.endpoint)), ": ",
    `${dash(e.behind_frames)} frames behind`,
    isNumber(age) ? `, oldest unsent ${age.toFixed(1)} s` : "",
    e.last_error ? el("span", { class: "bad" }, ` · last error: ${e.last_error}`)
      : el("span", { class: "ok" }, " · ok"));
}

async function loadPipeline() {
  let p;
  try {
    p = await api("/api/v1/pipeline");
  } catch (error) {
    const why = !(error instanceof ApiError) ? "gateway unreachable"
      : error.status === 401 ? "needs a token" : `pipeline: HTTP ${error.status}`;
    $("health-line").replaceChildren(el("span", { class: "bad" }, why));
    throw error;
  }
  const buffer = p.buffer ?? {};
  $("health-line").replaceChildren(
    el("span", { class: p.mqtt_connected ? "ok" : "bad" },
      p.mqtt_connected ? "MQTT connected" : "MQTT disconnected"),
    ` · buffer ${dash(buffer.frames)} frames (${formatBytes(buffer.bytes)})`,
    buffer.held_frames ? `, ${buffer.held_frames} held` : "");
  $("endpoints").replaceChildren(...(p.endpoints ?? []).map(endpointItem));
}

function setCounts(byState, total) {
  for (const state of STATES) $(`count-${state}`).textContent = byState?.[state] ?? 0;
  if (total !== undefined) $("count-total").textContent = total;
}

function deviceLink(id) {
  const open = (e) => { e.preventDefault(); openDetail(id); };
  return el("a", { href: "#", class: "mono", onclick: open }, id);
}

const countItem = ([name, n]) => el("li", {}, `${name}: `, el("b", {}, n));
const option = ([name]) => el("option", { value: name });

async function loadSummary() {
  const s = await api("/api/v1/fleet/summary");
  setCounts(s.by_state, s.total);
  $("by-platform").replaceChildren(...byCount(s.by_platform).map(countItem));
  $("completeness-buckets").replaceChildren(...Object.entries(s.completeness ?? {})
    .map(([bucket, n]) => countItem([`${bucket} %`, n])));
  $("worst").replaceChildren(...(s.worst ?? []).map((w) => el("li", {},
    deviceLink(w.device_id), ` ${pct(w.completeness_pct)} (${dash(w.missing)} missing)`)));
  const over = s.over_series_budget ?? [];
  $("over-budget").replaceChildren(...over.map((o) => el("li", {},
    deviceLink(o.device_id), ` ${o.series} series, ${o.refused_samples} refused`)));
  if (!over.length) $("over-budget").append(el("li", { class: "muted" }, "none"));
  $("platforms").replaceChildren(...byCount(s.by_platform).map(option));
  $("firmwares").replaceChildren(...byCount(s.by_firmware).map(option));
}

// --- device table -------------------------------------------------------------------------

function filterParams() {
  const form = $("filters").elements;
  return ["state", "platform", "firmware", "q", "sort"]
    .map((name) => [name, form[name].value.trim()])
    .filter(([, value]) => value !== "");
}

function deviceRow(d) {
  const attrs = { dataset: { deviceId: d.device_id, state: d.state }, tabindex: 0,
    class: d.device_id === view.detailId ? "selected" : null };
  const overBudget = d.over_series_budget
    ? el("span", { class: "bad", title: "over its series budget" }, " ▲") : null;
  return el("tr", attrs,
    el("td", { class: "mono" }, d.device_id),
    el("td", {}, badge(d.state)),
    el("td", {}, dash(d.platform)),
    el("td", {}, dash(d.firmware)),
    el("td", {}, timeEl(d.last_seen_ms)),
    el("td", { class: "num" }, pct(d.completeness_pct)),
    el("td", { class: "num" }, dash(d.series), overBudget));
}

function renderRows(devices) {
  const body = $("device-rows");
  const shown = Array.from(body.rows, (row) => row.dataset.deviceId);
  if (devices.length && devices.length === shown.length
      && devices.every((d, i) => d.device_id === shown[i])) {
    // The same rows in the same order: update their cells in place, so a refresh keeps the
    // row a user focused, hovers or is about to click.
    devices.forEach((d, i) => {
      const row = body.rows[i];
      row.dataset.state = d.state;
      row.replaceChildren(...deviceRow(d).cells);
    });
    return;
  }
  const rows = devices.map(deviceRow);
  if (!rows.length) rows.push(el("tr", {}, el("td", { colspan: 7, class: "muted" }, "none")));
  body.replaceChildren(...rows);
}

function rowFor(id) {
  return document.querySelector(`#device-rows tr[data-device-id="${CSS.escape(id)}"]`);
}

async function loadDevices(cursor = view.cursor, page = view.page) {
  const seq = ++view.loadSeq;
  view.missed = [];
  const params = filterParams();
  if (cursor) params.push(["cursor", cursor]);
  let result;
  try {
    result = await api("/api/v1/devices", params);
  } catch (error) {
    if (seq !== view.loadSeq) return;  // superseded: the newer load reports its own
    view.missed = null;
    view.loadedSeq = seq;
    throw error;
  }
  if (seq !== view.loadSeq) return;  // a newer load started while this one was in flight
  view.loadedSeq = seq;
  Object.assign(view, { cursor, page, nextCursor: result.next_cursor ?? null });
  renderRows(result.devices);
  // The page may predate events that arrived while it loaded.
  for (const e of view.missed) applyToRow(e);
  view.missed = null;
  $("next-page").disabled = !view.nextCursor;
  $("first-page").disabled = !cursor;
  $("page-info").textContent = `page ${page} · ${result.devices.length} devices shown`;
  setCounts(result.counts, result.total);
  $("error").hidden = true;
}

// --- device detail ------------------------------------------------------------------------

function definitions(pairs) {
  return el("dl", {}, pairs.map(([term, value]) =>
    [el("dt", {}, term), el("dd", {}, dash(value))]));
}

function table(head, rows, className = "") {
  return el("table", { class: `small ${className}`.trim() },
    el("thead", {}, el("tr", {}, head.map((h) => el("th", {}, h)))),
    el("tbody", {}, rows.map((cells) => el("tr", {}, cells.map((c) => el("td", {}, dash(c)))))));
}

// Gaps are half-open [start, end) seq ranges.
function formatGaps(gaps) {
  if (!gaps?.length) return "none";
  const shown = gaps.slice(0, 8).map(([a, b]) => (b - a === 1 ? `${a}` : `${a}–${b - 1}`));
  return shown.join(", ") + (gaps.length > 8 ? ` (+${gaps.length - 8} more)` : "");
}

function describeEvent(e) {
  if (e.kind === "reboot") return `reboot: boot ${dash(e.previous_boot)} → ${dash(e.boot)}`;
  return `${dash(e.previous)} → ${dash(e.state)} (${dash(e.reason)})`;
}

// A series key (name{label="value",...}) with line-break opportunities after the name's _ and
// after { and each label's comma, so a long one wraps at its parts, a label staying whole if
// it can, instead of widening the panel (CSS breaks a part too long for a line anywhere).
function seriesName(key) {
  const text = String(key);
  const brace = text.indexOf("{") + 1 || text.length;
  const parts = [...text.slice(0, brace).split(/(?<=_)/), ...text.slice(brace).split(/(?<=,)/)]
    .filter((part) => part !== "");
  return el("span", { class: "mono series" },
    parts.flatMap((part, i) => (i ? [el("wbr"), part] : [part])));
}

function bootRow(b) {
  return [b.boot, `${b.first_seq}–${b.last_seq}`, b.received, b.missing,
    pct(b.completeness_pct), formatGaps(b.gaps)];
}

function renderDetail(d) {
  const c = d.completeness ?? {};
  const budget = d.series_budget ?? {};
  const labels = Object.entries(d.labels ?? {}).sort(([a], [b]) => a.localeCompare(b));
  const latest = Object.entries(d.latest ?? {}).map(([name, s]) =>
    [seriesName(name), formatValue(s.value), timeEl(s.timestamp_ms)]);
  const panel = $("detail");
  const scrolled = panel.dataset.deviceId === d.device_id ? panel.scrollTop : 0;
  Object.assign(panel.dataset, { deviceId: d.device_id, state: d.state });
  $("detail-body").replaceChildren(
    el("h2", {}, el("span", { class: "mono" }, d.device_id), " ", badge(d.state)),
    definitions([
      ["state since", d.state_since_ms ? timeEl(d.state_since_ms) : null],
      ["platform", d.platform], ["firmware", d.firmware], ["boot", d.boot],
      ["interval", isNumber(d.interval_ms) ? `${d.interval_ms / 1000} s` : null],
      ["first seen", timeEl(d.first_seen_ms)], ["last seen", timeEl(d.last_seen_ms)],
      ["last seq", d.last_seq],
      ["clock ahead", isNumber(d.clock_ahead_ms) ? `${d.clock_ahead_ms} ms` : null],
    ]),
    el("h3", {}, "Labels"),
    labels.length ? el("p", {}, labels.map(([k, v]) => el("span", { class: "chip" }, `${k}=${v}`)))
      : el("p", { class: "muted" }, "none"),
    el("h3", {}, "Latest metrics"),
    table(["series", "value", "at"], latest, "latest"),
    el("h3", {}, "Completeness"),
    el("p", {}, `${pct(c.completeness_pct)}: ${dash(c.received)} received, `
      + `${dash(c.missing)} missing, ${dash(c.duplicates)} duplicates`),
    table(["boot", "seq", "received", "missing", "complete", "gaps"], (c.boots ?? []).map(bootRow)),
    el("h3", {}, "Series budget"),
    el("p", {}, `${dash(budget.series ?? d.series)} of ${dash(budget.limit)} series, `
      + `${dash(budget.refused_samples)} samples refused`),
    el("h3", {}, "Recent events"),
    el("ul", { class: "events plain" }, (d.events ?? []).map((e) => el("li", {},
      timeEl(e.ts_ms), " ", e.kind === "state" ? badge(e.state) : null, " ", describeEvent(e)))));
  panel.scrollTop = scrolled;  // a refresh keeps the reader's place
}

async function loadDetail() {
  const id = view.detailId;
  if (!id) return;
  try {
    const d = await api(`/api/v1/devices/${encodeURIComponent(id)}`);
    if (id === view.detailId) renderDetail(d);
  } catch (error) {
    if (!(error instanceof ApiError && error.status === 404)) throw error;
    $("detail-body").replaceChildren(
      el("p", {}, el("span", { class: "mono" }, id), " is not known (forgotten?)."));
  }
}

function select(id) {
  for (const row of document.querySelectorAll("#device-rows tr.selected")) {
    row.classList.remove("selected");
  }
  if (id) rowFor(id)?.classList.add("selected");
}

function openDetail(id) {
  view.detailId = id;
  select(id);
  $("detail").hidden = false;
  loadDetail().catch(report);
}

function closeDetail() {
  view.detailId = null;
  select(null);
  $("detail").hidden = true;
}

// --- live updates -------------------------------------------------------------------------

function applyToRow(e) {
  const row = rowFor(e.device_id);
  if (!row || e.kind !== "state") return Boolean(row);
  row.dataset.state = e.state;
  row.cells[1].replaceChildren(badge(e.state));
  const seen = e.reason === "birth" || e.reason === "telemetry";
  // Never back: an event replayed on top of a newer page must not make it older.
  const shownMs = Number(row.cells[4].querySelector("time")?.dataset.ts ?? 0);
  if (seen && e.ts_ms > shownMs) row.cells[4].replaceChildren(timeEl(e.ts_ms));
  row.classList.remove("flash");
  void row.offsetWidth;  // restarts the CSS animation
  row.classList.add("flash");
  return true;
}

function onDeviceEvent(e) {
  view.missed?.push(e);
  const shown = applyToRow(e);
  // On the last page (or the only one) a device not shown, new or newly matching the filters,
  // may now belong: reload it. Full pages of a large fleet would reload all the time.
  if (!shown && !view.nextCursor) soon("devices", 1000, loadDevices);
  if (e.device_id === view.detailId) soon("detail", 300, loadDetail);
  soon("summary", 500, loadSummary);
}

function setLive(state, text) {
  $("live-status").textContent = text;
  $("live-status").dataset.live = state;
}

function connectStream() {
  clearTimeout(view.reconnectTimer);
  view.source?.close();
  const url = new URL("/api/v1/events/stream", location.origin);
  if (token()) url.searchParams.set("access_token", token());
  const source = view.source = new EventSource(url);
  setLive("connecting", "connecting…");
  source.addEventListener("open", () => {
    setLive("open", "live");
    // Events sent while the stream was down are gone: reload what they would have changed.
    soon("reload", 0, reloadAll);
  });
  source.addEventListener("device", (m) => {
    try { onDeviceEvent(JSON.parse(m.data)); } catch (error) { report(error); }
  });
  source.addEventListener("overflow", () => reconnect("fell behind, reloading…"));
  source.addEventListener("error", () => reconnect("stream lost, reconnecting…"));
}

function reconnect(why) {
  view.source?.close();  // EventSource would retry by itself, but without the reload
  view.source = null;
  setLive("down", why);
  clearTimeout(view.reconnectTimer);
  view.reconnectTimer = setTimeout(connectStream, RECONNECT_DELAY_MS);
}

// Refreshes what a device's frames change without an event (see LIVE_POLL_MS). Not over a
// load in flight (a page the user asked for would be superseded by the page shown), and the
// panel is left alone while the user selects text in it.
function refreshLive() {
  if (document.hidden) return;
  if (view.loadedSeq === view.loadSeq) loadDevices().catch(report);
  const selection = document.getSelection();
  const selecting = selection && !selection.isCollapsed
    && $("detail").contains(selection.anchorNode);
  if (!selecting) loadDetail().catch(report);
}

async function reloadAll() {
  await Promise.all([loadDevices(), loadSummary(), loadDetail()]);
}

// --- auth ---------------------------------------------------------------------------------

function showAuth(show) {
  $("auth").hidden = !show;
  if (show) $("token-input").focus();
}

function useToken(value) {
  if (value) localStorage.setItem(TOKEN_KEY, value);
  else localStorage.removeItem(TOKEN_KEY);
  $("token-input").value = "";
  showAuth(false);
  connectStream();
  reloadAll().catch(report);
  loadPipeline().catch(report);
}

// --- wiring -------------------------------------------------------------------------------

const firstPage = () => loadDevices(null, 1).catch(report);

function init() {
  const filters = $("filters");
  filters.addEventListener("submit", (e) => e.preventDefault());
  filters.addEventListener("change", firstPage);
  let typing = null;
  filters.elements.q.addEventListener("input", () => {
    clearTimeout(typing);
    typing = setTimeout(firstPage, 300);
  });
  $("next-page").addEventListener("click",
    () => loadDevices(view.nextCursor, view.page + 1).catch(report));
  $("first-page").addEventListener("click", firstPage);

  const rows = $("device-rows");
  const rowId = (e) => e.target.closest("tr[data-device-id]")?.dataset.deviceId;
  rows.addEventListener("click", (e) => { const id = rowId(e); if (id) openDetail(id); });
  rows.addEventListener("keydown", (e) => {
    const id = rowId(e);
    if (id && e.key === "Enter") openDetail(id);
  });
  $("detail-close").addEventListener("click", closeDetail);
  document.addEventListener("keydown", (e) => { if (e.key === "Escape") closeDetail(); });

  $("auth-form").addEventListener("submit", (e) => {
    e.preventDefault();
    useToken($("token-input").value.trim());
  });
  $("token-clear").addEventListener("click", () => useToken(""));

  connectStream();
  reloadAll().catch(report);
  loadPipeline().catch(report);
  setInterval(refreshTimes, 1000);
  setInterval(refreshLive, LIVE_POLL_MS);
  document.addEventListener("visibilitychange", refreshLive);
  setInterval(() => loadPipeline().catch(report), PIPELINE_POLL_MS);
  setInterval(() => loadSummary().catch(report), SUMMARY_POLL_MS);
}

init();
