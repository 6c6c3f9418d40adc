// The status page: polls /status.json and fills the page. Read-only.
// Every value is written with textContent (never as HTML), so nothing a device sends can
// become markup.
"use strict";

const POLL_MS = 2000;
const SVG = "http://www.w3.org/2000/svg";

// Characters that change how the text around them reads without being seen themselves:
// bidirectional embeddings, overrides and isolates, marks, zero-width characters, line and
// paragraph separators, and control characters. A device id "\u202eGNP.exe" would read
// "exe.PNG"; "PATDEV1\u200b" would look like "PATDEV1".
const INVISIBLE = /[\u0000-\u001f\u007f-\u009f\u061c\u200b-\u200f\u2028-\u202e\u2060-\u2069\ufeff]/g;

// The nodes showing `text` with every invisible character replaced by a visible marker
// (⟨U+202E⟩ in a highlighted span). Text only: never parsed as HTML.
function visibleNodes(text) {
  const nodes = [];
  let last = 0;
  for (const m of text.matchAll(INVISIBLE)) {
    if (m.index > last) {
      nodes.push(document.createTextNode(text.slice(last, m.index)));
    }
    const mark = document.createElement("span");
    mark.className = "invisible-char";
    mark.textContent = "⟨U+" + m[0].codePointAt(0).toString(16).toUpperCase().padStart(4, "0") + "⟩";
    mark.title = "an invisible character in the data";
    nodes.push(mark);
    last = m.index + m[0].length;
  }
  if (last < text.length || nodes.length === 0) {
    nodes.push(document.createTextNode(text.slice(last)));
  }
  return nodes;
}

function show(el, value) {
  el.replaceChildren(...visibleNodes(value === null || value === undefined ? "–" : String(value)));
}

function setText(id, value) {
  const el = document.getElementById(id);
  if (el) {
    show(el, value);
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
      show(td, cell);
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
    show(li, r);
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
    (u.last_error ? u.last_error.kind + ": " + u.last_error.message + " (" + when(u.last_error.at, now) + ")" : "none")
      + (Object.keys(u.auth_failures || {}).length
        ? "; authorization failures: " + Object.entries(u.auth_failures).map(([c, n]) => c + " " + n).join(", ")
        : ""),
  ]);
  const devices = s.devices.slice().sort((a, b) => (a.last_reading < b.last_reading ? 1 : -1));
  const offset = (d) => (d.clock_offset_ms === null || d.clock_offset_ms === undefined
    ? "–"
    : (d.clock_offset_ms / 1000).toFixed(1) + " s" + (d.clock_drifting ? " (drifting)" : ""));
  fillTable("devices", devices, (d) => [
    d.id,
    d.id_kind,
    d.profile,
    d.source,
    when(d.last_reading, now),
    (d.metrics || []).map((m) => m.metric + " " + duration((now - new Date(m.last_reading)) / 1000) + " ago").join(", "),
    d.readings,
    d.unbound,
    d.time_flagged,
    offset(d),
  ]);
  setText("devices-note", s.devices_not_shown > 0
    ? s.devices_not_shown + " devices not heard from recently are not shown."
    : s.devices.length + " devices heard from since the gateway started.");
  fillTable("sources", s.sources, (c) => [c.source, c.profile, c.readings]);
  fillTable("rejected", s.payloads_dead_lettered, (r) => [r.source, r.count]);
  fillTable("refused", s.readings_refused, (r) => [r.source, r.check, r.count]);
  fillTable("certificates", s.certificates, (c) => c.error
    ? [c.usage + " (" + c.path + ")", "cannot read: " + c.error, "–", "–", "unreadable"]
    : [c.usage + " (" + c.path + ")", c.subject, new Date(c.not_after).toLocaleString(), c.days_left, c.problem || "ok"]);
  setText("tls-failures", s.tls_failures + ((s.tls_failures_by_cause || []).length
    ? " (" + s.tls_failures_by_cause.map((t) => t.peer + " " + t.cause + ": " + t.count).join(", ") + ")"
    : ""));
  if (s.profiles) {
    setText("profiles-pack", s.profiles.pack || "none installed: the built-in profiles");
    setText("profiles-vendor", s.profiles.vendor_profiles.join(", ") || "none");
    setText("profiles-loaded", when(s.profiles.loaded_at, now));
    setText("profiles-error", s.profiles.error || "none");
  }
  if (s.history) {
    chart(s.history);
  }
  setText("audit-log", s.audit_log || "not written");
  setText("updated", new Date().toLocaleTimeString());
}

function svg(name, attributes) {
  const el = document.createElementNS(SVG, name);
  for (const [k, v] of Object.entries(attributes)) {
    el.setAttribute(k, String(v));
  }
  return el;
}

// The last hour as lines: readings in and out per step (left scale) and queue depth (right
// scale), built with DOM calls (no markup, no inline style).
function chart(history) {
  const box = document.getElementById("history-chart");
  if (!box) {
    return;
  }
  const points = history.points;
  const W = 600, H = 160, PAD = 30;
  const root = svg("svg", { viewBox: "0 0 " + W + " " + H, role: "img", class: "chart" });
  const title = svg("title", {});
  title.textContent = "Readings in and out per " + history.step_s + " s, and queue depth, over the last hour";
  root.append(title);
  root.append(svg("line", { x1: PAD, y1: H - PAD, x2: W - PAD, y2: H - PAD, class: "axis" }));
  if (points.length < 2) {
    const t = svg("text", { x: W / 2, y: H / 2, "text-anchor": "middle", class: "label" });
    t.textContent = "collecting: a point every " + history.step_s + " s";
    root.append(t);
    box.replaceChildren(root);
    return;
  }
  const flow = Math.max(1, ...points.map((p) => Math.max(p.in, p.out)));
  const depth = Math.max(1, ...points.map((p) => p.queue || 0));
  const x = (i) => PAD + (i * (W - 2 * PAD)) / (points.length - 1);
  const y = (v, max) => H - PAD - (v * (H - 2 * PAD)) / max;
  const line = (pick, max, cls) => svg("polyline", {
    points: points.map((p, i) => x(i).toFixed(1) + "," + y(pick(p) || 0, max).toFixed(1)).join(" "),
    class: "series " + cls,
  });
  root.append(line((p) => p.in, flow, "in"), line((p) => p.out, flow, "out"), line((p) => p.queue, depth, "queue"));
  const label = (text, lx, ly, cls) => {
    const t = svg("text", { x: lx, y: ly, class: "label " + cls });
    t.textContent = text;
    return t;
  };
  root.append(
    label("in " + points[points.length - 1].in, PAD, 14, "in"),
    label("out " + points[points.length - 1].out, PAD + 90, 14, "out"),
    label("queue " + (points[points.length - 1].queue ?? "–") + " (max " + depth + ")", PAD + 180, 14, "queue"),
    label("max " + flow + " per " + history.step_s + " s", W - PAD - 130, 14, ""),
    label("1 h ago", PAD, H - 8, ""),
    label("now", W - PAD - 20, H - 8, ""),
  );
  box.replaceChildren(root);
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
