// gridshare live dashboard: plain JS, no build step. Reads the REST API once, then follows
// GET /api/v1/stream (server-sent events) without reloading; reconnects when the server
// comes back. Every value shown comes from the API: nothing is made up here.
"use strict";

(function () {
  const API = "/api/v1";
  const TOKEN_KEY = "gridshare.token";
  const WARN_AT = 0.9; // amber from 90 % of a limit, red above 100 %
  const PHASES = ["L1", "L2", "L3"];

  const state = {
    site: null,        // the site document (group tree)
    chargers: new Map(),
    alarms: [],
    sessions: [],
    extras: {},        // demand response / frequency response when the server has them
    lastUpdate: null,
  };
  // Test and benchmark hooks: counters only, never read by the page itself.
  const probe = { renders: 0, events: 0, connects: 0, lastRenderAt: 0 };
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
    const now = new Date();
    const sameDay = d.toDateString() === now.toDateString();
    return sameDay ? d.toLocaleTimeString() : d.toLocaleString();
  }

  function listOf(doc, key) {
    if (Array.isArray(doc)) return doc;
    if (doc && Array.isArray(doc[key])) return doc[key];
    if (doc && Array.isArray(doc.items)) return doc.items;
    return [];
  }

  function token() {
    try { return localStorage.getItem(TOKEN_KEY) || ""; } catch (e) { return ""; }
  }

  async function getJSON(path) {
    const headers = { Accept: "application/json" };
    const t = token();
    if (t) headers.Authorization = "Bearer " + t;
    const r = await fetch(path, { headers, cache: "no-store" });
    if (!r.ok) throw new Error(path + ": HTTP " + r.status);
    return r.json();
  }

  // ----------------------------------------------------------- data intake

  function groupRoots(site) {
    if (!site) return [];
    if (Array.isArray(site)) return site;
    if (Array.isArray(site.groups)) return site.groups;
    if (site.id !== undefined && (site.children || site.chargers)) return [site];
    return [];
  }

  function chargerId(c) {
    return typeof c === "string" ? c : (c && (c.id ?? c.charger)) || "";
  }

  function takeSite(doc) {
    state.site = doc;
    if (doc && !Array.isArray(doc)) takeExtras(doc);
  }

  function takeChargers(doc) {
    const list = listOf(doc, "chargers");
    const seen = new Set();
    for (const c of list) {
      const id = chargerId(c);
      if (!id) continue;
      seen.add(id);
      state.chargers.set(id, c);
    }
    // A full list replaces the old one; a partial update (one charger) does not.
    if (Array.isArray(doc) || (doc && Array.isArray(doc.chargers) && !doc.partial)) {
      for (const id of [...state.chargers.keys()]) if (!seen.has(id)) state.chargers.delete(id);
    }
  }

  function chargerOne(c) {
    const id = chargerId(c);
    if (id) state.chargers.set(id, c);
  }

  function alarmKey(a) {
    return [a.id ?? "", a.at ?? "", a.kind ?? "", a.group ?? a.group_id ?? "", a.message ?? ""].join("|");
  }

  function takeAlarms(doc, replace) {
    const list = Array.isArray(doc) ? doc : listOf(doc, "alarms");
    const byKey = new Map(replace ? [] : state.alarms.map((a) => [alarmKey(a), a]));
    for (const a of list) byKey.set(alarmKey(a), a);
    state.alarms = [...byKey.values()]
      .sort((a, b) => String(b.at ?? "").localeCompare(String(a.at ?? "")))
      .slice(0, 200);
  }

  function takeSessions(doc) {
    state.sessions = listOf(doc, "sessions");
  }

  // Demand response and frequency response are shown only when the server reports them.
  const DR_KEYS = ["dr", "dr_events", "demand_response"];
  const FR_KEYS = ["frequency_response", "frequency", "fr"];
  function takeExtras(doc) {
    if (!doc || typeof doc !== "object") return;
    for (const k of DR_KEYS) if (k in doc) state.extras.dr = doc[k];
    for (const k of FR_KEYS) if (k in doc) state.extras.fr = doc[k];
  }

  // ------------------------------------------------------------- rendering

  let renderQueued = false;
  function scheduleRender() {
    if (renderQueued) return;
    renderQueued = true;
    setTimeout(() => {
      renderQueued = false;
      render();
    }, 0);
  }

  const lastHtmlKey = {};
  function changed(name, value) {
    const key = JSON.stringify(value);
    if (lastHtmlKey[name] === key) return false;
    lastHtmlKey[name] = key;
    return true;
  }

  function render() {
    const site = state.site;
    if (site && !Array.isArray(site)) {
      const name = site.site ?? site.name ?? site.id ?? "";
      $("site-name").textContent = name;
      if (name) document.title = "gridshare · " + name;
    }
    if (changed("groups", [site, [...state.chargers.entries()]])) renderGroups();
    if (changed("chargers", [...state.chargers.entries()])) renderChargers();
    if (changed("alarms", state.alarms)) renderAlarms();
    if (changed("sessions", state.sessions)) renderSessions();
    if (changed("extras", state.extras)) renderExtras();
    renderFormChoices();
    if (state.lastUpdate) $("updated").textContent = "updated " + state.lastUpdate.toLocaleTimeString();
    probe.renders += 1;
    probe.lastRenderAt = Date.now();
  }

  function level(load, limit) {
    if (!isNum(limit) || !isNum(load)) return "ok";
    if (limit <= 0) return load > 0 ? "over" : "ok";
    const r = load / limit;
    if (r > 1) return "over";
    if (r >= WARN_AT) return "warn";
    return "ok";
  }

  function bar(label, load, limit, unit) {
    const lv = level(load, limit);
    const pct = isNum(limit) && limit > 0 && isNum(load) ? Math.min(100, Math.max(0, (load / limit) * 100))
      : (isNum(load) && load > 0 ? 100 : 0);
    const text = fmt(load) + " / " + (isNum(limit) ? fmt(limit) : "∞") + " " + unit;
    const word = lv === "over" ? "over the limit" : lv === "warn" ? "near the limit" : "";
    return h("div", { class: "bar " + lv, "data-phase": label, role: "group",
                      "aria-label": label + ": " + text + (word ? ", " + word : "") },
      h("span", { class: "ph", text: label }),
      h("span", { class: "track" },
        h("span", { class: "fill", style: "width:" + pct.toFixed(1) + "%" })),
      h("span", { class: "val", text }));
  }

  function connectorsOf(c) {
    return Array.isArray(c.connectors) && c.connectors.length ? c.connectors : [c];
  }

  function chargerOnline(c) {
    if (typeof c.online === "boolean") return c.online;
    const conn = c.connection ?? c.connected;
    if (typeof conn === "boolean") return conn;
    if (conn && typeof conn === "object" && typeof conn.online === "boolean") return conn.online;
    if (typeof conn === "string") return conn === "online" || conn === "connected";
    return null;
  }

  function chargerState(c) {
    const states = connectorsOf(c).map((k) => k.status ?? k.state).filter((s) => s);
    return states.length ? states.join(", ") : (c.status ?? c.state ?? "");
  }

  function renderGroups() {
    const root = $("groups");
    const roots = groupRoots(state.site);
    if (!roots.length) {
      root.replaceChildren(h("p", { class: "none", text: state.site ? "no groups" : "loading…" }));
      return;
    }
    root.replaceChildren(h("ul", { role: "tree" }, roots.map(groupNode)));
  }

  function groupNode(g) {
    const cur = Array.isArray(g.current) ? g.current : [];
    const limit = g.limit ?? g.max_current ?? null;
    const phases = isNum(g.phases) ? g.phases : 3;
    const bars = [];
    if (isNum(limit) || !isNum(g.limit_power)) {
      for (let p = 0; p < Math.min(3, Math.max(1, phases)); p++) bars.push(bar(PHASES[p], cur[p], limit, "A"));
    }
    if (isNum(g.limit_power)) bars.push(bar("kW", g.power, g.limit_power, "kW"));
    const override = g.override ?? g.operator ?? null;
    const head = h("div", { class: "group-head" },
      h("span", { class: "group-id", text: g.id }),
      h("span", { class: "group-limit", text: isNum(limit) ? "limit " + fmt(limit) + " A" : "" }),
      isNum(g.limit_power) ? h("span", { class: "group-power", text: "limit " + fmt(g.limit_power) + " kW" }) : null,
      isNum(g.power) ? h("span", { class: "group-power", text: fmt(g.power) + " kW now" }) : null,
      override ? h("span", { class: "badge override", text: "operator override" }) : null,
      g.meter_stale ? h("span", { class: "badge stale", text: "meter stale" }) : null);
    const chargerIds = (g.chargers || []).map(chargerId).filter((x) => x);
    const chips = chargerIds.length ? h("ul", { class: "group-chargers", "aria-label": "chargers in " + g.id },
      chargerIds.map((id) => {
        const c = state.chargers.get(id) || (typeof g.chargers[0] === "object"
          ? g.chargers.find((x) => chargerId(x) === id) : null);
        const online = c ? chargerOnline(c) : null;
        const st = c ? chargerState(c) : "";
        const cls = online === false ? "chip offline" : /charging/i.test(st) ? "chip charging" : "chip";
        const txt = id + (online === false ? " · offline" : st ? " · " + st : "");
        return h("li", { class: cls, "data-charger": id, text: txt });
      })) : null;
    const kids = Array.isArray(g.children) && g.children.length
      ? h("ul", { role: "group" }, g.children.map((k) => (typeof k === "object" ? groupNode(k) : null)))
      : null;
    return h("li", { class: "group", "data-group": g.id, role: "treeitem", "aria-expanded": kids ? "true" : null },
      head, h("div", { class: "bars" }, bars), chips, kids);
  }

  function td(label, value, cls) {
    return h("td", { "data-label": label, class: cls || null }, value ?? "");
  }

  function renderChargers() {
    const body = $("chargers").tBodies[0];
    const rows = [];
    for (const [id, c] of state.chargers) {
      const online = chargerOnline(c);
      const conns = connectorsOf(c);
      conns.forEach((k, i) => {
        const setpoint = k.setpoint ?? k.setpoint_a ?? null;
        const measured = k.measured ?? k.measured_current ?? k.drawn_a ?? null;
        const measuredText = Array.isArray(measured)
          ? measured.map((x) => fmt(x)).join(" / ") + " A" : isNum(measured) ? fmt(measured) + " A" : "–";
        const lease = k.lease_end ?? k.lease_until ?? null;
        const session = k.session ?? null;
        let sessionText = "";
        if (session && typeof session === "object") {
          const e = session.energy_kwh ?? (isNum(session.energy_wh) ? session.energy_wh / 1000 : null);
          sessionText = (session.id_tag ? session.id_tag + " · " : "") + (isNum(e) ? fmt(e, 2) + " kWh" : "active");
        } else if (session) sessionText = String(session);
        rows.push(h("tr", { "data-charger": id, "data-connector": k.connector ?? k.id ?? i + 1 },
          td("Charger", i === 0 ? id : ""),
          td("Connection", i === 0 ? (online === null ? "?" : online ? "online" : "offline") : "",
            i === 0 ? (online === false ? "offline" : online ? "online" : null) : null),
          td("Protocol", i === 0 ? (c.protocol ?? "") : ""),
          td("Connector", String(k.connector ?? k.id ?? i + 1)),
          td("State", k.status ?? k.state ?? c.status ?? ""),
          td("Setpoint", isNum(setpoint) ? fmt(setpoint) + " A" + (lease ? " until " + fmtTime(lease) : "")
            : "default", "num"),
          td("Measured", measuredText, "num"),
          td("Session", sessionText)));
      });
    }
    if (!rows.length) rows.push(h("tr", null, h("td", { colspan: 8, class: "none", text: "no chargers" })));
    body.replaceChildren(...rows);
    $("chargers-count").textContent = state.chargers.size ? "(" + state.chargers.size + ")" : "";
  }

  function renderAlarms() {
    const ul = $("alarms");
    if (!state.alarms.length) {
      ul.replaceChildren(h("li", { class: "none", text: "none" }));
      return;
    }
    ul.replaceChildren(...state.alarms.slice(0, 50).map((a) => h("li", { class: a.cleared ? "cleared" : null },
      h("span", { class: "when", text: fmtTime(a.at) }),
      h("span", { class: "kind", text: a.kind ?? "alarm" }),
      (a.cleared ? "(cleared) " : "") + (a.message ?? ""))));
  }

  function renderSessions() {
    const body = $("sessions").tBodies[0];
    const rows = state.sessions.slice(0, 100).map((s) => {
      const e = s.energy_kwh ?? (isNum(s.energy_wh) ? s.energy_wh / 1000 : null);
      return h("tr", null,
        td("Charger", s.charger ?? ""),
        td("Connector", String(s.connector ?? "")),
        td("Started", fmtTime(s.started_at ?? s.start)),
        td("Ended", s.stopped_at ?? s.end ? fmtTime(s.stopped_at ?? s.end) : "charging"),
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
    if (empty) {
      el.replaceChildren(h("p", { class: "none", text: "none" }));
    } else if (Array.isArray(value)) {
      el.replaceChildren(...value.map(kv));
    } else {
      el.replaceChildren(kv(value));
    }
  }

  function renderExtras() {
    renderExtra($("dr"), state.extras.dr);
    renderExtra($("fr"), state.extras.fr);
  }

  function allGroupIds() {
    const out = [];
    const walk = (g) => {
      if (!g || typeof g !== "object") return;
      out.push(g.id);
      (g.children || []).forEach(walk);
    };
    groupRoots(state.site).forEach(walk);
    return out;
  }

  function fillSelect(sel, ids) {
    const have = [...sel.options].map((o) => o.value);
    if (have.length === ids.length && have.every((v, i) => v === ids[i])) return;
    const keep = sel.value;
    sel.replaceChildren(...ids.map((id) => h("option", { value: id, text: id })));
    if (ids.includes(keep)) sel.value = keep;
  }

  function renderFormChoices() {
    fillSelect($("limit-group"), allGroupIds());
    fillSelect($("priority-charger"), [...state.chargers.keys()].sort());
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

  function parse(ev) {
    try { return JSON.parse(ev.data); } catch (e) { return null; }
  }

  function onData(kind, data) {
    if (data === null || data === undefined) return;
    probe.events += 1;
    state.lastUpdate = new Date();
    switch (kind) {
      case "site": takeSite(data.site ?? data); if (data.chargers) takeChargers(data.chargers); break;
      case "groups": takeSite(data); break;
      case "chargers": takeChargers(data); break;
      case "charger": chargerOne(data); break;
      case "alarm": takeAlarms([data], false); break;
      case "alarms": takeAlarms(data, false); break;
      case "sessions": takeSessions(data); break;
      default:
        // An unnamed or combined message: take what it carries.
        if (data && typeof data === "object" && !Array.isArray(data)) {
          if (data.groups || data.site) takeSite(data.site && typeof data.site === "object" ? data.site : data);
          if (data.chargers) takeChargers(data.chargers);
          if (data.alarms) takeAlarms(data.alarms, false);
          if (data.sessions) takeSessions(data.sessions);
          takeExtras(data);
        }
    }
    scheduleRender();
  }

  const EVENT_NAMES = ["site", "groups", "chargers", "charger", "alarm", "alarms", "sessions", "status"];

  function connect() {
    clearTimeout(retryTimer);
    if (source) source.close();
    setConn("connecting", "connecting…");
    source = new EventSource(API + "/stream");
    source.onopen = () => {
      probe.connects += 1;
      retryDelay = 1000;
      setConn("live", "live");
      // After a (re)connect, refresh what the stream does not carry in full.
      loadAll().catch(() => {});
    };
    source.onmessage = (ev) => onData("message", parse(ev));
    for (const name of EVENT_NAMES) source.addEventListener(name, (ev) => onData(name, parse(ev)));
    source.onerror = () => {
      // The browser retries by itself while readyState is CONNECTING; when it gives up
      // (CLOSED: e.g. the server answered an error while restarting) we try again.
      if (source.readyState === EventSource.CLOSED) {
        setConn("down", "disconnected — retrying");
        retryTimer = setTimeout(connect, retryDelay);
        retryDelay = Math.min(retryDelay * 2, 10000);
      } else {
        setConn("down", "reconnecting…");
      }
    };
  }

  async function loadAll() {
    const [site, chargers, alarms, sessions] = await Promise.allSettled([
      getJSON(API + "/site"), getJSON(API + "/chargers"), getJSON(API + "/alarms"),
      getJSON(API + "/sessions")]);
    if (site.status === "fulfilled") takeSite(site.value);
    if (chargers.status === "fulfilled") takeChargers(chargers.value);
    if (alarms.status === "fulfilled") takeAlarms(alarms.value, true);
    if (sessions.status === "fulfilled") takeSessions(sessions.value);
    state.lastUpdate = new Date();
    scheduleRender();
  }

  // Status JSON (GET /status) carries the grid-service sections once they exist.
  async function loadExtras() {
    try {
      takeExtras(await getJSON("/status"));
      scheduleRender();
    } catch (e) { /* optional */ }
  }

  // ------------------------------------------------------------- operator

  function problemText(status, body) {
    if (body && typeof body === "object") {
      const parts = [];
      if (body.detail) parts.push(typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail));
      else if (body.title) parts.push(body.title);
      if (Array.isArray(body.errors) && body.errors.length && !body.detail) {
        for (const e of body.errors) parts.push((e.loc ? e.loc.join(".") + ": " : "") + (e.msg ?? ""));
      }
      if (parts.length) return parts.join("; ");
    }
    if (status === 401) return "the API refused the token (401): enter a valid token above";
    return "HTTP " + status;
  }

  async function send(method, path, body, out) {
    out.className = "result";
    out.textContent = "sending…";
    const t = token();
    if (!t) {
      out.className = "result error";
      out.textContent = "enter an API token above first";
      return false;
    }
    let r;
    try {
      r = await fetch(path, {
        method, body: JSON.stringify(body), cache: "no-store",
        headers: { "Content-Type": "application/json", Accept: "application/json, application/problem+json",
                   Authorization: "Bearer " + t },
      });
    } catch (e) {
      out.className = "result error";
      out.textContent = "cannot reach gridshare: " + e.message;
      return false;
    }
    let doc = null;
    try { doc = await r.json(); } catch (e) { doc = null; }
    if (!r.ok) {
      out.className = "result error";
      out.textContent = problemText(r.status, doc);
      return false;
    }
    out.className = "result ok";
    return true;
  }

  function numberOrNull(input) {
    const v = input.value.trim();
    if (v === "") return null;
    const n = Number(v);
    return Number.isFinite(n) ? n : v; // a non-number goes to the API, which says why
  }

  function setupForms() {
    const tok = $("token");
    const tokState = $("token-state");
    const showTok = () => {
      tokState.textContent = token() ? "a token is saved in this browser" : "no token: changes are disabled";
    };
    tok.value = token();
    showTok();
    $("token-form").addEventListener("submit", (e) => {
      e.preventDefault();
      try { localStorage.setItem(TOKEN_KEY, tok.value.trim()); } catch (err) { /* private mode */ }
      showTok();
    });
    $("token-forget").addEventListener("click", () => {
      try { localStorage.removeItem(TOKEN_KEY); } catch (err) { /* private mode */ }
      tok.value = "";
      showTok();
    });

    const limitOut = $("limit-result");
    const putLimit = async (body, what) => {
      const gid = $("limit-group").value;
      if (!gid) return;
      if (await send("PUT", API + "/groups/" + encodeURIComponent(gid) + "/limit", body, limitOut)) {
        limitOut.textContent = what + " for " + gid;
        loadAll().catch(() => {});
      }
    };
    $("limit-form").addEventListener("submit", (e) => {
      e.preventDefault();
      const untilRaw = $("limit-until").value;
      const until = untilRaw ? new Date(untilRaw).toISOString() : null;
      const body = { max_current: numberOrNull($("limit-current")),
                     max_power: numberOrNull($("limit-power")), until };
      const what = body.max_current === null && body.max_power === null ? "override removed" : "override applied";
      putLimit(body, what);
    });
    $("limit-remove").addEventListener("click", () => {
      putLimit({ max_current: null, max_power: null, until: null }, "override removed");
    });

    const prioOut = $("priority-result");
    $("priority-form").addEventListener("submit", async (e) => {
      e.preventDefault();
      const cid = $("priority-charger").value;
      if (!cid) return;
      const body = { priority: numberOrNull($("priority-value")) };
      if (await send("PUT", API + "/chargers/" + encodeURIComponent(cid) + "/priority", body, prioOut)) {
        prioOut.textContent = "priority of " + cid + " set to " + body.priority;
        loadAll().catch(() => {});
      }
    });
  }

  // ------------------------------------------------------------------ start

  document.addEventListener("DOMContentLoaded", () => {
    setupForms();
    render();
    loadAll().catch(() => {});
    loadExtras();
    connect();
  });
})();
