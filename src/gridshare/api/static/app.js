// gridshare live dashboard: plain JS, no build step. Reads the REST API once, then follows
// GET /api/v1/stream (server-sent events `site`, `chargers`, `alarm`) without reloading,
// and reconnects when the server comes back. Every value shown comes from the API.
"use strict";

(function () {
  const API = "/api/v1";
  const TOKEN_KEY = "gridshare.token";
  const WARN_AT = 0.9; // amber from 90 % of a limit, red above 100 %
  const PHASES = ["L1", "L2", "L3"];
  const MAX_ALARMS = 100;
  const MAX_SESSIONS = 100;

  const state = {
    site: null,            // GET /api/v1/site
    chargers: [],          // GET /api/v1/chargers .chargers
    byId: new Map(),
    alarms: [],            // newest first
    sessions: null,        // GET /api/v1/sessions .sessions (null: not loaded)
    sessionsProblem: "",   // why there is no session history (e.g. --db none)
    extras: {},            // frequency response, once the server has it
    dr: [],                // GET /api/v1/dr/events .events
    drZones: [],           // GET /api/v1/zones .zones (live load per zone)
    lastUpdate: null,
    readNeedsToken: false, // a read was refused without a token (api: {read_token: true})
    pending: null,         // GET /api/v1/pending (null: not loaded, or an older server)
  };
  const dirty = { site: true, chargers: true, alarms: true, sessions: true, extras: true,
                  pending: true };
  // Counters for tests and benchmarks; the page never reads them.
  const probe = { renders: 0, events: 0, connects: 0, lastRenderAt: 0, received: {},
                  parseMs: 0, renderMs: 0 };
  window.gridshare = probe;

  // ---------------------------------------------------------------- helpers

  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    if (attrs) {
      for (const [k, v] of Object.entries(attrs)) {
        if (v === null || v === undefined || v === false) continue;
        if (k === "class") el.className = v;
        else if (k === "text") el.textContent = v;
        else if (k === "style") el.style.cssText = v;
        else el.setAttribute(k, v === true ? "" : String(v));
      }
    }
    for (const c of children.flat()) {
      if (c === null || c === undefined || c === false) continue;
      el.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return el;
  }

  const $ = (id) => document.getElementById(id);
  const isNum = (x) => typeof x === "number" && Number.isFinite(x);

  function fmt(x, digits) {
    if (!isNum(x)) return "–";
    const d = digits === undefined ? (Math.abs(x) >= 100 ? 0 : 1) : digits;
    return x.toFixed(d);
  }

  function fmtTime(iso) {
    if (!iso) return "";
    const d = new Date(iso);
    if (Number.isNaN(d.getTime())) return String(iso);
    const sameDay = d.toDateString() === new Date().toDateString();
    return sameDay ? d.toLocaleTimeString() : d.toLocaleString();
  }

  function token() {
    try { return localStorage.getItem(TOKEN_KEY) || ""; } catch (e) { return ""; }
  }

  class HttpError extends Error {
    constructor(status, body) {
      super(problemText(status, body));
      this.status = status;
      this.body = body;
    }
  }

  async function getJSON(path) {
    const headers = { Accept: "application/json" };
    const t = token();
    if (t) headers.Authorization = "Bearer " + t;
    const r = await fetch(path, { headers, cache: "no-store" });
    let body = null;
    try { body = await r.json(); } catch (e) { body = null; }
    if (!r.ok) {
      if (r.status === 401) state.readNeedsToken = true;
      throw new HttpError(r.status, body);
    }
    return body;
  }

  function problemText(status, body) {
    if (body && typeof body === "object") {
      if (typeof body.detail === "string" && body.detail) return body.detail;
      if (Array.isArray(body.errors) && body.errors.length) {
        return body.errors.map((e) => (e.loc ? e.loc.join(".") + ": " : "") + (e.msg ?? "")).join("; ");
      }
      if (body.detail) return JSON.stringify(body.detail);
      if (body.title) return body.title + " (" + status + ")";
    }
    return "HTTP " + status;
  }

  // ----------------------------------------------------------- data intake

  function takeSite(doc) {
    if (!doc || typeof doc !== "object" || !Array.isArray(doc.groups)) return;
    state.site = doc;
    dirty.site = true;
    dirty.pending = true; // the adopt forms list the groups
    takeExtras(doc);
  }

  let sessionKey = "";
  function takeChargers(doc) {
    const list = doc && Array.isArray(doc.chargers) ? doc.chargers : null;
    if (!list) return;
    state.chargers = list;
    state.byId = new Map(list.map((c) => [c.id, c]));
    dirty.chargers = true;
    dirty.site = true; // the tree shows each charger's state too
    // A session started or ended: the history changed, fetch it again.
    const key = list.flatMap((c) => (c.connectors || []).map((k) =>
      (k.session && k.session.transaction_id) || "")).join(",");
    if (key !== sessionKey) {
      const first = sessionKey === "";
      sessionKey = key;
      if (!first) scheduleSessions();
    }
  }

  function alarmKey(a) {
    return [a.at ?? "", a.kind ?? "", a.group ?? "", a.phase ?? "", a.message ?? "", a.cleared].join("|");
  }

  function takeAlarms(list, replace) {
    const byKey = new Map(replace ? [] : state.alarms.map((a) => [alarmKey(a), a]));
    for (const a of list) byKey.set(alarmKey(a), a);
    state.alarms = [...byKey.values()]
      .sort((a, b) => String(b.at ?? "").localeCompare(String(a.at ?? "")))
      .slice(0, MAX_ALARMS);
    dirty.alarms = true;
  }

  // Frequency response: shown when the server's status carries it (a later feature);
  // until then its section says "none". Demand response has its own API (loadDr).
  const FR_KEYS = ["frequency_response"];
  function takeExtras(doc) {
    if (!doc || typeof doc !== "object") return;
    for (const k of FR_KEYS) if (k in doc) { state.extras.fr = doc[k]; dirty.extras = true; }
  }

  // ------------------------------------------------------------- rendering

  let renderQueued = false;
  function scheduleRender() {
    if (renderQueued) return;
    renderQueued = true;
    setTimeout(() => { renderQueued = false; render(); }, 0);
  }

  function render() {
    const started = performance.now();
    const site = state.site;
    if (site) {
      $("site-name").textContent = site.site;
      document.title = "gridshare · " + site.site;
    }
    if (dirty.site) { dirty.site = false; renderGroups(); fillSelect($("limit-group"), allGroupIds()); }
    if (dirty.chargers) {
      dirty.chargers = false;
      renderChargers();
      fillSelect($("priority-charger"), state.chargers.map((c) => c.id));
    }
    if (dirty.alarms) { dirty.alarms = false; renderAlarms(); }
    if (dirty.sessions) { dirty.sessions = false; renderSessions(); }
    if (dirty.extras) { dirty.extras = false; renderExtras(); }
    if (dirty.pending) { dirty.pending = false; renderPending(); }
    if (state.lastUpdate) $("updated").textContent = "updated " + state.lastUpdate.toLocaleTimeString();
    probe.renders += 1;
    probe.lastRenderAt = Date.now();
    probe.renderMs = Math.max(probe.renderMs, performance.now() - started);
  }

  function level(load, limit) {
    if (!isNum(limit) || !isNum(load)) return "ok";
    if (limit <= 0) return load > 0 ? "over" : "ok";
    const r = load / limit;
    if (r > 1) return "over";
    if (r >= WARN_AT) return "warn";
    return "ok";
  }

  function td(label, value, cls) {
    return h("td", { "data-label": label, class: cls || null }, value ?? "");
  }

  function energyKwh(s) {
    if (!s) return null;
    if (isNum(s.energy_kwh)) return s.energy_kwh;
    return isNum(s.energy_wh) ? s.energy_wh / 1000 : null;
  }

  function setText(el, text) {
    if (el.textContent !== text) el.textContent = text;
  }

  function setAttr(el, name, value) {
    if (value === null || value === undefined) {
      if (el.hasAttribute(name)) el.removeAttribute(name);
    } else if (el.getAttribute(name) !== value) {
      el.setAttribute(name, value);
    }
  }

  function show(el, on) {
    if (el.hidden === on) el.hidden = !on;
  }

  // A bar of load against a limit: built once, then updated in place.
  function makeBar(label) {
    const fill = h("span", { class: "fill" });
    const val = h("span", { class: "val", "aria-hidden": "true" });
    const el = h("div", { class: "bar ok", "data-phase": label, role: "img" },
      h("span", { class: "ph", text: label, "aria-hidden": "true" }),
      h("span", { class: "track", "aria-hidden": "true" }, fill), val);
    return { el, fill, val };
  }

  function setBar(b, label, load, limit, unit) {
    const lv = level(load, limit);
    let pct = 0;
    if (isNum(limit) && limit > 0 && isNum(load)) pct = Math.min(100, Math.max(0, (load / limit) * 100));
    else if (lv === "over") pct = 100;
    const text = fmt(load) + " / " + (isNum(limit) ? fmt(limit) : "no limit") + " " + unit;
    const word = lv === "over" ? ", over the limit" : lv === "warn" ? ", near the limit" : "";
    setText(b.val, text);
    setAttr(b.el, "class", "bar " + lv);
    setAttr(b.el, "data-level", lv);
    setAttr(b.el, "aria-label", label + ": " + text + word);
    const width = pct.toFixed(1) + "%";
    if (b.fill.style.width !== width) b.fill.style.width = width;
  }

  function chargerOnline(c) {
    return c && c.connection ? Boolean(c.connection.online) : null;
  }

  // --- the group tree: rebuilt when its shape changes, otherwise updated in place

  const groupViews = new Map();
  let treeKey = null;

  function treeSignature(groups) {
    return groups.map((g) => g.id + "[" + (g.chargers || []).join(",") + "]("
      + treeSignature(g.children || []) + ")").join(";");
  }

  function renderGroups() {
    const root = $("groups");
    const groups = state.site ? state.site.groups : [];
    if (!groups.length) {
      treeKey = null;
      groupViews.clear();
      root.replaceChildren(h("p", { class: "none", text: state.site ? "no groups" : "loading…" }));
      return;
    }
    const key = treeSignature(groups);
    if (key !== treeKey) {
      treeKey = key;
      groupViews.clear();
      root.replaceChildren(h("ul", { role: "tree", "aria-label": "load groups" }, groups.map(buildGroup)));
    }
    const walk = (g) => { updateGroup(g); (g.children || []).forEach(walk); };
    groups.forEach(walk);
  }

  function buildGroup(g) {
    const v = {
      limit: h("span", { class: "group-limit" }),
      limitPower: h("span", { class: "group-power", hidden: true }),
      power: h("span", { class: "group-power group-now", hidden: true }),
      override: h("span", { class: "badge override", hidden: true }),
      stale: h("span", { class: "badge stale", text: "meter silent: no headroom", hidden: true }),
      bars: h("div", { class: "bars" }),
      barKey: "",
      barList: [],
      chips: new Map(),
    };
    const ids = Array.isArray(g.chargers) ? g.chargers : [];
    const chips = ids.length ? h("ul", { class: "group-chargers", "aria-label": "chargers in " + g.id },
      ids.map((id) => {
        const li = h("li", { class: "chip", "data-charger": id, text: id });
        v.chips.set(id, li);
        return li;
      })) : null;
    const kids = Array.isArray(g.children) && g.children.length
      ? h("ul", { role: "group" }, g.children.map(buildGroup)) : null;
    groupViews.set(g.id, v);
    return h("li", { class: "group", "data-group": g.id, role: "treeitem",
                     "aria-expanded": kids ? "true" : null, "aria-label": g.id },
      h("div", { class: "group-head" }, h("span", { class: "group-id", text: g.id }),
        v.limit, v.limitPower, v.power, v.override, v.stale),
      v.bars, chips, kids);
  }

  function barSpecs(g) {
    const cur = Array.isArray(g.current) ? g.current : [];
    const specs = [];
    if (isNum(g.limit) || !isNum(g.limit_power)) {
      if (g.phases === 1) {
        // A 1-phase group: its one line is wherever the load is.
        const p = cur.findIndex((x) => isNum(x) && x > 0);
        const i = p < 0 ? 0 : p;
        specs.push([PHASES[i], cur[i], g.limit, "A"]);
      } else {
        for (let p = 0; p < 3; p++) specs.push([PHASES[p], cur[p], g.limit, "A"]);
      }
    }
    if (isNum(g.limit_power)) specs.push(["kW", g.power, g.limit_power, "kW"]);
    return specs;
  }

  function updateGroup(g) {
    const v = groupViews.get(g.id);
    if (!v) return;
    const specs = barSpecs(g);
    const key = specs.map((s) => s[0]).join(",");
    if (key !== v.barKey) {
      v.barKey = key;
      v.barList = specs.map((s) => makeBar(s[0]));
      v.bars.replaceChildren(...v.barList.map((b) => b.el));
    }
    specs.forEach((s, i) => setBar(v.barList[i], s[0], s[1], s[2], s[3]));
    setText(v.limit, isNum(g.limit) ? "limit " + fmt(g.limit) + " A" : "");
    show(v.limitPower, isNum(g.limit_power));
    setText(v.limitPower, isNum(g.limit_power) ? "limit " + fmt(g.limit_power) + " kW" : "");
    show(v.power, isNum(g.power));
    setText(v.power, isNum(g.power) ? fmt(g.power) + " kW now" : "");
    const o = g.override;
    let overrideText = "";
    if (o) {
      const parts = [];
      if (isNum(o.max_current)) parts.push(fmt(o.max_current) + " A");
      if (isNum(o.max_power)) parts.push(fmt(o.max_power) + " kW");
      overrideText = "operator override " + parts.join(", ") + (o.until ? " until " + fmtTime(o.until) : "");
    }
    show(v.override, Boolean(o));
    setText(v.override, overrideText);
    show(v.stale, Boolean(g.meter_stale));
    for (const [id, li] of v.chips) {
      const c = state.byId.get(id);
      const online = chargerOnline(c);
      const st = c ? c.status : "";
      setText(li, id + (st ? " · " + st : ""));
      setAttr(li, "class", online === false ? "chip offline" : /charging/i.test(st) ? "chip charging" : "chip");
    }
  }

  // --- the chargers table: one row per connector, kept and updated in place; at most
  // MAX_ROWS shown unless asked for all (a filter finds the rest)

  const MAX_ROWS = 100;
  const CELLS = [["charger", "Charger"], ["connection", "Connection"], ["protocol", "Protocol"],
                 ["connector", "Connector"], ["state", "State"], ["setpoint", "Setpoint", "num setpoint"],
                 ["measured", "Measured", "num measured"], ["session", "Session"], ["priority", "Priority"]];
  const rowViews = new Map();
  let rowsKey = "";
  let showAll = false;

  function buildRow(cid, connector) {
    const cells = {};
    const tr = h("tr", { "data-charger": cid, "data-connector": connector },
      CELLS.map(([name, label, cls]) => (cells[name] = h("td", { "data-label": label, class: cls || null }))));
    return { tr, cells };
  }

  function matches(c, f) {
    if (!f) return true;
    const online = chargerOnline(c);
    return [c.id, c.status, c.protocol, c.group, online === false ? "offline" : "online"]
      .some((x) => typeof x === "string" && x.toLowerCase().includes(f));
  }

  function renderChargers() {
    const body = $("chargers").tBodies[0];
    const f = $("charger-filter").value.trim().toLowerCase();
    const found = f ? state.chargers.filter((c) => matches(c, f)) : state.chargers;
    const shown = showAll ? found : found.slice(0, MAX_ROWS);
    const keys = [];
    for (const c of shown) {
      const online = chargerOnline(c);
      const conns = Array.isArray(c.connectors) && c.connectors.length ? c.connectors : [{}];
      conns.forEach((k, i) => {
        const first = i === 0;
        const key = c.id + "\u0000" + (k.connector ?? 1);
        keys.push(key);
        let view = rowViews.get(key);
        if (!view) {
          view = buildRow(c.id, k.connector ?? 1);
          rowViews.set(key, view);
        }
        const cells = view.cells;
        const e = energyKwh(k.session);
        const m = k.measured;
        setText(cells.charger, first ? c.id : "");
        setText(cells.connection, first ? (online === null ? "?" : online ? "online" : "offline") : "");
        setAttr(cells.connection, "class", first && online !== null ? (online ? "online" : "offline") : null);
        setText(cells.protocol, first ? (c.protocol ?? "") : "");
        setText(cells.connector, String(k.connector ?? ""));
        setText(cells.state, k.status ?? (first ? c.status : "") ?? "");
        setText(cells.setpoint, isNum(k.setpoint) ? fmt(k.setpoint) + " A" : (online === false ? "failsafe" : "default"));
        setText(cells.measured, isNum(k.measured_max) ? fmt(k.measured_max) + " A" : "–");
        setAttr(cells.measured, "title", Array.isArray(m) ? m.map((x) => fmt(x)).join(" / ") + " A (L1/L2/L3)" : null);
        setText(cells.session, k.session ? (isNum(e) ? fmt(e, 2) + " kWh" : "active") : "");
        const set = c.priority_override !== null && c.priority_override !== undefined;
        setText(cells.priority, first && isNum(c.priority) ? String(c.priority) + (set ? " (set)" : "") : "");
      });
    }
    const key = keys.join("\n");
    if (key !== rowsKey) {
      rowsKey = key;
      const keep = new Set(keys);
      for (const k of [...rowViews.keys()]) if (!keep.has(k)) rowViews.delete(k);
      body.replaceChildren(...(keys.length ? keys.map((k) => rowViews.get(k).tr)
        : [h("tr", null, h("td", { colspan: CELLS.length, class: "none",
                                   text: state.chargers.length ? "no charger matches" : "no chargers" }))]));
    }
    const online = state.chargers.filter((c) => chargerOnline(c)).length;
    setText($("chargers-count"), state.chargers.length
      ? "(" + online + " of " + state.chargers.length + " online)" : "");
    const hidden = found.length - shown.length;
    setText($("chargers-shown"), hidden > 0 ? "showing " + shown.length + " of " + found.length + "." : "");
    show($("chargers-all"), hidden > 0);
  }

  function renderAlarms() {
    const ul = $("alarms");
    if (!state.alarms.length) {
      ul.replaceChildren(h("li", { class: "none", text: "none" }));
      return;
    }
    ul.replaceChildren(...state.alarms.map((a) => h("li", { class: a.cleared ? "cleared" : "raised" },
      h("span", { class: "when", text: fmtTime(a.at) }),
      h("span", { class: "kind", text: a.kind ?? "alarm" }),
      (a.cleared ? "cleared: " : "") + (a.message ?? ""))));
  }

  function renderSessions() {
    const body = $("sessions").tBodies[0];
    if (state.sessions === null) {
      const text = state.sessionsProblem || "loading…";
      body.replaceChildren(h("tr", null, h("td", { colspan: 5, class: "none", text })));
      return;
    }
    const rows = state.sessions.slice(0, MAX_SESSIONS).map((s) => {
      const e = energyKwh(s);
      return h("tr", { "data-charger": s.charger },
        td("Charger", s.charger ?? ""),
        td("Connector", String(s.connector ?? "")),
        td("Started", fmtTime(s.started)),
        td("Ended", s.stopped ? fmtTime(s.stopped) : "charging"),
        td("Energy", isNum(e) ? fmt(e, 2) + " kWh" : "–", "num"));
    });
    if (!rows.length) rows.push(h("tr", null, h("td", { colspan: 5, class: "none", text: "none" })));
    body.replaceChildren(...rows);
  }

  function kv(obj) {
    if (obj === null || typeof obj !== "object") return h("p", { text: String(obj) });
    return h("dl", { class: "kv" }, Object.entries(obj).flatMap(([k, v]) => [
      h("dt", { text: k }),
      h("dd", { text: v !== null && typeof v === "object" ? JSON.stringify(v) : String(v ?? "–") })]));
  }

  function renderExtra(el, value) {
    const empty = value === undefined || value === null ||
      (Array.isArray(value) && value.length === 0) ||
      (typeof value === "object" && !Array.isArray(value) && Object.keys(value).length === 0);
    if (empty) el.replaceChildren(h("p", { class: "none", text: "none" }));
    else if (Array.isArray(value)) el.replaceChildren(...value.map(kv));
    else el.replaceChildren(kv(value));
  }

  function renderExtras() {
    renderDr();
    renderExtra($("fr"), state.extras.fr);
  }

  // Demand response: each zone's live load (GET /api/v1/zones), then the events in force
  // now (GET /api/v1/dr/events), each with its target, the reduction the meters show and
  // the compliance verdict; "none" on a site without zones.
  function renderDr() {
    const el = $("dr");
    const active = (state.dr || []).filter((e) => e.state === "active" && e.signal_type !== "RESTORE");
    const zones = state.drZones || [];
    if (!active.length && !zones.length) { el.replaceChildren(h("p", { class: "none", text: "none" })); return; }
    const zoneList = h("ul", { id: "dr-zones", class: "dr-zones" }, ...zones.map((z) => {
      const live = z.live || {};
      const of = isNum(z.capacity_kw) ? " of " + fmt(z.capacity_kw, 0) + " kW" : "";
      const pct = isNum(live.utilisation_pct) ? " (" + fmt(live.utilisation_pct, 1) + " %)" : "";
      return h("li", { "data-zone": z.id, text: z.id + " · " + fmt(live.total_kw, 1) + " kW" + of +
        pct + " · " + (live.active_stations ?? 0) + " active" });
    }));
    if (!active.length) {
      el.replaceChildren(zoneList, h("p", { class: "none", text: "no event in force" }));
      return;
    }
    const rows = active.map((e) => {
      const c = e.compliance || {};
      const verdict = c.verdict || "pending";
      return h("tr", { "data-signal": e.id },
        td("Zone", e.zone_id),
        td("Event", e.signal_type + " · P" + e.priority + " · until " + fmtTime(e.end_ts)),
        td("Target", fmt(e.target_kw ?? e.target_reduction_kw, 1) + " kW", "num"),
        td("Achieved", isNum(c.achieved_kw) ? fmt(c.achieved_kw, 1) + " kW" : "–", "num"),
        td("Verdict", verdict, "verdict verdict-" + verdict.replace(/\s+/g, "-")));
    });
    el.replaceChildren(zoneList, h("table", { id: "dr-events", class: "cards" },
      h("thead", null, h("tr", null, ...["Zone", "Event", "Target", "Achieved", "Verdict"]
        .map((t) => h("th", { scope: "col", text: t })))),
      h("tbody", null, ...rows)));
  }

  // ------------------------------------------------- chargers not declared yet

  // One card per pending charger, kept while it stays pending, so a form being filled in
  // survives the refreshes; only its texts change.
  const pendingCards = new Map();

  function pendingCard(p) {
    const id = p.id;
    const slug = id.replace(/[^A-Za-z0-9_-]/g, "_");
    const field = (name, label, input) => {
      input.id = "adopt-" + slug + "-" + name;
      input.name = name;
      return h("label", { for: input.id }, label, input);
    };
    const num = (value, step) => h("input", { type: "number", step, min: "0", inputmode: "decimal",
                                              value });
    const group = h("select", { class: "adopt-group" });
    const phases = h("select", null, h("option", { value: "3", text: "3" }),
                     h("option", { value: "1", text: "1" }));
    const line = h("select", { disabled: true }, ...PHASES.map((x) => h("option", { value: x, text: x })));
    phases.addEventListener("change", () => { line.disabled = phases.value !== "1"; });
    const maxCurrent = num("16", "any");
    const failsafe = num("0", "any");
    const out = h("p", { class: "result", role: "status" });
    const form = h("form", { class: "adopt", novalidate: true, "data-charger": id },
                   field("group", "Group", group), field("max_current", "Max current (A)", maxCurrent),
                   field("phases", "Phases", phases), field("phase", "Line", line),
                   field("failsafe_current", "Failsafe (A)", failsafe),
                   h("button", { type: "submit", text: "Adopt" }), out);
    form.addEventListener("submit", async (e) => {
      e.preventDefault();
      const body = { id, group: group.value, max_current: numberOrText(maxCurrent),
                     phases: Number(phases.value), failsafe_current: numberOrText(failsafe) };
      if (phases.value === "1") body.phase = line.value;
      const charger = await send("POST", API + "/chargers", body, out);
      if (charger) {
        out.textContent = "adopted into " + charger.group;
        Promise.allSettled([loadPending(), loadChargers(), loadSite()]).then(scheduleRender);
      }
    });
    const li = h("li", { "data-charger": id }, h("p", { class: "who" }), h("p", { class: "seen" }), form);
    return { li, who: li.children[0], seen: li.children[1], form, group };
  }

  function renderPending() {
    const section = $("pending-section");
    const doc = state.pending;
    const list = doc && Array.isArray(doc.pending) ? doc.pending : [];
    show(section, !!doc && (doc.pending_unknown || list.length > 0));
    setText($("pending-count"), list.length ? "(" + list.length + ")" : "");
    const canAdopt = !!token();
    show($("pending-token"), !canAdopt);
    const ul = $("pending");
    const ids = new Set(list.map((p) => p.id));
    for (const [id, card] of pendingCards) {
      if (!ids.has(id)) { card.li.remove(); pendingCards.delete(id); }
    }
    if (!list.length) {
      if (!ul.querySelector(".none")) ul.replaceChildren(h("li", { class: "none", text: "none" }));
      return;
    }
    const none = ul.querySelector(".none");
    if (none) none.remove();
    const groups = allGroupIds();
    for (const p of list) {
      let card = pendingCards.get(p.id);
      if (!card) {
        card = pendingCard(p);
        pendingCards.set(p.id, card);
        ul.append(card.li);
      }
      const what = [p.vendor, p.model].filter(Boolean).join(" ") || "no boot yet";
      setText(card.who, p.id + " · " + what + " · " + (p.protocol || "?"));
      setText(card.seen, (p.connected ? "connected" : "gone") + " from " + (p.remote_address || "?") +
        " · first seen " + fmtTime(p.first_seen) + " · last seen " + fmtTime(p.last_seen));
      fillSelect(card.group, groups);
      show(card.form, canAdopt);
    }
  }

  async function loadPending() {
    try {
      state.pending = await getJSON(API + "/pending");
    } catch (e) {
      state.pending = null;
    }
    dirty.pending = true;
  }

  function allGroupIds() {
    const out = [];
    const walk = (g) => { out.push(g.id); (g.children || []).forEach(walk); };
    (state.site ? state.site.groups : []).forEach(walk);
    return out;
  }

  function fillSelect(sel, ids) {
    const have = [...sel.options].map((o) => o.value);
    if (have.length === ids.length && have.every((v, i) => v === ids[i])) return;
    const keep = sel.value;
    sel.replaceChildren(...ids.map((id) => h("option", { value: id, text: id })));
    if (ids.includes(keep)) sel.value = keep;
  }

  // ------------------------------------------------------------ loading

  async function loadSite() {
    takeSite(await getJSON(API + "/site"));
  }

  async function loadChargers() {
    takeChargers(await getJSON(API + "/chargers"));
  }

  async function loadAlarms() {
    const doc = await getJSON(API + "/alarms");
    takeAlarms(doc && Array.isArray(doc.alarms) ? doc.alarms : [], true);
  }

  async function loadSessions() {
    try {
      const doc = await getJSON(API + "/sessions?limit=" + MAX_SESSIONS);
      state.sessions = doc && Array.isArray(doc.sessions) ? doc.sessions : [];
      state.sessionsProblem = "";
    } catch (e) {
      state.sessions = null;
      state.sessionsProblem = e.status === 503 ? e.message : "no session history: " + e.message;
    }
    dirty.sessions = true;
  }

  // GET /status: the frequency response section, once it exists.
  async function loadExtras() {
    takeExtras(await getJSON("/status"));
  }

  // GET /api/v1/dr/events: demand-response events with their compliance records.
  async function loadDr() {
    const [events, zones] = await Promise.all([getJSON(API + "/dr/events"),
                                               getJSON(API + "/zones").catch(() => null)]);
    state.dr = events && Array.isArray(events.events) ? events.events : [];
    state.drZones = zones && Array.isArray(zones.zones) ? zones.zones : [];
    dirty.extras = true;
  }

  // The stream carries no DR events: they are read again with the site's updates, at
  // most every DR_REFRESH_MS.
  const DR_REFRESH_MS = 2000;
  let drLoadedAt = 0;
  function refreshDr() {
    if (Date.now() - drLoadedAt < DR_REFRESH_MS) return;
    drLoadedAt = Date.now();
    loadDr().then(scheduleRender, () => {});
  }

  let sessionsTimer = null;
  function scheduleSessions() {
    clearTimeout(sessionsTimer);
    sessionsTimer = setTimeout(() => { loadSessions().then(scheduleRender); }, 500);
  }

  async function loadAll() {
    const results = await Promise.allSettled([loadSite(), loadChargers(), loadAlarms(),
                                              loadSessions(), loadExtras(), loadDr(),
                                              loadPending()]);
    const failed = results.find((r) => r.status === "rejected");
    if (failed && failed.reason && failed.reason.status === 401) {
      $("token-state").textContent = "reads need a token here: " + failed.reason.message;
    }
    state.lastUpdate = new Date();
    scheduleRender();
  }

  // ------------------------------------------------------------ live stream

  let source = null;
  let retryTimer = null;
  let retryDelay = 1000;

  function setConn(s, text) {
    const el = $("conn");
    el.dataset.state = s;
    el.textContent = text;
  }

  function onEvent(kind, ev) {
    probe.received[kind] = Date.now();
    const started = performance.now();
    let data;
    try { data = JSON.parse(ev.data); } catch (e) { return; }
    probe.parseMs = Math.max(probe.parseMs, performance.now() - started);
    probe.events += 1;
    state.lastUpdate = new Date();
    if (kind === "site") { takeSite(data); refreshDr(); }
    else if (kind === "chargers") takeChargers(data);
    else if (kind === "alarm") takeAlarms([data], false);
    scheduleRender();
  }

  function streamUrl() {
    // EventSource cannot send headers: when reads need a token it goes in the query.
    const t = token();
    return API + "/stream" + (state.readNeedsToken && t ? "?access_token=" + encodeURIComponent(t) : "");
  }

  function connect() {
    clearTimeout(retryTimer);
    if (source) source.close();
    setConn("connecting", "connecting…");
    const es = new EventSource(streamUrl());
    source = es;
    es.onopen = () => {
      probe.connects += 1;
      retryDelay = 1000;
      setConn("live", "live");
      // What the stream does not carry (history) may have changed while we were away.
      if (probe.connects > 1) loadAll();
    };
    for (const name of ["site", "chargers", "alarm"]) es.addEventListener(name, (ev) => onEvent(name, ev));
    es.onerror = () => {
      if (es !== source) return;
      // While readyState is CONNECTING the browser retries by itself; once CLOSED (the
      // server answered with an error, e.g. while restarting) we start again ourselves.
      if (es.readyState === EventSource.CLOSED) {
        setConn("down", "disconnected, retrying");
        retryTimer = setTimeout(() => { loadAll(); connect(); }, retryDelay);
        retryDelay = Math.min(retryDelay * 2, 15000);
      } else {
        setConn("down", "reconnecting…");
      }
    };
  }

  // ------------------------------------------------------------- operator

  async function send(method, path, body, out) {
    out.className = "result";
    out.textContent = "sending…";
    const t = token();
    if (!t) {
      out.className = "result error";
      out.textContent = "enter and save an API token first";
      return null;
    }
    let r;
    try {
      r = await fetch(path, {
        method, body: JSON.stringify(body), cache: "no-store",
        headers: { "Content-Type": "application/json",
                   Accept: "application/json, application/problem+json",
                   Authorization: "Bearer " + t },
      });
    } catch (e) {
      out.className = "result error";
      out.textContent = "cannot reach gridshare: " + e.message;
      return null;
    }
    let doc = null;
    try { doc = await r.json(); } catch (e) { doc = null; }
    if (!r.ok) {
      out.className = "result error";
      out.textContent = problemText(r.status, doc);
      return null;
    }
    out.className = "result ok";
    out.textContent = "";
    return doc || {};
  }

  function numberOrText(input) {
    const v = input.value.trim();
    if (v === "") return null;
    const n = Number(v);
    return Number.isFinite(n) ? n : v; // not a number: the API says what is wrong with it
  }

  function setupForms() {
    $("charger-filter").addEventListener("input", () => { dirty.chargers = true; scheduleRender(); });
    $("chargers-all").addEventListener("click", () => { showAll = true; dirty.chargers = true; scheduleRender(); });
    const tok = $("token");
    const tokState = $("token-state");
    const showTok = () => {
      tokState.textContent = token() ? "a token is saved in this browser" : "no token saved: changes are off";
    };
    tok.value = token();
    showTok();
    $("token-form").addEventListener("submit", (e) => {
      e.preventDefault();
      try { localStorage.setItem(TOKEN_KEY, tok.value.trim()); } catch (err) { /* storage off */ }
      showTok();
      dirty.pending = true;
      scheduleRender();
      if (state.readNeedsToken) { loadAll(); connect(); }
    });
    $("token-forget").addEventListener("click", () => {
      try { localStorage.removeItem(TOKEN_KEY); } catch (err) { /* storage off */ }
      tok.value = "";
      showTok();
      dirty.pending = true;
      scheduleRender();
    });

    const limitOut = $("limit-result");
    const putLimit = async (body, done) => {
      const gid = $("limit-group").value;
      if (!gid) return;
      const group = await send("PUT", API + "/groups/" + encodeURIComponent(gid) + "/limit", body, limitOut);
      if (group) {
        limitOut.textContent = done + " on " + gid + (isNum(group.limit) ? ": limit now " + fmt(group.limit) + " A" : "");
        loadSite().then(scheduleRender, () => {});
      }
    };
    $("limit-form").addEventListener("submit", (e) => {
      e.preventDefault();
      const untilRaw = $("limit-until").value;
      const untilDate = untilRaw ? new Date(untilRaw) : null;
      const until = untilDate && !Number.isNaN(untilDate.getTime()) ? untilDate.toISOString() : (untilRaw || null);
      const body = { max_current: numberOrText($("limit-current")),
                     max_power: numberOrText($("limit-power")), until };
      putLimit(body, body.max_current === null && body.max_power === null ? "override removed" : "override applied");
    });
    $("limit-remove").addEventListener("click", () => {
      putLimit({ max_current: null, max_power: null, until: null }, "override removed");
    });

    const prioOut = $("priority-result");
    $("priority-form").addEventListener("submit", async (e) => {
      e.preventDefault();
      const cid = $("priority-charger").value;
      if (!cid) return;
      const body = { priority: numberOrText($("priority-value")) };
      const charger = await send("PUT", API + "/chargers/" + encodeURIComponent(cid) + "/priority", body, prioOut);
      if (charger) {
        prioOut.textContent = "priority of " + cid + " is now " + charger.priority;
        loadChargers().then(scheduleRender, () => {});
      }
    });
  }

  // ------------------------------------------------------------------ start

  document.addEventListener("DOMContentLoaded", () => {
    setupForms();
    render();
    loadAll().then(() => { if (state.readNeedsToken && token()) connect(); });
    connect();
    // Grid services (demand response, frequency response) appear in GET /status once they
    // exist; they change slowly, so a look every 15 s is enough.
    setInterval(() => { loadExtras().then(scheduleRender, () => {}); }, 15000);
    // Chargers not declared yet are not on the stream: a look every 3 s.
    setInterval(() => { loadPending().then(scheduleRender); }, 3000);
  });
})();
