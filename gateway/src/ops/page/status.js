// The status page: polls /status.json and fills the page. Read-only.
// Every value is written with textContent (never as HTML), so nothing a device sends can
// become markup.
"use strict";

const POLL_MS = 2000;

function setText(id, value) {
  const el = document.getElementById(id);
  if (el) {
    el.textContent = value === null || value === undefined ? "–" : String(value);
  }
}

function duration(seconds) {
  if (seconds === null || seconds === undefined) {
    return "–";
  }
  const s = Math.max(0, Math.round(seconds));
  if (s < 120) {
    return s + " s";
  }
  if (s < 7200) {
    return Math.round(s / 60) + " min";
  }
  if (s < 172800) {
    return Math.floor(s / 3600) + " h " + Math.round((s % 3600) / 60) + " min";
  }
  return Math.round(s / 86400) + " days";
}

function when(iso, now) {
  if (!iso) {
    return "–";
  }
  const t = new Date(iso);
  return t.toLocaleString() + " (" + duration((now - t) / 1000) + " ago)";
}

function fillTable(id, rows, cells) {
  const body = document.querySelector("#" + id + " tbody");
  if (!body) {
    return;
  }
  const trs = rows.map((row) => {
    const tr = document.createElement("tr");
    for (const cell of cells(row)) {
      const td = document.createElement("td");
      td.textContent = cell === null || cell === undefined ? "–" : String(cell);
      tr.append(td);
    }
    return tr;
  });
  if (trs.length === 0) {
    const tr = document.createElement("tr");
    const td = document.createElement("td");
    td.colSpan = document.querySelectorAll("#" + id + " thead th").length;
    td.textContent = "none yet";
    td.className = "empty";
    tr.append(td);
    trs.push(tr);
  }
  body.replaceChildren(...trs);
}

function render(s) {
  const now = new Date(s.time);
  setText("gateway-id", s.gateway.id);
  setText("gateway-version", s.gateway.version);
  setText("gateway-uptime", duration(s.gateway.uptime_s));
  setText("uplink-destination", s.gateway.uplink);
  const readiness = document.getElementById("readiness");
  readiness.textContent = s.ready.ready ? "Ready" : "Not ready";
  readiness.className = s.ready.ready ? "ok" : "bad";
  const reasons = document.getElementById("readiness-reasons");
  reasons.replaceChildren(...s.ready.reasons.map((r) => {
    const li = document.createElement("li");
    li.textContent = r;
    return li;
  }));

  if (s.queue.error) {
    setText("queue-pending", "cannot read: " + s.queue.error);
  } else {
    setText("queue-pending", s.queue.pending);
    setText("queue-capacity", s.queue.capacity);
    setText("queue-oldest", s.queue.oldest_age_s === null ? "queue empty" : duration(s.queue.oldest_age_s));
    setText("queue-leased", s.queue.leased);
    setText("queue-dead-letters", s.queue.dead_letters);
    setText("queue-unbound", s.queue.unbound === 0
      ? "none"
      : s.queue.unbound + ": never sent; release with `vitalbridge devices bind`");
  }
  const storage = s.buffer.storage;
  if (storage) {
    setText("buffer-storage", storage.failing
      ? "writes failing since " + when(storage.failing.since, now) + " (" + storage.failing.kind + "): nothing is acknowledged"
      : "ok");
    const mib = (b) => (b === null || b === undefined ? "–" : (b / 1048576).toFixed(1) + " MiB");
    setText("buffer-free", mib(storage.free_bytes) + " (floor " + mib(storage.floor_bytes) + ")"
      + (storage.low_space ? ": new readings refused" : ""));
    setText("buffer-quarantined", storage.quarantined === 0
      ? "none"
      : storage.quarantined + " in data_dir/quarantine: recover with `vitalbridge queue salvage`");
  }

  fillTable("uplinks", s.uplinks, (u) => [
    u.name,
    u.pending === null || u.pending === undefined ? "–" : u.pending,
    u.state,
    u.delivered,
    u.retries,
    u.dead_lettered,
    when(u.last_delivery, now),
    u.failing_since ? when(u.failing_since, now) : "not failing",
    u.last_error ? u.last_error.kind + ": " + u.last_error.message + " (" + when(u.last_error.at, now) + ")" : "none",
  ]);
  const devices = s.devices.slice().sort((a, b) => (a.last_reading < b.last_reading ? 1 : -1));
  const offset = (d) => (d.clock_offset_ms === null || d.clock_offset_ms === undefined
    ? "–"
    : (d.clock_offset_ms / 1000).toFixed(1) + " s" + (d.clock_drifting ? " (drifting)" : ""));
  fillTable("devices", devices, (d) => [d.id, d.id_kind, d.profile, d.source, when(d.last_reading, now), d.readings,
    d.unbound, d.time_flagged, offset(d)]);
  setText("devices-note", s.devices_not_shown > 0
    ? s.devices_not_shown + " devices not heard from recently are not shown."
    : s.devices.length + " devices heard from since the gateway started.");
  fillTable("sources", s.sources, (c) => [c.source, c.profile, c.readings]);
  fillTable("rejected", s.payloads_dead_lettered, (r) => [r.source, r.count]);
  fillTable("refused", s.readings_refused, (r) => [r.source, r.check, r.count]);
  fillTable("certificates", s.certificates, (c) => c.error
    ? [c.usage + " (" + c.path + ")", "cannot read: " + c.error, "–", "–", "unreadable"]
    : [c.usage + " (" + c.path + ")", c.subject, new Date(c.not_after).toLocaleString(), c.days_left, c.problem || "ok"]);
  setText("tls-failures", s.tls_failures);
  setText("audit-log", s.audit_log || "not written");
  setText("updated", new Date().toLocaleTimeString());
}

async function refresh() {
  try {
    const response = await fetch("/status.json", { cache: "no-store" });
    if (!response.ok) {
      throw new Error("HTTP " + response.status);
    }
    render(await response.json());
  } catch (e) {
    const readiness = document.getElementById("readiness");
    readiness.textContent = "Cannot reach the gateway: " + e.message;
    readiness.className = "bad";
  }
}

refresh();
setInterval(refresh, POLL_MS);
