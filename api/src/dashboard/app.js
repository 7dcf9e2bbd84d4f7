// sagaflow's operator dashboard: one page, hash routing, no framework, no
// build step and nothing fetched from anywhere but this server.
//
//   #/                 overview: counts by state and type, the last hour
//   #/sagas?state=..   the list, filtered, newest first, "Load more"
//   #/sagas/<id>       one saga: summary, data, history, Retry / Cancel
//
// Every piece of server data reaches the page through textContent (never
// innerHTML), so a saga's data cannot inject markup.
"use strict";

(function () {
  const STATES = ["RUNNING", "WAITING", "COMPENSATING", "COMPLETED", "COMPENSATED", "FAILED", "CANCELLED"];
  // Not due again on their own: a worker touches them only for an operator.
  const TERMINAL = new Set(["COMPLETED", "COMPENSATED", "FAILED", "CANCELLED"]);
  const STATE_HINT = {
    RUNNING: "due: a worker runs its current step",
    WAITING: "a command is out; waiting for the participant's reply or the deadline",
    COMPENSATING: "undoing the steps done so far",
    COMPLETED: "every step done",
    COMPENSATED: "undone after a refusal, a timeout or a retry by an operator",
    FAILED: "a compensation gave up: needs an operator (Retry resumes it, or forces the saga forward)",
    CANCELLED: "cancelled by an operator and compensated",
  };
  // Kinds of history rows that an operator caused or that need attention.
  const OPERATOR_KINDS = new Set(["OPERATOR_REQUEST", "CANCEL_REQUESTED", "MANUAL_RETRY", "FORCED_FORWARD"]);
  const BAD_KINDS = new Set(["FAILED", "TIMED_OUT", "COMPENSATION_STARTED", "REPLY_IGNORED"]);
  const TOKEN_KEY = "sagaflow.adminToken";
  const PAGE_SIZE = 50;
  const OVERVIEW_REFRESH_MS = 5000;
  const SAGA_REFRESH_MS = 2000;
  const SAGA_FAST_REFRESH_MS = 500;
  // The SVG namespace, taken from the parser rather than spelled out.
  const SVG_NS = (function () {
    const d = document.createElement("div");
    d.innerHTML = "<svg></svg>";
    return d.firstChild.namespaceURI;
  })();

  // ------------------------------------------------------------------ DOM
  function h(tag, attrs) {
    const el = document.createElement(tag);
    setAttrs(el, attrs);
    for (let i = 2; i < arguments.length; i++) append(el, arguments[i]);
    return el;
  }
  function svg(tag, attrs) {
    const el = document.createElementNS(SVG_NS, tag);
    setAttrs(el, attrs);
    for (let i = 2; i < arguments.length; i++) append(el, arguments[i]);
    return el;
  }
  function setAttrs(el, attrs) {
    if (!attrs) return;
    for (const k of Object.keys(attrs)) {
      const v = attrs[k];
      if (v === undefined || v === null || v === false) continue;
      if (k === "class") el.setAttribute("class", v);
      else if (k === "text") el.textContent = v;
      else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
      else if (k === "dataset") Object.assign(el.dataset, v);
      else el.setAttribute(k, v === true ? "" : String(v));
    }
  }
  function append(el) {
    for (let i = 1; i < arguments.length; i++) {
      const child = arguments[i];
      if (child === undefined || child === null || child === false) continue;
      if (Array.isArray(child)) child.forEach((c) => append(el, c));
      else if (child instanceof Node) el.appendChild(child);
      else el.appendChild(document.createTextNode(String(child)));
    }
  }
  const $ = (sel) => document.querySelector(sel);

  // ----------------------------------------------------------- formatting
  // Ids are UUIDv7: the first characters are a timestamp (the same for a
  // minute's sagas), the last ones random, so a short id shows both ends.
  function shortId(id) {
    const s = String(id);
    return s.length > 16 ? s.slice(0, 4) + "…" + s.slice(-8) : s;
  }
  function plural(n, one, many) {
    return n + " " + (n === 1 ? one : many || one + "s");
  }
  // "3 min ago", "in 20 s"; null for no time.
  function relative(iso, now) {
    if (!iso) return null;
    const t = Date.parse(iso);
    if (isNaN(t)) return String(iso);
    const d = Math.round(((now || Date.now()) - t) / 1000);
    const a = Math.abs(d);
    let s;
    if (a < 5) return d >= 0 ? "just now" : "now";
    if (a < 60) s = a + " s";
    else if (a < 3600) s = Math.floor(a / 60) + " min";
    else if (a < 86400) s = Math.floor(a / 3600) + " h " + (Math.floor(a / 60) % 60) + " min";
    else s = Math.floor(a / 86400) + " d " + (Math.floor(a / 3600) % 24) + " h";
    return d >= 0 ? s + " ago" : "in " + s;
  }
  function isoSeconds(iso) {
    const t = Date.parse(iso);
    return isNaN(t) ? String(iso) : new Date(t).toISOString().replace(/\.\d{3}Z$/, "Z");
  }
  // A <time> whose text is kept relative by the ticker; the tooltip is ISO.
  function timeEl(iso, opts) {
    if (!iso) return h("span", { class: "muted" }, "—");
    const withAbs = opts && opts.abs;
    const el = h("time", {
      datetime: iso,
      title: isoSeconds(iso) + " (UTC)",
      class: "rel-time",
      dataset: { rel: iso },
    }, relative(iso));
    if (!withAbs) return el;
    return h("span", { class: "time-pair" }, el, h("span", { class: "abs-time" }, isoSeconds(iso)));
  }
  function badge(state, opts) {
    const s = String(state || "?");
    return h("span", {
      class: "badge state-" + s + (opts && opts.big ? " badge-big" : ""),
      title: STATE_HINT[s] || s,
      id: opts && opts.id,
      "data-testid": opts && opts.id,
    }, s);
  }
  function truncate(s, n) {
    if (s === null || s === undefined) return "";
    s = String(s);
    return s.length > n ? s.slice(0, n - 1) + "…" : s;
  }
  function json(v, indent) {
    try {
      return JSON.stringify(v, null, indent);
    } catch (e) {
      return String(v);
    }
  }

  // Keeps every relative time (and "updated … ago") current.
  setInterval(function () {
    const now = Date.now();
    document.querySelectorAll("[data-rel]").forEach(function (el) {
      el.textContent = relative(el.dataset.rel, now);
    });
    document.querySelectorAll("[data-since]").forEach(function (el) {
      const s = Math.max(0, Math.round((now - Number(el.dataset.since)) / 1000));
      el.textContent = "updated " + s + " s ago";
      el.classList.toggle("stale", s > 20);
    });
  }, 1000);

  // ------------------------------------------------------------------ API
  class ApiError extends Error {
    constructor(status, problem, fallback) {
      const p = problem && typeof problem === "object" ? problem : {};
      // problem+json's detail already names the refused fields; the list
      // is the fallback for a problem without one.
      let msg = p.detail;
      if (!msg && Array.isArray(p.errors) && p.errors.length) {
        msg = p.errors.map((e) => e.field + ": " + e.reason).join("; ");
      }
      msg = msg || p.title || fallback || "HTTP " + status;
      super(msg);
      this.status = status;
      this.problem = p;
    }
  }
  async function api(method, path, body, token) {
    const headers = { Accept: "application/json, application/problem+json" };
    const init = { method: method, headers: headers, cache: "no-store" };
    if (body !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    if (token) headers.Authorization = "Bearer " + token;
    let r;
    try {
      r = await fetch(path, init);
    } catch (e) {
      throw new ApiError(0, null, "the server did not answer (" + e.message + ")");
    }
    const text = await r.text();
    let data = null;
    if (text) {
      try {
        data = JSON.parse(text);
      } catch (e) {
        data = null;
      }
    }
    if (!r.ok) throw new ApiError(r.status, data, r.status + " " + r.statusText);
    return data;
  }
  function query(params) {
    const q = new URLSearchParams();
    for (const k of Object.keys(params)) {
      if (params[k] !== undefined && params[k] !== null && params[k] !== "") q.set(k, params[k]);
    }
    const s = q.toString();
    return s ? "?" + s : "";
  }

  // ------------------------------------------------------------- banners
  // One error banner; `source` says who set it, so that a refresh that
  // worked clears its own earlier failure but not, say, a refused action.
  let errorSource = null;
  function showError(msg, source) {
    const el = $("#error");
    if (!msg) {
      if (source && errorSource !== source) return;
      el.hidden = true;
      el.textContent = "";
      errorSource = null;
      return;
    }
    el.textContent = msg;
    el.hidden = false;
    errorSource = source || null;
  }
  function showNotice(msg) {
    const el = $("#notice");
    el.textContent = msg || "";
    el.hidden = !msg;
  }

  // --------------------------------------------------------------- token
  function getToken() {
    try {
      return sessionStorage.getItem(TOKEN_KEY);
    } catch (e) {
      return null;
    }
  }
  function setToken(t) {
    try {
      if (t) sessionStorage.setItem(TOKEN_KEY, t);
      else sessionStorage.removeItem(TOKEN_KEY);
    } catch (e) {
      /* storage off: asked again next time */
    }
    $("#token-status").hidden = !getToken();
  }
  $("#token-forget").addEventListener("click", function () {
    setToken(null);
    showNotice("The admin token was forgotten; the next operator action asks for it.");
  });
  setToken(getToken());

  // -------------------------------------------------------------- dialog
  // Asks for a reason (and the token when none is kept); resolves to
  // {reason, token} or null when dismissed.
  let dialogResolve = null;
  function askOperator(o) {
    const dlg = $("#dialog");
    $("#dialog-title").textContent = o.title;
    $("#dialog-message").textContent = o.message;
    $("#reason-input").value = o.reason || "";
    $("#token-input").value = "";
    $("#token-field").hidden = !o.needToken;
    // Only a FAILED saga's retry has two ways to go on.
    $("#retry-mode").hidden = !o.chooseMode;
    $(o.forward ? "#retry-mode-forward" : "#retry-mode-compensate").checked = true;
    $("#dialog-ok").textContent = o.ok || "OK";
    const err = $("#dialog-error");
    err.textContent = o.error || "";
    err.hidden = !o.error;
    return new Promise(function (resolve) {
      dialogResolve = resolve;
      if (!dlg.open) dlg.showModal();
      (o.needToken && o.reason ? $("#token-input") : $("#reason-input")).focus();
    });
  }
  function closeDialog(result) {
    const dlg = $("#dialog");
    if (dlg.open) dlg.close();
    const r = dialogResolve;
    dialogResolve = null;
    if (r) r(result);
  }
  $("#dialog-form").addEventListener("submit", function (ev) {
    ev.preventDefault();
    const reason = $("#reason-input").value.trim();
    const needToken = !$("#token-field").hidden;
    const token = $("#token-input").value.trim();
    const err = $("#dialog-error");
    if (!reason) {
      err.textContent = "Please give a reason: it goes into the saga's history.";
      err.hidden = false;
      $("#reason-input").focus();
      return;
    }
    // An empty token is allowed: a server without SAGAFLOW_ADMIN_TOKEN
    // takes operator calls without one, any other answers 401 (asked again).
    const forward = !$("#retry-mode").hidden && $("#retry-mode-forward").checked;
    closeDialog({ reason: reason, token: needToken ? token : null, forward: forward });
  });
  $("#dialog-cancel").addEventListener("click", function () {
    closeDialog(null);
  });
  $("#dialog").addEventListener("cancel", function (ev) {
    ev.preventDefault();
    closeDialog(null);
  });

  // -------------------------------------------------------------- router
  let current = null; // the view on screen: {stop()}
  function parseHash() {
    const raw = location.hash.replace(/^#/, "") || "/";
    const qi = raw.indexOf("?");
    const path = qi >= 0 ? raw.slice(0, qi) : raw;
    const params = new URLSearchParams(qi >= 0 ? raw.slice(qi + 1) : "");
    return { path: path.replace(/\/+$/, "") || "/", params: params };
  }
  function route() {
    if (current) current.stop();
    current = null;
    showError(null);
    showNotice(null);
    const r = parseHash();
    const view = $("#view");
    view.textContent = "";
    document.querySelectorAll(".nav a").forEach((a) => a.classList.remove("active"));
    let m;
    if (r.path === "/") {
      $("#nav-overview").classList.add("active");
      current = overview(view);
    } else if (r.path === "/sagas") {
      $(r.params.get("state") === "FAILED" && [...r.params.keys()].length === 1 ? "#nav-failed" : "#nav-sagas")
        .classList.add("active");
      current = list(view, r.params);
    } else if ((m = r.path.match(/^\/sagas\/([^/]+)$/))) {
      current = sagaPage(view, decodeURIComponent(m[1]));
    } else {
      document.title = "not found · sagaflow";
      append(view, h("h1", null, "Nothing here"), h("p", null, h("a", { href: "#/" }, "Back to the overview")));
    }
    window.scrollTo(0, 0);
  }
  window.addEventListener("hashchange", route);

  // A timer loop: runs fn now or every `delay` ms until stopped (and can be
  // started again); skips a beat while fn is still running or the dialog
  // is open, so a refresh never re-renders under an operator's hands.
  function poller(fn, everyMs) {
    let timer = null;
    let running = false;
    let busy = false;
    let delay = everyMs;
    let gen = 0;
    async function tick(g) {
      timer = null;
      if (!running || g !== gen) return;
      if (!busy && !$("#dialog").open) {
        busy = true;
        try {
          await fn();
        } catch (e) {
          showError(String(e && e.message ? e.message : e));
        } finally {
          busy = false;
        }
      }
      if (running && g === gen && !timer) timer = setTimeout(() => tick(g), delay);
    }
    return {
      start(now) {
        running = true;
        gen++;
        if (timer) clearTimeout(timer);
        const g = gen;
        timer = setTimeout(() => tick(g), now ? 0 : delay);
      },
      every(ms) {
        delay = ms;
      },
      stop() {
        running = false;
        if (timer) clearTimeout(timer);
        timer = null;
      },
    };
  }

  // ------------------------------------------------------------ overview
  function overview(view) {
    document.title = "overview · sagaflow";
    const updated = h("span", { id: "overview-updated", class: "updated muted" }, "loading…");
    const attention = h("div", { id: "attention" });
    const tiles = h("div", { class: "tiles", id: "state-tiles" });
    const chart = h("div", { class: "chart-box", id: "chart-box" });
    const types = h("div", { id: "types-box" });
    append(view,
      h("div", { class: "page-head" }, h("h1", null, "Overview"), updated),
      attention,
      tiles,
      h("section", { class: "card" },
        h("h2", null, "Finished in the last hour, per minute"),
        chart),
      h("section", { class: "card" }, h("h2", null, "By saga type"), types));

    let lastOk = 0;
    async function load() {
      let stats;
      try {
        stats = await api("GET", "/sagas/stats");
      } catch (e) {
        showError("Could not refresh the overview: " + e.message +
          (lastOk ? " — showing what was read " + relative(new Date(lastOk).toISOString()) + "." : ""), "load");
        return;
      }
      showError(null, "load");
      lastOk = Date.now();
      updated.dataset.since = String(lastOk);
      updated.textContent = "updated 0 s ago";
      renderOverview(stats, { attention: attention, tiles: tiles, chart: chart, types: types });
    }
    const p = poller(load, OVERVIEW_REFRESH_MS);
    p.start(true);
    return p;
  }

  function renderOverview(stats, at) {
    const by = (stats && stats.by_state) || {};
    const failed = Number(by.FAILED || 0);
    at.attention.textContent = "";
    if (failed > 0) {
      append(at.attention, h("a", {
        class: "banner banner-attention",
        href: "#/sagas?state=FAILED",
        id: "attention-failed",
      }, plural(failed, "saga") + " FAILED — a compensation gave up and waits for an operator. Review them →"));
    }
    document.title = (failed ? "(" + failed + " FAILED) " : "") + "overview · sagaflow";

    at.tiles.textContent = "";
    for (const s of STATES) {
      const n = Number(by[s] || 0);
      append(at.tiles, h("a", {
        class: "tile state-" + s + (n === 0 ? " tile-zero" : ""),
        id: "tile-" + s,
        "data-testid": "tile-" + s,
        "data-state": s,
        href: "#/sagas" + query({ state: s }),
        title: STATE_HINT[s] + " — show them",
      },
      h("span", { class: "tile-count", id: "count-" + s }, String(n)),
      h("span", { class: "tile-label" }, s)));
    }

    at.chart.textContent = "";
    append(at.chart, chartLastHour((stats && stats.last_hour) || [], at.chart.clientWidth));

    at.types.textContent = "";
    const byType = (stats && stats.by_type) || [];
    if (!byType.length) {
      append(at.types, h("p", { class: "muted" }, "No sagas yet."));
      return;
    }
    const head = h("tr", null, h("th", null, "type"), h("th", { class: "num" }, "total"),
      STATES.map((s) => h("th", { class: "num" }, badge(s))));
    const rows = byType.map(function (t) {
      const counts = t.by_state || {};
      const total = STATES.reduce((acc, s) => acc + Number(counts[s] || 0), 0);
      return h("tr", { "data-type": t.type },
        h("td", null, h("a", { href: "#/sagas" + query({ type: t.type }) }, t.type)),
        h("td", { class: "num" }, String(total)),
        STATES.map(function (s) {
          const n = Number(counts[s] || 0);
          return h("td", { class: "num" }, n === 0 ? h("span", { class: "muted" }, "0")
            : h("a", { href: "#/sagas" + query({ state: s, type: t.type }), class: "count state-text-" + s }, String(n)));
        }));
    });
    append(at.types, h("table", { class: "grid", id: "types-table" }, h("thead", null, head), h("tbody", null, rows)));
  }

  // Stacked bars, one per minute of the last hour.
  function chartLastHour(lastHour, width) {
    const SERIES = [
      { key: "completed", label: "completed", cls: "COMPLETED" },
      { key: "compensated", label: "compensated", cls: "COMPENSATED" },
      { key: "failed", label: "failed", cls: "FAILED" },
      { key: "cancelled", label: "cancelled", cls: "CANCELLED" },
    ];
    const MIN = 60000;
    const buckets = new Map();
    let end = Math.floor(Date.now() / MIN) * MIN;
    for (const m of lastHour) {
      const t = Date.parse(m.minute);
      if (isNaN(t)) continue;
      const k = Math.floor(t / MIN) * MIN;
      buckets.set(k, m);
      if (k > end) end = k; // the server's clock is ahead of ours
    }
    const start = end - 59 * MIN;
    const cols = [];
    let max = 0;
    let total = 0;
    for (let i = 0; i < 60; i++) {
      const k = start + i * MIN;
      const m = buckets.get(k) || {};
      const v = SERIES.map((s) => Number(m[s.key] || 0));
      const sum = v.reduce((a, b) => a + b, 0);
      max = Math.max(max, sum);
      total += sum;
      cols.push({ t: k, v: v, sum: sum });
    }
    const W = Math.max(360, Math.round(width || 900)), H = 200, L = 40, R = 10, T = 10, B = 28;
    const bw = (W - L - R) / 60;
    const top = niceMax(max);
    const y = (n) => T + (H - T - B) * (1 - n / top);
    const g = svg("svg", {
      viewBox: "0 0 " + W + " " + H,
      class: "chart",
      id: "chart-last-hour",
      "data-testid": "chart-last-hour",
      role: "img",
      "aria-label": "sagas finished per minute in the last hour: " + total,
    });
    for (const f of [0, 0.5, 1]) {
      const n = top * f;
      append(g,
        svg("line", { x1: L, x2: W - R, y1: y(n), y2: y(n), class: "grid-line" }),
        svg("text", { x: L - 6, y: y(n) + 4, class: "axis", "text-anchor": "end" }, String(Math.round(n))));
    }
    cols.forEach(function (c, i) {
      const x = L + i * bw + 1;
      let acc = 0;
      const label = new Date(c.t).toISOString().slice(11, 16) + " UTC — " +
        SERIES.map((s, j) => s.label + " " + c.v[j]).join(", ");
      const grp = svg("g", { class: "bar", "data-minute": new Date(c.t).toISOString() }, svg("title", null, label));
      // A transparent full-height hit area so that the tooltip shows on empty minutes too.
      append(grp, svg("rect", { x: x - 1, y: T, width: bw, height: H - T - B, class: "hit" }));
      SERIES.forEach(function (s, j) {
        const n = c.v[j];
        if (!n) return;
        const y0 = y(acc), y1 = y(acc + n);
        acc += n;
        append(grp, svg("rect", { x: x, y: y1, width: Math.max(1, bw - 2), height: Math.max(1, y0 - y1), class: "fill-" + s.cls }));
      });
      append(g, grp);
    });
    for (const [i, text, anchor] of [[0, "60 min ago", "start"], [30, "30 min ago", "middle"], [59, "now", "end"]]) {
      append(g, svg("text", { x: L + i * bw + (anchor === "end" ? bw : 0), y: H - 8, class: "axis", "text-anchor": anchor }, text));
    }
    const legend = h("div", { class: "legend" },
      SERIES.map((s) => h("span", { class: "legend-item" }, h("span", { class: "swatch fill-bg-" + s.cls }), s.label)),
      h("span", { class: "muted" }, " · " + total + " in the hour"));
    return [g, legend];
  }
  // The y axis' top: at least 4 and even, so that its middle is whole.
  function niceMax(n) {
    return Math.max(4, Math.ceil(n / 2) * 2);
  }

  // ---------------------------------------------------------------- list
  function list(view, params) {
    const f = {
      state: params.get("state") || "",
      type: params.get("type") || "",
      order_no: params.get("order_no") || "",
      created_after: params.get("created_after") || "",
      created_before: params.get("created_before") || "",
    };
    const described = [f.state, f.type, f.order_no && "order " + f.order_no].filter(Boolean).join(", ");
    document.title = (described ? described + " · " : "") + "sagas · sagaflow";

    const stateSel = h("select", { id: "filter-state", name: "state", "data-testid": "filter-state" },
      h("option", { value: "" }, "any state"),
      STATES.map((s) => h("option", { value: s, selected: s === f.state }, s)));
    const typeIn = h("input", {
      id: "filter-type", name: "type", "data-testid": "filter-type", list: "known-types",
      value: f.type, placeholder: "any type", autocomplete: "off", size: 16,
    });
    const typeList = h("datalist", { id: "known-types" });
    const orderIn = h("input", {
      id: "filter-order-no", name: "order_no", "data-testid": "filter-order-no",
      value: f.order_no, placeholder: "ORD-…", autocomplete: "off", size: 22,
    });
    const afterIn = h("input", { id: "filter-created-after", type: "datetime-local", value: toLocalInput(f.created_after) });
    const beforeIn = h("input", { id: "filter-created-before", type: "datetime-local", value: toLocalInput(f.created_before) });
    const form = h("form", { class: "filters card", id: "filter-form" },
      h("label", null, "State", stateSel),
      h("label", null, "Type", typeIn, typeList),
      h("label", null, "Order number", orderIn),
      h("label", null, "Created after", afterIn),
      h("label", null, "Created before", beforeIn),
      h("div", { class: "filter-buttons" },
        h("button", { type: "submit", id: "filter-apply", class: "primary", "data-testid": "filter-apply" }, "Apply"),
        h("button", { type: "button", id: "filter-clear", "data-testid": "filter-clear",
          onclick: function () { location.hash = "#/sagas"; } }, "Clear")));
    form.addEventListener("submit", function (ev) {
      ev.preventDefault();
      const next = "#/sagas" + query({
        state: stateSel.value,
        type: typeIn.value.trim(),
        order_no: orderIn.value.trim(),
        created_after: fromLocalInput(afterIn.value),
        created_before: fromLocalInput(beforeIn.value),
      });
      if (next === location.hash) route(); // same filter: reload
      else location.hash = next;
    });

    const count = h("span", { id: "list-count", class: "muted" }, "loading…");
    const tbody = h("tbody", { id: "saga-rows" });
    const table = h("table", { class: "grid sagas", id: "saga-table", "data-testid": "saga-table" },
      h("thead", null, h("tr", null,
        ["id", "type", "state", "step / attempt", "order", "last error", "created", "updated"]
          .map((c) => h("th", null, c)))),
      tbody);
    const more = h("button", { type: "button", id: "load-more", "data-testid": "load-more", hidden: true }, "Load more");
    const refresh = h("button", { type: "button", id: "list-refresh", onclick: () => route() }, "Refresh");
    append(view,
      h("div", { class: "page-head" }, h("h1", null, "Sagas"), count, refresh),
      form,
      h("div", { class: "table-wrap" }, table),
      h("div", { class: "more" }, more));

    let stopped = false;
    let cursor = null;
    let shown = 0;
    async function page(first) {
      more.disabled = true;
      let res;
      try {
        res = await api("GET", "/sagas" + query({
          state: f.state, type: f.type, order_no: f.order_no,
          created_after: f.created_after, created_before: f.created_before,
          limit: PAGE_SIZE, cursor: first ? null : cursor,
        }));
      } catch (e) {
        if (stopped) return;
        showError("Could not load sagas: " + e.message);
        count.textContent = "";
        more.disabled = false;
        return;
      }
      if (stopped) return;
      const items = (res && res.items) || [];
      items.forEach((s) => append(tbody, sagaRow(s)));
      shown += items.length;
      cursor = res && res.next_cursor;
      more.hidden = !cursor;
      more.disabled = false;
      if (shown === 0) {
        append(tbody, h("tr", { class: "empty" }, h("td", { colspan: 8 },
          described ? "No saga matches these filters." : "No sagas yet.")));
      }
      count.textContent = plural(shown, "saga") + (cursor ? " shown, more below" : "") +
        (described ? " · " + described : "");
    }
    more.addEventListener("click", () => page(false));
    page(true);
    // Known types for the type field's suggestions; not essential.
    api("GET", "/sagas/stats").then(function (st) {
      ((st && st.by_type) || []).forEach((t) => append(typeList, h("option", { value: t.type })));
    }, function () {});
    return { stop() { stopped = true; } };
  }

  function sagaRow(s) {
    const href = "#/sagas/" + encodeURIComponent(s.id);
    const tr = h("tr", {
      "data-saga-id": s.id,
      "data-state": s.state,
      class: "clickable",
      tabindex: 0,
      title: "open saga " + s.id,
    },
    h("td", { class: "mono" }, h("a", { href: href, class: "saga-link" }, shortId(s.id))),
    h("td", null, s.type + (s.version && s.version !== 1 ? " v" + s.version : "")),
    h("td", null, badge(s.state), s.operator_request
      ? h("span", { class: "pending", title: "operator request waiting for a worker" }, " ⏳ " + s.operator_request) : null),
    h("td", { class: "num" }, "step " + s.current_step + (s.step_name ? " " + s.step_name : "") + " · #" + s.attempt),
    h("td", { class: "mono" }, s.order_no || h("span", { class: "muted" }, "—")),
    h("td", { class: "error-text", title: s.last_error || "" }, truncate(s.last_error, 70)),
    h("td", null, timeEl(s.created_at)),
    h("td", null, timeEl(s.updated_at)));
    tr.addEventListener("click", function (ev) {
      if (ev.target.closest("a")) return; // the link navigates by itself
      if (window.getSelection && String(window.getSelection())) return; // copying text
      location.hash = href;
    });
    tr.addEventListener("keydown", function (ev) {
      if (ev.key === "Enter") location.hash = href;
    });
    return tr;
  }

  // <input type="datetime-local"> speaks local time; the API speaks UTC.
  function toLocalInput(iso) {
    const t = Date.parse(iso);
    if (!iso || isNaN(t)) return "";
    const d = new Date(t - new Date(t).getTimezoneOffset() * 60000);
    return d.toISOString().slice(0, 16);
  }
  function fromLocalInput(v) {
    if (!v) return "";
    const t = new Date(v);
    return isNaN(t.getTime()) ? "" : t.toISOString();
  }

  // ---------------------------------------------------------------- saga
  function sagaPage(view, id) {
    document.title = "saga " + shortId(id) + " · sagaflow";
    const box = h("div", { id: "saga-page", "data-saga-id": id }, h("p", { class: "muted" }, "loading…"));
    append(view, box);

    let stopped = false;
    let saga = null;
    let signature = null;
    // After an operator action: {what, state, done} until a worker applied it.
    let following = null;
    const updatedNote = h("span", { id: "saga-updated", class: "updated muted" });
    const p = poller(load, SAGA_REFRESH_MS);

    async function load() {
      let s;
      try {
        s = await api("GET", "/sagas/" + encodeURIComponent(id));
      } catch (e) {
        if (stopped) return;
        if (e.status === 404) {
          box.textContent = "";
          append(box, h("h1", null, "Saga not found"),
            h("p", null, "No saga has the id ", h("code", null, id), ". ", h("a", { href: "#/sagas" }, "All sagas")));
          p.stop();
          return;
        }
        showError("Could not load saga " + shortId(id) + ": " + e.message, "load");
        return;
      }
      if (stopped) return;
      showError(null, "load");
      saga = s;
      const sig = [s.state, s.updated_at, s.operator_request, s.current_step, s.attempt,
        (s.events || []).length, s.lease_owner, s.lease_expires_at].join("|");
      if (sig !== signature) {
        signature = sig;
        render(s);
      }
      // Nothing moves a final saga any more unless an operator acts.
      const live = !TERMINAL.has(s.state) || !!s.operator_request;
      if (following && !following.done && (s.state !== following.state || !s.operator_request)) {
        following.done = true;
        showNotice(following.what + " applied: " + following.state + " → " + s.state +
          (live ? ". Following it…" : "."));
      } else if (following && following.done && !live) {
        showNotice(following.what + " done: the saga is " + s.state + ".");
        following = null;
      }
      p.every(following && !following.done ? SAGA_FAST_REFRESH_MS : SAGA_REFRESH_MS);
      if (live) {
        updatedNote.dataset.since = String(Date.now());
      } else {
        p.stop();
        delete updatedNote.dataset.since;
        updatedNote.textContent = "final state: not refreshing";
      }
    }

    function render(s) {
      document.title = s.state + " · saga " + shortId(s.id) + " · sagaflow";
      box.textContent = "";
      const canRetry = ["FAILED", "WAITING", "COMPENSATING"].includes(s.state) && !s.operator_request;
      const canCancel = ["RUNNING", "WAITING", "COMPENSATING"].includes(s.state) && !s.operator_request;
      const retryBtn = h("button", {
        type: "button", id: "btn-retry", "data-testid": "btn-retry", class: "action",
        disabled: !canRetry,
        title: s.operator_request ? "a " + s.operator_request + " request is waiting for a worker"
          : canRetry ? retryExplain(s.state) : "Retry is for FAILED, WAITING and COMPENSATING sagas",
        onclick: () => act("retry"),
      }, "Retry…");
      const cancelBtn = h("button", {
        type: "button", id: "btn-cancel", "data-testid": "btn-cancel", class: "action danger",
        disabled: !canCancel,
        title: s.operator_request ? "a " + s.operator_request + " request is waiting for a worker"
          : canCancel ? "compensate the steps done so far; the saga ends CANCELLED"
            : "Cancel is for RUNNING, WAITING and COMPENSATING sagas",
        onclick: () => act("cancel"),
      }, "Cancel…");

      append(box,
        h("div", { class: "page-head saga-head" },
          h("h1", null, "Saga ", h("span", { class: "mono", id: "saga-id", title: s.id }, s.id)),
          badge(s.state, { big: true, id: "saga-state" }),
          updatedNote),
        h("p", { class: "state-hint muted", id: "saga-state-hint" }, STATE_HINT[s.state] || ""),
        s.operator_request ? h("div", { class: "banner banner-pending", id: "saga-pending" },
          "⏳ " + s.operator_request + " requested" + (s.operator_reason ? " (“" + s.operator_reason + "”)" : "") +
          "; a worker applies it within a moment.") : null,
        h("div", { class: "actions" }, retryBtn, cancelBtn,
          h("a", { href: "#/sagas" + query({ type: s.type }) }, "← all " + s.type + " sagas")),
        h("div", { class: "columns" },
          h("section", { class: "card" }, h("h2", null, "Summary"), summary(s)),
          h("section", { class: "card" }, h("h2", null, "Data"),
            h("pre", { class: "json", id: "saga-data", "data-testid": "saga-data" }, json(s.data, 2)))),
        h("section", { class: "card" },
          h("h2", null, "History ", h("span", { class: "muted" }, "(" + plural((s.events || []).length, "event") + ", oldest first)")),
          timeline(s.events || [])));
    }

    function summary(s) {
      const row = (k, v, id) => [h("dt", null, k), h("dd", { id: id }, v)];
      const orderNo = s.order_no || (s.data && typeof s.data.order_no === "string" ? s.data.order_no : null);
      return h("dl", { class: "summary", id: "saga-summary" },
        row("id", h("span", { class: "mono" }, s.id)),
        row("type", s.type + " (version " + s.version + ")", "saga-type"),
        row("state", badge(s.state)),
        row("current step", String(s.current_step) + (s.step_name ? " (" + s.step_name + ")" : ""), "saga-step"),
        row("attempt", String(s.attempt), "saga-attempt"),
        row("order", orderNo ? h("a", { href: "#/sagas" + query({ order_no: orderNo }), class: "mono" }, orderNo) : h("span", { class: "muted" }, "—"), "saga-order-no"),
        row("last error", s.last_error ? h("span", { class: "error-text" }, s.last_error) : h("span", { class: "muted" }, "—"), "saga-last-error"),
        row("failure reason", s.failure_reason || h("span", { class: "muted" }, "—"), "saga-failure-reason"),
        row("operator request", s.operator_request || h("span", { class: "muted" }, "—"), "saga-operator-request"),
        row("next run", timeEl(s.next_run_at, { abs: true })),
        row("deadline", timeEl(s.deadline, { abs: true })),
        row("lease", s.lease_owner ? [h("span", { class: "mono" }, s.lease_owner), " until ", timeEl(s.lease_expires_at, { abs: true })] : h("span", { class: "muted" }, "—")),
        row("created", timeEl(s.created_at, { abs: true })),
        row("updated", timeEl(s.updated_at, { abs: true })));
    }

    function timeline(events) {
      if (!events.length) return h("p", { class: "muted" }, "No history rows.");
      const rows = events.map(function (e) {
        const cls = OPERATOR_KINDS.has(e.kind) ? "ev-operator" : BAD_KINDS.has(e.kind) ? "ev-bad" : "";
        const detail = e.detail === null || e.detail === undefined ? "" : json(e.detail);
        const detailCell = detail.length > 120
          ? h("details", null, h("summary", { class: "mono" }, truncate(detail, 100)), h("pre", { class: "json" }, json(e.detail, 2)))
          : h("code", { class: "mono" }, detail);
        const trans = e.from_state || e.to_state
          ? (e.from_state === e.to_state ? badge(e.to_state) : [e.from_state ? badge(e.from_state) : "·", " → ", e.to_state ? badge(e.to_state) : "·"])
          : h("span", { class: "muted" }, "—");
        return h("tr", { class: cls, "data-event-id": e.id, "data-kind": e.kind },
          h("td", { class: "nowrap" }, timeEl(e.at), h("div", { class: "abs-time" }, isoSeconds(e.at))),
          h("td", null, h("span", { class: "kind" }, e.kind)),
          h("td", { class: "num" }, e.step === null || e.step === undefined ? "—" : String(e.step)),
          h("td", { class: "num" }, e.attempt === null || e.attempt === undefined ? "—" : String(e.attempt)),
          h("td", { class: "nowrap" }, trans),
          h("td", { class: "mono" }, e.actor || "—"),
          h("td", { class: "detail" }, detailCell));
      });
      return h("div", { class: "table-wrap" }, h("table", { class: "grid timeline", id: "saga-events", "data-testid": "saga-events" },
        h("thead", null, h("tr", null, ["time", "kind", "step", "attempt", "state", "actor", "detail"].map((c) => h("th", null, c)))),
        h("tbody", null, rows)));
    }

    function retryExplain(state) {
      return state === "FAILED"
        ? "resume the compensation that gave up (ends COMPENSATED), or force the saga forward (ends COMPLETED)"
        : "run the current step again now, with its attempts reset";
    }

    async function act(kind) {
      if (!saga) return;
      const what = kind === "retry" ? "Retry" : "Cancel";
      const message = (kind === "retry" ? "Retry: " + retryExplain(saga.state)
        : "Cancel: compensate the steps done so far; the saga ends CANCELLED") +
        ". Saga " + shortId(saga.id) + " (" + saga.type + ") is " + saga.state + " now.";
      let reason = "";
      let error = null;
      let forward = false;
      for (;;) {
        const answer = await askOperator({
          title: what + " saga " + shortId(saga.id) + "?",
          message: message,
          reason: reason,
          needToken: !getToken(),
          chooseMode: kind === "retry" && saga.state === "FAILED",
          forward: forward,
          error: error,
          ok: what,
        });
        if (!answer || stopped) return;
        reason = answer.reason;
        forward = answer.forward;
        if (answer.token) setToken(answer.token);
        const before = saga.state;
        const endpoint = answer.forward ? "force-forward" : kind;
        const done = answer.forward ? "Force forward" : what;
        try {
          await api("POST", "/sagas/" + encodeURIComponent(saga.id) + "/" + endpoint, { reason: reason }, getToken());
        } catch (e) {
          if (e.status === 401) {
            setToken(null);
            error = "The admin token was refused (" + e.message + "). Enter it again.";
            continue;
          }
          showError(done + " refused: " + e.message, "action");
          signature = null; // show what the saga is now
          p.start(true);
          return;
        }
        showError(null, "action");
        showNotice(done + " requested (“" + reason + "”); waiting for a worker to apply it…");
        following = { what: done, state: before, done: false };
        signature = null;
        p.every(SAGA_FAST_REFRESH_MS);
        p.start(true);
        return;
      }
    }

    p.start(true);
    return {
      stop() {
        stopped = true;
        p.stop();
      },
    };
  }

  // Go.
  route();
})();
