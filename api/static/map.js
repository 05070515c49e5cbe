// The fleet map page. Every data call carries the operator's API key (entered once, kept in this
// browser); live movement comes over the /v1/live WebSocket, filtered to the visible box.
"use strict";
(() => {
  const STATES = ["riding", "parked", "locked", "low_battery", "offline", "maintenance"];
  const LABELS = { riding: "riding", parked: "parked", locked: "locked", low_battery: "low battery",
    offline: "offline", maintenance: "in maintenance" };
  const RIDING_KMH = 3;        // faster than this is a ride, not GPS jitter
  const LOW_BATTERY_PCT = 20;
  const ZONE_STYLE = {
    service_area: { color: "#2b6cb0", weight: 2, fillOpacity: 0.03, dashArray: "6 4" },
    slow: { color: "#e6a700", weight: 1, fillOpacity: 0.18 },
    no_parking: { color: "#d62728", weight: 1, fillOpacity: 0.15 },
    no_ride: { color: "#6a3d9a", weight: 1, fillOpacity: 0.2 },
  };
  const KEY_NAME = "fleet.apiKey";
  const TERMINAL = new Set(["confirmed", "rejected", "failed", "expired", "superseded", "canceled"]);
  const $ = (id) => document.getElementById(id);

  // -- the key -----------------------------------------------------------------------------------
  function takeKeyFromUrl() {
    const match = /(?:^|[#&])key=([^&]+)/.exec(location.hash);
    if (!match) return;
    localStorage.setItem(KEY_NAME, decodeURIComponent(match[1]));
    history.replaceState(null, "", location.pathname + location.search);  // not left in the address bar
  }
  const apiKey = () => sessionStorage.getItem(KEY_NAME) || localStorage.getItem(KEY_NAME);

  function askForKey(message) {
    $("key-error").textContent = message || "";
    const dialog = $("key-dialog");
    if (!dialog.open) dialog.showModal();
  }

  $("key-form").addEventListener("submit", () => {
    const key = $("key-input").value.trim();
    const store = $("key-remember").checked ? localStorage : sessionStorage;
    localStorage.removeItem(KEY_NAME); sessionStorage.removeItem(KEY_NAME);
    store.setItem(KEY_NAME, key);
    start();
  });
  $("forget").addEventListener("click", () => {
    localStorage.removeItem(KEY_NAME); sessionStorage.removeItem(KEY_NAME);
    location.reload();
  });

  class HttpError extends Error {
    constructor(status, detail) { super(detail); this.status = status; }
  }

  async function api(path, options = {}) {
    const headers = { Authorization: `Bearer ${apiKey()}`, ...(options.headers || {}) };
    if (options.body) headers["Content-Type"] = "application/json";
    const response = await fetch(path, { ...options, headers });
    const body = await response.json().catch(() => null);
    if (!response.ok) {
      const detail = body && body.detail ? (typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail))
        : response.statusText;
      if (response.status === 401) askForKey(detail);
      throw new HttpError(response.status, detail);
    }
    return body;
  }

  // -- the map -------------------------------------------------------------------------------------
  const map = L.map("map", { zoomControl: true, minZoom: 2, maxZoom: 19 })  // markercluster needs a maxZoom without tiles
   .setView([48.137, 11.575], 13);
  const zonesLayer = L.layerGroup().addTo(map);
  const trackLayer = L.layerGroup().addTo(map);
  const clusters = L.markerClusterGroup({ chunkedLoading: true, disableClusteringAtZoom: 17, maxClusterRadius: 50,
    showCoverageOnHover: false, spiderfyOnMaxZoom: true });
  map.addLayer(clusters);
  const vehicles = new Map();  // id → { marker, props, state }
  let maintenance = new Set();
  let selected = null;
  let role = null;
  let features = {};

  $("legend").innerHTML = STATES.map((s) => `<span><i class="dot s-${s}"></i>${LABELS[s]}</span>`).join("");

  function stateOf(props, id) {
    if (maintenance.has(id)) return "maintenance";
    if (props.online === false) return "offline";
    if ((props.speed_kmh || 0) > RIDING_KMH) return "riding";
    if (typeof props.battery_pct === "number" && props.battery_pct < LOW_BATTERY_PCT) return "low_battery";
    if (props.locked) return "locked";
    return "parked";
  }

  const escapeHtml = (text) => String(text).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);

  function icon(id, state) {
    const chosen = selected === id ? " selected" : "";
    return L.divIcon({ className: `veh s-${state}${chosen}`, iconSize: [16, 16],
      html: `<span class="hit" data-vehicle="${escapeHtml(id)}" data-state="${state}"
        style="display:block;width:100%;height:100%"></span>` });
  }

  function upsert(id, lon, lat, props) {
    let entry = vehicles.get(id);
    if (!entry) {
      entry = { props: {}, state: null, marker: L.marker([lat, lon], { title: id, keyboard: true }) };
      entry.marker.on("click", () => select(id));
      vehicles.set(id, entry);
      Object.assign(entry.props, props);
      entry.state = stateOf(entry.props, id);
      entry.marker.setIcon(icon(id, entry.state));
      clusters.addLayer(entry.marker);
      return entry;
    }
    Object.assign(entry.props, props);
    const before = entry.marker.getLatLng();
    if (before.lat !== lat || before.lng !== lon) { moves.set(id, [lat, lon]); scheduleMoves(); }
    const state = stateOf(entry.props, id);
    if (state !== entry.state) { entry.state = state; entry.marker.setIcon(icon(id, state)); }
    if (selected === id) showFacts(id);
    return entry;
  }

  // Markers are moved in bulk, out of the cluster group and back, between zoom animations: moving
  // one inside the group while it animates breaks markercluster's bookkeeping.
  const moves = new Map();  // id → [lat, lon]
  const MOVE_EVERY_MS = 500;
  let zooming = false;
  let moveTimer = null;
  map.on("zoomstart", () => { zooming = true; });
  map.on("zoomend", () => { zooming = false; scheduleMoves(); });

  function scheduleMoves() {
    if (moveTimer === null) moveTimer = setTimeout(applyMoves, MOVE_EVERY_MS);
  }

  function applyMoves() {
    moveTimer = null;
    if (zooming || !moves.size) return;
    const markers = [...moves.keys()].map((id) => vehicles.get(id).marker);
    clusters.removeLayers(markers);
    for (const [id, latLng] of moves) vehicles.get(id).marker.setLatLng(latLng);
    clusters.addLayers(markers);
    moves.clear();
  }

  function counts() {
    const byState = {};
    for (const { state } of vehicles.values()) byState[state] = (byState[state] || 0) + 1;
    $("fleet-counts").textContent = `${vehicles.size} vehicles: ` +
      STATES.filter((s) => byState[s]).map((s) => `${byState[s]} ${LABELS[s]}`).join(", ");
  }

  async function loadVehicles(fit) {
    const [collection, inMaintenance] = await Promise.all([api("/v1/vehicles"), api("/v1/map/maintenance")]);
    maintenance = new Set(inMaintenance);
    for (const f of collection.features) {
      const [lon, lat] = f.geometry.coordinates;
      upsert(f.id, lon, lat, f.properties);
    }
    counts();
    if (fit && collection.features.length) {
      map.fitBounds(L.latLngBounds(collection.features.map((f) => [f.geometry.coordinates[1], f.geometry.coordinates[0]])),
        { padding: [30, 30], maxZoom: 16 });
    }
  }

  async function loadZones() {
    const collection = await api("/v1/zones");
    zonesLayer.clearLayers();
    L.geoJSON(collection, {
      style: (f) => ZONE_STYLE[f.properties.kind] || { color: "#555", weight: 1, fillOpacity: 0.1 },
      onEachFeature: (f, layer) => layer.bindTooltip(`${f.properties.name || f.id} (${f.properties.kind})`),
      interactive: true,
    }).addTo(zonesLayer);
    return collection;
  }

  async function loadTiles() {
    const config = await fetch("/map/config.json").then((r) => r.json());
    if (config.tiles_url) {
      L.tileLayer(config.tiles_url, { attribution: config.tiles_attribution || "", maxZoom: 19 }).addTo(map);
    }
  }

  // -- one vehicle ---------------------------------------------------------------------------------
  const when = (iso) => (iso ? new Date(iso).toLocaleTimeString() : "—");

  function showFacts(id) {
    const entry = vehicles.get(id);
    if (!entry) return;
    const p = entry.props;
    $("vehicle-state").innerHTML = `<i class="dot s-${entry.state}"></i> ${LABELS[entry.state]}`;
    const rows = [
      ["speed", p.speed_kmh == null ? "—" : `${Math.round(p.speed_kmh)} km/h`],
      ["battery", p.battery_pct == null ? "—" : `${Math.round(p.battery_pct)} %`],
      ["locked", p.locked == null ? "—" : p.locked ? "yes" : "no"],
      ["online", p.online == null ? "—" : p.online ? "yes" : "no"],
      ["faults", (p.faults || []).join(", ") || "none"],
      ["reported", p.device_time ? when(p.device_time) : p.ts ? new Date(p.ts * 1000).toLocaleTimeString() : "—"],
    ];
    $("vehicle-facts").innerHTML = rows.map(([k, v]) => `<dt>${k}</dt><dd>${escapeHtml(v)}</dd>`).join("");
  }

  async function select(id) {
    const previous = selected;
    selected = id;
    for (const other of [previous, id]) {
      const entry = other && vehicles.get(other);
      if (entry) entry.marker.setIcon(icon(other, entry.state));
    }
    $("vehicle").hidden = false;
    $("vehicle-id").textContent = id;
    $("command-status").textContent = "";
    $("command-status").className = "";
    $("vehicle-actions").hidden = !(role === "operator" || role === "admin");
    openPanel(true);
    showFacts(id);
    await Promise.all([showTrack(id), showCommands(id), showSubscription(id)]);
  }

  $("vehicle-close").addEventListener("click", () => {
    const previous = selected;
    selected = null;
    $("vehicle").hidden = true;
    trackLayer.clearLayers();
    const entry = previous && vehicles.get(previous);
    if (entry) entry.marker.setIcon(icon(previous, entry.state));
  });

  async function showTrack(id) {
    trackLayer.clearLayers();
    const track = await api(`/v1/map/track/${encodeURIComponent(id)}?minutes=60`);
    if (selected !== id) return;
    if (!track.geometry) { $("track-note").textContent = "No positions in the last hour."; return; }
    const line = track.geometry.coordinates.map(([lon, lat]) => [lat, lon]);
    L.polyline(line, { color: "#111", weight: 3, opacity: 0.6 }).addTo(trackLayer);
    $("track-note").textContent = `Track: ${track.properties.points} positions since ${when(track.properties.from)}.`;
  }

  function commandLine(c) {
    const detail = c.detail ? ` — ${escapeHtml(c.detail)}` : "";
    return `<li data-command="${escapeHtml(c.id)}"><b>${escapeHtml(c.action)}</b> ${escapeHtml(c.state)}${detail}` +
      `<small>${when(c.created_at)} by ${escapeHtml(c.requested_by)}</small></li>`;
  }

  let shownCommands = [];  // the selected vehicle's last commands, as listed

  function renderCommands() {
    $("commands").innerHTML = shownCommands.length ? shownCommands.map(commandLine).join("") : "<li>none yet</li>";
  }

  async function showCommands(id) {
    const list = await api(`/v1/devices/${encodeURIComponent(id)}/commands?limit=5`);
    if (selected !== id) return;
    shownCommands = list;
    renderCommands();
  }

  // Subscriptions are a separate feature: the server says whether its route exists. Without it (or
  // without a subscription for this vehicle) this shows nothing.
  async function showSubscription(id) {
    $("subscription").hidden = true;
    if (!features.subscription_route) return;
    const path = features.subscription_route.replace("{device_id}", encodeURIComponent(id));
    try {
      const sub = await api(path);
      if (selected !== id || !sub || !sub.subscription) return;  // on no subscription: nothing to show
      const s = sub.subscription;
      const rows = { status: s.status, plan: s.plan_id, payment: s.payment_state, ends: s.period_end,
        "locked by policy": sub.locked_by_policy ? "yes" : "no", "unlock refused": sub.unlock_refused };
      $("subscription-body").innerHTML = Object.entries(rows)
        .filter(([, v]) => v !== null && v !== undefined)
        .map(([k, v]) => `<div><span class="note">${escapeHtml(k)}</span> ${escapeHtml(v)}</div>`).join("");
      $("subscription").hidden = false;
    } catch (err) {
      if (!(err instanceof HttpError && err.status === 404)) throw err;
    }
  }

  // -- commands ------------------------------------------------------------------------------------
  let following = null;  // the command whose transitions the status line shows

  function commandStatus(c) {
    const el = $("command-status");
    const waits = { queued: "queued", waiting_for_park: "waiting for the vehicle to park", sent: "sent, waiting for the device",
      delivered: "delivered, waiting for the vehicle to confirm" };
    const text = c.state === "confirmed" ? `${c.action} confirmed` : waits[c.state] || `${c.action} ${c.state}`;
    el.textContent = `${text}${c.detail ? ` (${c.detail})` : ""}`;
    el.className = c.state === "confirmed" ? "done" : TERMINAL.has(c.state) ? "refused" : "";
    el.dataset.state = c.state;
    const listed = shownCommands.find((s) => s.id === c.id);
    if (listed) { Object.assign(listed, { state: c.state, detail: c.detail || "" }); renderCommands(); }
  }

  async function command(action) {
    const id = selected;
    if (!id) return;
    for (const b of document.querySelectorAll(".action")) b.disabled = true;
    try {
      const c = await api(`/v1/devices/${encodeURIComponent(id)}/commands`, {
        method: "POST", body: JSON.stringify({ action, reason: "operator" }) });
      following = c.id;
      commandStatus(c);
      pollCommand(c.id, id);
      await showCommands(id);
    } catch (err) {
      const el = $("command-status");
      el.textContent = err instanceof HttpError ? `refused (${err.status}): ${err.message}` : String(err);
      el.className = "refused";
      el.dataset.state = "refused";
    } finally {
      for (const b of document.querySelectorAll(".action")) b.disabled = false;
    }
  }
  $("lock").addEventListener("click", () => command("lock"));
  $("unlock").addEventListener("click", () => command("unlock"));

  function onTransition(t) {
    if (t.device_id === selected) showCommands(selected).catch(report);
    if (t.id === following) {
      commandStatus({ id: t.id, action: t.action, state: t.to, detail: t.detail });
      if (TERMINAL.has(t.to)) following = null;
    }
  }

  // Live transitions drive the status line; this slower poll catches any the socket missed.
  async function pollCommand(commandId, deviceId) {
    while (following === commandId) {
      await new Promise((r) => setTimeout(r, 2000));
      if (following !== commandId) return;
      const c = await api(`/v1/commands/${commandId}`);
      if (following !== commandId) return;
      commandStatus(c);
      if (TERMINAL.has(c.state)) { following = null; if (selected === deviceId) await showCommands(deviceId); }
    }
  }

  // -- the fleet panel ------------------------------------------------------------------------------
  function alarmLine(e) {
    const what = e.violation === "theft_suspected" ? "theft alarm" : e.violation || e.kind;
    const where = e.zone_id ? ` in ${escapeHtml(e.zone_id)}` : "";
    return `<li><b>${escapeHtml(what)}</b> ${escapeHtml(e.device_id)}${where}<small>${when(e.time)}</small></li>`;
  }

  async function loadAlarms() {
    const events = await api("/v1/events?kind=violation&limit=20");
    $("alarms").innerHTML = events.length ? events.map(alarmLine).join("") : "<li>none in view</li>";
  }

  function onEvent(e) {
    if (e.kind !== "violation") return;
    const list = $("alarms");
    if (list.firstElementChild && !list.firstElementChild.querySelector("b")) list.innerHTML = "";
    list.insertAdjacentHTML("afterbegin", alarmLine(e));
    while (list.children.length > 20) list.lastElementChild.remove();
  }

  let chart = null;
  async function loadUtilization() {
    const u = await api("/v1/utilization?bucket=hour");
    const xs = u.buckets.map((b) => Date.parse(b.start) / 1000);
    const ys = u.buckets.map((b) => (b.utilization == null ? null : Math.round(b.utilization * 1000) / 10));
    const width = Math.max(240, Math.min(330, window.innerWidth - 30));
    if (chart) chart.destroy();
    chart = new uPlot({ width, height: 150, legend: { show: false },
      scales: { y: { range: [0, 100] } },
      axes: [{}, { values: (_u, ticks) => ticks.map((t) => `${t}%`), size: 54 }],
      series: [{}, { label: "utilization", stroke: "#1f77d0", fill: "#1f77d022", width: 2, spanGaps: true }],
    }, [xs, ys], $("utilization"));
  }

  function openPanel(open) {
    $("panel").classList.toggle("open", open);
    $("panel-toggle").setAttribute("aria-expanded", String(open));
  }
  $("panel-toggle").addEventListener("click", () => openPanel(!$("panel").classList.contains("open")));

  $("find").addEventListener("submit", (event) => {
    event.preventDefault();
    focusVehicle($("find-id").value.trim());
  });

  function focusVehicle(id) {
    const entry = vehicles.get(id);
    if (!entry) { $("find-id").setCustomValidity("no such vehicle on the map"); $("find-id").reportValidity(); return; }
    $("find-id").setCustomValidity("");
    clusters.zoomToShowLayer(entry.marker, () => map.panTo(entry.marker.getLatLng()));
  }

  // -- live updates ----------------------------------------------------------------------------------
  let socket = null;
  let retryMs = 1000;

  function viewBox() {
    const b = map.getBounds().pad(0.5);  // a margin, so a vehicle leaving the view is seen leaving
    const clamp = (v, lo, hi) => Math.max(lo, Math.min(hi, v));
    return [clamp(b.getWest(), -180, 180), clamp(b.getSouth(), -90, 90), clamp(b.getEast(), -180, 180),
      clamp(b.getNorth(), -90, 90)];
  }

  function connect() {
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    socket = new WebSocket(`${scheme}://${location.host}/v1/live`);
    socket.onopen = () => socket.send(JSON.stringify({ key: apiKey(), bbox: viewBox() }));
    socket.onmessage = (message) => {
      const update = JSON.parse(message.data);
      if (update.type !== "update") return;
      retryMs = 1000;
      $("live-status").textContent = "live";
      $("live-status").className = "pill live";
      for (const v of update.vehicles) upsert(v.id, v.lon, v.lat, { ...v, online: true });
      for (const e of update.events) (e.type === "command" ? onTransition : onEvent)(e);
      if (update.vehicles.length) counts();
    };
    socket.onclose = (event) => {
      $("live-status").textContent = "offline";
      $("live-status").className = "pill";
      if (event.code === 4401) { askForKey("The live feed refused the key."); return; }
      setTimeout(connect, retryMs);
      retryMs = Math.min(retryMs * 2, 30000);
    };
  }

  let boxTimer = null;
  map.on("moveend", () => {
    clearTimeout(boxTimer);
    boxTimer = setTimeout(() => {
      if (socket && socket.readyState === WebSocket.OPEN) socket.send(JSON.stringify({ bbox: viewBox() }));
    }, 300);
  });

  function report(err) {
    if (err instanceof HttpError) return;  // shown where it happened (key dialog, status line)
    console.error(err);
  }

  // -- start ---------------------------------------------------------------------------------------
  async function start() {
    if (!apiKey()) { askForKey(); return; }
    try {
      const me = await api("/v1/me");
      role = me.role;
      $("whoami").textContent = `${me.name} (${me.role})`;
      features = await api("/v1/map/features");
      $("key-dialog").open && $("key-dialog").close();
      await loadTiles();
      const zones = await loadZones();
      await loadVehicles(true);
      if (!vehicles.size && zones.features.length) map.fitBounds(L.geoJSON(zones).getBounds());
      connect();
      await Promise.all([loadUtilization(), loadAlarms()]);
      setInterval(() => loadVehicles(false).catch(report), 60000);  // online and maintenance change without a position
      setInterval(() => loadUtilization().catch(report), 300000);
    } catch (err) {
      report(err);
    }
  }

  window.fleetMap = { map, vehicles, focus: focusVehicle, select };
  takeKeyFromUrl();
  start();
})();
