// sagaflow's operator dashboard: one page, hash routing, no framework, no
// build step and nothing fetched from anywhere but this server.
//
//   #/                 overview: counts by state and type, the last hour
//   #/sagas?state=..   the list, filtered, newest first, "Load more"
//   #/sagas/<id>       one saga: summary, data, history, Retry / Cancel /
//                      Mark resolved
//   #/attention        needs attention: the FAILED sagas oldest first, with
//                      per-row and bulk actions, and the queue-health report
//
// Every piece of server data reaches the page through textContent (never
// innerHTML), so a saga's data cannot inject markup.
"use strict";

(function () {
  const STATES = ["RUNNING", "WAITING", "COMPENSATING", "COMPLETED", "COMPENSATED", "FAILED", "CANCELLED", "RESOLVED"];
  // Not due again on their own: a worker touches them only for an operator.
  const TERMINAL = new Set(["COMPLETED", "COMPENSATED", "FAILED", "CANCELLED", "RESOLVED"]);
  const STATE_HINT = {
    RUNNING: "due: a worker runs its current step",
    WAITING: "a command is out; waiting for the participant's reply or the deadline",
    COMPENSATING: "undoing the steps done so far",
    COMPLETED: "every step done",
    COMPENSATED: "undone after a refusal, a timeout or a retry by an operator",
    FAILED: "a compensation gave up: needs an operator (Retry resumes it, or forces the saga forward)",
    CANCELLED: "cancelled by an operator and compensated",
    RESOLVED: "a FAILED saga an operator settled outside sagaflow, with the money effect they asserted",
  };
  // What each asserted money effect of a resolve means (the dialog's radio
  // buttons say the same).
  const RESOLUTIONS = {
    NONE: "no money moved: the saga's ledger entries net to zero; the order becomes FAILED",
    APPLIED: "the movement stands: the order becomes PAID (REFUNDED for a refund saga)",
    SETTLED_OUTSIDE: "the movement stays in the ledger but was settled outside sagaflow; the order becomes FAILED",
  };
  // Kinds of history rows that an operator caused or that need attention.
  const OPERATOR_KINDS = new Set(["OPERATOR_REQUEST", "CANCEL_REQUESTED", "MANUAL_RETRY", "FORCED_FORWARD", "RESOLVED"]);
  const BAD_KINDS = new Set(["FAILED", "TIMED_OUT", "COMPENSATION_STARTED", "REPLY_IGNORED"]);
  const TOKEN_KEY = "sagaflow.adminToken";
  // The operator's name for the audit trail: not a secret, so it outlives
  // the tab (localStorage), unlike the token.
  const ACTOR_KEY = "sagaflow.actor";
  const PAGE_SIZE = 50;
  const OVERVIEW_REFRESH_MS = 5000;
  const SAGA_REFRESH_MS = 2000;
  const SAGA_FAST_REFRESH_MS = 500;
  const ATTENTION_REFRESH_MS = 5000;
  const ATTENTION_FAST_REFRESH_MS = 1000;
  const ATTENTION_PAGE = 100;
  const NAV_REFRESH_MS = 15000;
  const QUEUE_HEALTH_REFRESH_MS = 30000;
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
  // A length of time for a person: "42 s", "7 min", "3 h 12 min", "2 d 4 h".
  function duration(seconds) {
    const a = Math.max(0, Math.floor(Number(seconds) || 0));
    if (a < 60) return a + " s";
    if (a < 3600) return Math.floor(a / 60) + " min";
    if (a < 86400) return Math.floor(a / 3600) + " h " + (Math.floor(a / 60) % 60) + " min";
    return Math.floor(a / 86400) + " d " + (Math.floor(a / 3600) % 24) + " h";
  }
  // Like duration, with a tenth of a second below ten seconds (database
  // figures: "0.4 s").
  function durationFine(seconds) {
    const n = Number(seconds) || 0;
    return n < 10 ? (Math.round(n * 10) / 10).toFixed(1) + " s" : duration(n);
  }
  // "3 min ago", "in 20 s"; null for no time.
  function relative(iso, now) {
    if (!iso) return null;
    const t = Date.parse(iso);
    if (isNaN(t)) return String(iso);
    const d = Math.round(((now || Date.now()) - t) / 1000);
    const a = Math.abs(d);
    if (a < 5) return d >= 0 ? "just now" : "now";
    const s = duration(a);
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
    // How long a FAILED saga has waited: since = when it started waiting.
    document.querySelectorAll("[data-waited-since]").forEach(function (el) {
      el.textContent = duration((now - Number(el.dataset.waitedSince)) / 1000);
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
    // Views that wait for a token (the queue-health panel) listen.
    window.dispatchEvent(new CustomEvent("sagaflow:token"));
  }
  $("#token-forget").addEventListener("click", function () {
    setToken(null);
    showNotice("The admin token was forgotten; the next operator action asks for it.");
  });
  setToken(getToken());

  // -------------------------------------------------------------- actor
  function getActor() {
    try {
      return localStorage.getItem(ACTOR_KEY) || "";
    } catch (e) {
      return "";
    }
  }
  function setActor(a) {
    try {
      if (a) localStorage.setItem(ACTOR_KEY, a);
      else localStorage.removeItem(ACTOR_KEY);
    } catch (e) {
      /* storage off: typed again next time */
    }
    window.dispatchEvent(new CustomEvent("sagaflow:actor"));
  }

  // -------------------------------------------------------------- dialog
  // Asks for a reason (and the token when none is kept, the operator's
  // name, and what the action needs: a FAILED saga's way on, a resolve's
  // money effect); resolves to {reason, token, actor, forward, resolution}
  // or null when dismissed. `noReason` makes it ask for the token only.
  let dialogResolve = null;
  function askOperator(o) {
    const dlg = $("#dialog");
    const withReason = !o.noReason;
    $("#dialog-title").textContent = o.title;
    $("#dialog-message").textContent = o.message;
    $("#reason-field").hidden = !withReason;
    $("#reason-input").value = o.reason || "";
    $("#actor-field").hidden = !withReason;
    $("#actor-input").value = o.actor !== undefined && o.actor !== null ? o.actor : getActor();
    $("#token-input").value = "";
    $("#token-field").hidden = !o.needToken;
    // Only a FAILED saga's retry has two ways to go on.
    $("#retry-mode").hidden = !o.chooseMode;
    $(o.forward ? "#retry-mode-forward" : "#retry-mode-compensate").checked = true;
    // A resolve's money effect is a required, deliberate choice: nothing
    // is preselected unless the operator chose it already.
    $("#resolution").hidden = !o.chooseResolution;
    document.querySelectorAll("#resolution input[name=resolution]").forEach(function (r) {
      r.checked = r.value === o.resolution;
    });
    $("#dialog-ok").textContent = o.ok || "OK";
    const err = $("#dialog-error");
    err.textContent = o.error || "";
    err.hidden = !o.error;
    return new Promise(function (resolve) {
      dialogResolve = resolve;
      if (!dlg.open) dlg.showModal();
      let first;
      if (!withReason || (o.needToken && o.reason)) first = $("#token-input");
      else if (o.chooseResolution && !o.resolution) first = $("#resolution-none");
      else first = $("#reason-input");
      first.focus();
    });
  }
  function closeDialog(result) {
    const dlg = $("#dialog");
    if (dlg.open) dlg.close();
    const r = dialogResolve;
    dialogResolve = null;
    if (r) r(result);
  }
  function chosenResolution() {
    const r = document.querySelector("#resolution input[name=resolution]:checked");
    return r ? r.value : null;
  }
  $("#dialog-form").addEventListener("submit", function (ev) {
    ev.preventDefault();
    const withReason = !$("#reason-field").hidden;
    const reason = $("#reason-input").value.trim();
    const needToken = !$("#token-field").hidden;
    const token = $("#token-input").value.trim();
    const err = $("#dialog-error");
    const resolution = $("#resolution").hidden ? null : chosenResolution();
    if (!$("#resolution").hidden && !resolution) {
      err.textContent = "Please choose what happened to the money: it decides what the order becomes.";
      err.hidden = false;
      $("#resolution-none").focus();
      return;
    }
    if (withReason && !reason) {
      err.textContent = "Please give a reason: it goes into the saga's history.";
      err.hidden = false;
      $("#reason-input").focus();
      return;
    }
    const actor = withReason ? $("#actor-input").value.trim() : "";
    if (withReason) setActor(actor);
    // An empty token is allowed: a server without SAGAFLOW_ADMIN_TOKEN
    // takes operator calls without one, any other answers 401 (asked again).
    const forward = !$("#retry-mode").hidden && $("#retry-mode-forward").checked;
    closeDialog({
      reason: reason,
      token: needToken ? token : null,
      actor: actor || null,
      forward: forward,
      resolution: resolution,
    });
  });
  $("#dialog-cancel").addEventListener("click", function () {
    closeDialog(null);
  });
  $("#dialog").addEventListener("cancel", function (ev) {
    ev.preventDefault();
    closeDialog(null);
  });

  // ------------------------------------------------------ operator calls
  // An operator call with the kept token, asking for it (token only) when
  // none is kept or it is refused. Resolves to {data} or {dismissed: true};
  // throws the ApiError of any other refusal.
  async function operatorCall(method, path, body, ask) {
    let token = getToken();
    let error = null;
    for (;;) {
      if (token === null || error) {
        const a = await askOperator({
          title: ask.title,
          message: ask.message,
          noReason: true,
          needToken: true,
          ok: ask.ok || "Continue",
          error: error,
        });
        if (!a) return { dismissed: true };
        token = a.token || "";
        if (a.token) setToken(a.token);
      }
      try {
        return { data: await api(method, path, body, token || null) };
      } catch (e) {
        if (e.status !== 401) throw e;
        setToken(null);
        error = "The admin token was refused (" + e.message + "). Enter it again.";
      }
    }
  }

  // What an action on one saga is called, by endpoint.
  const ACTION_NAMES = {
    retry: "Retry",
    "force-forward": "Force forward",
    cancel: "Cancel",
    resolve: "Mark resolved",
  };
  function retryExplain(state) {
    return state === "FAILED"
      ? "resume the compensation that gave up (ends COMPENSATED), or force the saga forward (ends COMPLETED)"
      : "run the current step again now, with its attempts reset";
  }
  function sagaLabel(saga) {
    return "Saga " + shortId(saga.id) + " (" + saga.type + (saga.order_no ? ", order " + saga.order_no : "") + ")";
  }
  // Files `kind` ("retry", "cancel" or "resolve") on `saga` through the
  // dialog: asks (again, keeping what was typed, when the token is
  // refused), then posts. A FAILED saga's retry lets the operator choose
  // to force it forward (`opts.forward` preselects that). Resolves to
  // {done, reason, endpoint, result} once filed, or null when dismissed;
  // throws the ApiError (with `done`) of any other refusal.
  async function fileAction(saga, kind, opts) {
    const what = ACTION_NAMES[kind];
    let message;
    if (kind === "retry") message = "Retry: " + retryExplain(saga.state);
    else if (kind === "cancel") message = "Cancel: compensate the steps done so far; the saga ends CANCELLED";
    else {
      message = "Mark resolved: you settled it outside sagaflow; it ends RESOLVED and is never retried" +
        (saga.step_name ? ". Failing step: " + saga.step_name : "") +
        (saga.last_error ? "; last error: " + truncate(saga.last_error, 120) : "");
    }
    message += ". " + sagaLabel(saga) + " is " + saga.state + " now.";
    let reason = "";
    let actor = null;
    let error = null;
    let forward = !!(opts && opts.forward);
    let resolution = null;
    for (;;) {
      const answer = await askOperator({
        title: (kind === "resolve" ? "Mark saga " + shortId(saga.id) + " resolved?" : what + " saga " + shortId(saga.id) + "?"),
        message: message,
        reason: reason,
        actor: actor,
        needToken: !getToken(),
        chooseMode: kind === "retry" && saga.state === "FAILED",
        forward: forward,
        chooseResolution: kind === "resolve",
        resolution: resolution,
        error: error,
        ok: kind === "retry" && saga.state === "FAILED" ? "Go on" : what,
      });
      if (!answer) return null;
      reason = answer.reason;
      actor = answer.actor || "";
      forward = answer.forward;
      resolution = answer.resolution;
      if (answer.token) setToken(answer.token);
      const endpoint = kind === "retry" && answer.forward ? "force-forward" : kind;
      const done = ACTION_NAMES[endpoint];
      const body = { reason: reason };
      if (answer.actor) body.actor = answer.actor;
      if (endpoint === "resolve") body.resolution = resolution;
      try {
        const result = await api("POST", "/sagas/" + encodeURIComponent(saga.id) + "/" + endpoint, body, getToken());
        return { done: done, reason: reason, endpoint: endpoint, result: result };
      } catch (e) {
        if (e.status === 401) {
          setToken(null);
          error = "The admin token was refused (" + e.message + "). Enter it again.";
          continue;
        }
        e.done = done;
        throw e;
      }
    }
  }

  // ---------------------------------------------------- FAILED count (nav)
  function setNavCount(n) {
    const el = $("#nav-attention-count");
    if (n === null || n === undefined || isNaN(Number(n))) return;
    el.textContent = String(n);
    el.hidden = false;
    el.classList.toggle("nav-count-zero", Number(n) === 0);
    $("#nav-attention").setAttribute("aria-label", "Needs attention: " + plural(Number(n), "FAILED saga"));
  }
  async function refreshNavCount() {
    try {
      const st = await api("GET", "/sagas/stats");
      setNavCount(Number(((st && st.by_state) || {}).FAILED || 0));
    } catch (e) {
      /* the views report errors; the badge keeps its last figure */
    }
  }
  setInterval(refreshNavCount, NAV_REFRESH_MS);

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
      $("#nav-sagas").classList.add("active");
      current = list(view, r.params);
    } else if (r.path === "/attention") {
      $("#nav-attention").classList.add("active");
      current = attention(view);
    } else if ((m = r.path.match(/^\/sagas\/([^/]+)$/))) {
      current = sagaPage(view, decodeURIComponent(m[1]));
    } else {
      document.title = "not found · sagaflow";
      append(view, h("h1", null, "Nothing here"), h("p", null, h("a", { href: "#/" }, "Back to the overview")));
    }
    document.querySelectorAll(".nav a").forEach(function (a) {
      if (a.classList.contains("active")) a.setAttribute("aria-current", "page");
      else a.removeAttribute("aria-current");
    });
    refreshNavCount();
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
    const attention = h("div", { id: "overview-attention" });
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
    setNavCount(failed);
    at.attention.textContent = "";
    if (failed > 0) {
      append(at.attention, h("a", {
        class: "banner banner-attention",
        href: "#/attention",
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
      const canResolve = s.state === "FAILED" && !s.operator_request;
      const resolveBtn = h("button", {
        type: "button", id: "btn-resolve", "data-testid": "btn-resolve", class: "action",
        disabled: !canResolve,
        title: s.operator_request ? "a " + s.operator_request + " request is waiting for a worker"
          : canResolve ? "you settled it outside sagaflow: it ends RESOLVED with the money effect you assert"
            : "Mark resolved is for FAILED sagas",
        onclick: () => act("resolve"),
      }, "Mark resolved…");

      append(box,
        h("div", { class: "page-head saga-head" },
          h("h1", null, "Saga ", h("span", { class: "mono", id: "saga-id", title: s.id }, s.id)),
          badge(s.state, { big: true, id: "saga-state" }),
          updatedNote),
        h("p", { class: "state-hint muted", id: "saga-state-hint" }, STATE_HINT[s.state] || ""),
        s.operator_request ? h("div", { class: "banner banner-pending", id: "saga-pending" },
          "⏳ " + s.operator_request + " requested" + (s.operator_reason ? " (“" + s.operator_reason + "”)" : "") +
          "; a worker applies it within a moment.") : null,
        h("div", { class: "actions" }, retryBtn, resolveBtn, cancelBtn,
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
        s.resolution ? row("resolution", [h("b", null, s.resolution), " — " + (RESOLUTIONS[s.resolution] || "")], "saga-resolution") : null,
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

    async function act(kind) {
      if (!saga) return;
      const before = saga.state;
      let filed;
      try {
        filed = await fileAction(saga, kind);
      } catch (e) {
        if (stopped) return;
        showError(e.done + " refused: " + e.message, "action");
        signature = null; // show what the saga is now
        p.start(true);
        return;
      }
      if (!filed || stopped) return;
      showError(null, "action");
      showNotice(filed.done + " requested (“" + filed.reason + "”); waiting for a worker to apply it…");
      following = { what: filed.done, state: before, done: false };
      signature = null;
      p.every(SAGA_FAST_REFRESH_MS);
      p.start(true);
    }

    p.start(true);
    return {
      stop() {
        stopped = true;
        p.stop();
      },
    };
  }

  // ----------------------------------------------------------- attention
  // The FAILED sagas, oldest first (the ones that waited longest on top),
  // each with what failed and the three ways out; bulk actions over a
  // filter; and the queue-health report.
  function attention(view) {
    document.title = "needs attention · sagaflow";
    let stopped = false;
    let limit = ATTENTION_PAGE;
    let signature = null;
    let focusAfter = null; // the saga whose row gets the focus after a re-render

    const heading = h("h1", { tabindex: -1, id: "attention-title" }, "Needs attention");
    const count = h("span", { id: "attention-count", class: "muted", role: "status" }, "loading…");
    const updated = h("span", { id: "attention-updated", class: "updated muted" });
    const refresh = h("button", { type: "button", id: "attention-refresh", onclick: () => p.start(true) }, "Refresh");
    const tbody = h("tbody", { id: "attention-rows" });
    const table = h("table", { class: "grid sagas attention-table", id: "attention-table", "data-testid": "attention-table" },
      h("caption", { class: "sr-only" }, "FAILED sagas, the longest waiting first"),
      h("thead", null, h("tr", null,
        ["order", "type", "failing step", "last error", "waited", "saga", "actions"]
          .map((c) => h("th", { scope: "col" }, c)))),
      tbody);
    const more = h("button", {
      type: "button", id: "attention-more", hidden: true,
      onclick: function () {
        limit = Math.min(500, limit + ATTENTION_PAGE);
        p.start(true);
      },
    }, "Show more");
    const bulk = bulkPanel(() => p.start(true));
    const health = queueHealthPanel();
    const root = h("div", { id: "attention", "data-testid": "attention" },
      h("div", { class: "page-head" }, heading, count, updated, refresh),
      h("p", { class: "muted intro" },
        "FAILED sagas: a compensation gave up after its last attempt and nothing moves them until an operator acts. " +
        "Retry the compensation once the participant works again, force the saga forward if its step did happen, " +
        "or mark it resolved if you settled it outside sagaflow."),
      h("section", { class: "card", "aria-labelledby": "attention-title" },
        h("div", { class: "table-wrap" }, table),
        h("div", { class: "more" }, more)),
      bulk.el,
      health.el);
    append(view, root);

    async function load() {
      let res, stats;
      try {
        [res, stats] = await Promise.all([
          api("GET", "/sagas" + query({ state: "FAILED", order: "oldest", limit: limit })),
          api("GET", "/sagas/stats").catch(() => null),
        ]);
      } catch (e) {
        if (stopped) return;
        showError("Could not load the FAILED sagas: " + e.message, "load");
        return;
      }
      if (stopped) return;
      showError(null, "load");
      const items = (res && res.items) || [];
      const total = stats ? Number(((stats.by_state) || {}).FAILED || 0) : null;
      if (total !== null) setNavCount(total);
      const sig = items.map((s) => [s.id, s.state, s.operator_request || "", s.updated_at].join(":")).join("|");
      if (sig !== signature) {
        signature = sig;
        render(items);
        bulk.know(items, stats);
      }
      const shown = items.length;
      count.textContent = shown === 0 ? "nothing FAILED"
        : (res.next_cursor ? "the oldest " + shown + " of " + (total !== null ? total : "more") + " FAILED"
          : plural(shown, "FAILED saga")) + ", longest waiting first";
      more.hidden = !res.next_cursor || limit >= 500;
      updated.dataset.since = String(Date.now());
      // Quicker while a request waits for a worker, so that it leaves.
      p.every(items.some((s) => s.operator_request) ? ATTENTION_FAST_REFRESH_MS : ATTENTION_REFRESH_MS);
    }

    function render(items) {
      // Keep the focus where it was if its row is still there.
      const active = document.activeElement;
      const activeRow = active && tbody.contains(active) ? active.closest("tr") : null;
      const keep = activeRow ? { id: activeRow.dataset.sagaId, action: active.dataset.action } : null;
      tbody.textContent = "";
      if (!items.length) {
        append(tbody, h("tr", { class: "empty" }, h("td", { colspan: 7 },
          "No saga is FAILED: nothing needs an operator.")));
      }
      items.forEach((s) => append(tbody, row(s)));
      const want = focusAfter || (keep && keep.id);
      if (want) {
        const tr = tbody.querySelector("tr[data-saga-id=\"" + CSS.escape(want) + "\"]");
        let target = null;
        if (tr && keep && keep.id === want && keep.action) target = tr.querySelector("[data-action=\"" + keep.action + "\"]:not(:disabled)");
        if (tr && !target) target = tr.querySelector("a.saga-link");
        if (focusAfter || target) (target || heading).focus();
        focusAfter = null;
      }
    }

    function row(s) {
      const href = "#/sagas/" + encodeURIComponent(s.id);
      const pending = s.operator_request;
      const who = s.order_no ? "order " + s.order_no : "saga " + shortId(s.id);
      const waited = Number(s.waited_seconds || 0);
      const since = Date.now() - waited * 1000;
      const button = (action, text, title, opts) => h("button", {
        type: "button",
        class: "small" + (action === "resolve" ? " resolve" : ""),
        "data-action": action,
        disabled: !!pending,
        title: pending ? "a " + pending + " request is waiting for a worker" : title,
        "aria-label": text + " — " + who,
        onclick: () => act(s, action === "resolve" ? "resolve" : "retry", opts),
      }, text);
      return h("tr", { "data-saga-id": s.id, "data-state": s.state, "data-waited-seconds": waited },
        h("td", { class: "mono order-no" }, s.order_no || h("span", { class: "muted" }, "—")),
        h("td", { class: "saga-type" }, s.type + (s.version && s.version !== 1 ? " v" + s.version : "")),
        h("td", { class: "step-name" }, s.step_name || "step " + s.current_step,
          h("div", { class: "muted small-text" }, "step " + s.current_step + " · attempt " + s.attempt)),
        h("td", { class: "error-cell" },
          h("div", { class: "error-text last-error", title: s.last_error || "" }, truncate(s.last_error, 140) || "—"),
          s.failure_reason ? h("div", { class: "muted small-text failure-reason", title: s.failure_reason },
            "compensated because: " + truncate(s.failure_reason, 100)) : null,
          pending ? h("div", { class: "pending" }, "⏳ " + pending + " requested" +
            (s.operator_reason ? " (“" + truncate(s.operator_reason, 60) + "”)" : "") + "; a worker applies it within a moment") : null),
        h("td", { class: "nowrap waited" },
          h("span", {
            class: "waited-text",
            dataset: { waitedSince: String(since) },
            title: "FAILED since " + isoSeconds(new Date(since).toISOString()) + " (UTC)",
          }, duration(waited))),
        h("td", { class: "mono" }, h("a", { href: href, class: "saga-link", title: "open saga " + s.id }, shortId(s.id))),
        h("td", { class: "row-actions" },
          button("retry", "Retry compensation", "resume the compensation that gave up; ends COMPENSATED", { forward: false }),
          button("force-forward", "Force forward", "the step did happen: run it again in a new epoch; ends COMPLETED if the participant agrees", { forward: true }),
          button("resolve", "Mark resolved", "you settled it outside sagaflow: it ends RESOLVED with the money effect you assert")));
    }

    async function act(s, kind, opts) {
      let filed;
      try {
        filed = await fileAction(s, kind, opts);
      } catch (e) {
        if (stopped) return;
        showError(e.done + " refused for " + (s.order_no ? "order " + s.order_no : "saga " + shortId(s.id)) + ": " + e.message, "action");
        focusAfter = s.id;
        signature = null;
        p.start(true);
        return;
      }
      if (stopped) return;
      if (!filed) return;
      showError(null, "action");
      showNotice(filed.done + " requested for " + (s.order_no ? "order " + s.order_no : "saga " + shortId(s.id)) +
        " (“" + filed.reason + "”); a worker applies it within a moment.");
      focusAfter = s.id;
      signature = null;
      p.every(ATTENTION_FAST_REFRESH_MS);
      p.start(true);
    }

    const p = poller(load, ATTENTION_REFRESH_MS);
    p.start(true);
    health.start();
    return {
      stop() {
        stopped = true;
        p.stop();
        bulk.stop();
        health.stop();
      },
    };
  }

  // The bulk form of the attention tab: a filter over the FAILED sagas, an
  // action and a reason; "Count" runs the dry run, "Apply to M sagas" the
  // real one with expected_count M. Any change to the filter or the action
  // after a count disables Apply until the next count.
  function bulkPanel(onFiled) {
    const typeIn = h("input", {
      id: "bulk-type", name: "type", list: "bulk-known-types", autocomplete: "off", size: 16, placeholder: "any type",
    });
    const typeList = h("datalist", { id: "bulk-known-types" });
    const stepSel = h("select", { id: "bulk-step", name: "step" }, h("option", { value: "" }, "any step"));
    const errorIn = h("input", {
      id: "bulk-error", name: "error_contains", autocomplete: "off", size: 22, maxlength: 200,
      placeholder: "e.g. timed out",
    });
    const beforeIn = h("input", { id: "bulk-created-before", name: "created_before", type: "datetime-local" });
    const actionSel = h("select", { id: "bulk-action", name: "action" },
      h("option", { value: "RETRY" }, "Retry compensation"),
      h("option", { value: "FORCE_FORWARD" }, "Force forward"),
      h("option", { value: "RESOLVE" }, "Mark resolved"));
    const resolutionSel = h("select", { id: "bulk-resolution", name: "resolution", "aria-describedby": "bulk-resolution-help" },
      h("option", { value: "" }, "— choose —"),
      Object.keys(RESOLUTIONS).map((k) => h("option", { value: k }, k)));
    const resolutionHelp = h("span", { id: "bulk-resolution-help", class: "muted small-text" },
      "Required: the money effect you assert for every saga.");
    const resolutionField = h("label", { hidden: true, id: "bulk-resolution-field" }, "Money effect", resolutionSel, resolutionHelp);
    const reasonIn = h("input", {
      id: "bulk-reason", name: "reason", autocomplete: "off", size: 36, maxlength: 500,
      placeholder: "e.g. participant outage, INC-1234",
    });
    const actorIn = h("input", {
      id: "bulk-actor", name: "actor", autocomplete: "name", size: 14, maxlength: 100,
      placeholder: "operator", value: getActor(),
    });
    // Follows the name given in a dialog until typed in here.
    let actorTyped = false;
    actorIn.addEventListener("input", () => { actorTyped = true; });
    function onActor() {
      if (!actorTyped) actorIn.value = getActor();
    }
    window.addEventListener("sagaflow:actor", onActor);
    const countBtn = h("button", { type: "submit", id: "bulk-count", "data-testid": "bulk-count" }, "Count");
    const applyBtn = h("button", {
      type: "button", id: "bulk-apply", "data-testid": "bulk-apply", class: "primary", disabled: true,
      title: "count first: Apply acts on exactly the number counted",
    }, "Apply");
    const result = h("p", { id: "bulk-result", "data-testid": "bulk-result", class: "bulk-result", role: "status", "aria-live": "polite" },
      "Count first: Apply acts on exactly the number of sagas counted.");
    const form = h("form", { id: "bulk-form", class: "filters bulk-form", novalidate: true, "aria-labelledby": "bulk-title" },
      h("label", null, "Type", typeIn, typeList),
      h("label", null, "Failing step", stepSel),
      h("label", null, "Error contains", errorIn),
      h("label", null, "Created before", beforeIn),
      h("label", null, "Action", actionSel),
      resolutionField,
      h("label", null, "Reason", reasonIn),
      h("label", null, "Your name (optional)", actorIn),
      h("div", { class: "filter-buttons" }, countBtn, applyBtn));
    const el = h("section", { class: "card", id: "bulk", "aria-labelledby": "bulk-title" },
      h("h2", { id: "bulk-title" }, "Act on many FAILED sagas"),
      h("p", { class: "muted small-text" },
        "Every FAILED saga the filter matches and the action applies to, each as if acted on alone. " +
        "Count first; Apply does nothing if the count changed meanwhile."),
      form, result);

    // What was counted: {key, applicable}; null = Apply disabled.
    let counted = null;
    function filter() {
      return {
        state: "FAILED",
        type: typeIn.value.trim() || undefined,
        step: stepSel.value === "" ? undefined : Number(stepSel.value),
        error_contains: errorIn.value.trim() || undefined,
        created_before: fromLocalInput(beforeIn.value) || undefined,
      };
    }
    function key() {
      return JSON.stringify([filter(), actionSel.value, actionSel.value === "RESOLVE" ? resolutionSel.value : ""]);
    }
    function say(msg, bad) {
      result.textContent = msg;
      result.classList.toggle("error-text", !!bad);
    }
    function disableApply() {
      applyBtn.disabled = true;
      applyBtn.textContent = "Apply";
    }
    function changed() {
      resolutionField.hidden = actionSel.value !== "RESOLVE";
      if (counted && counted.key !== key()) {
        counted = null;
        disableApply();
        say("The filter or the action changed: count again before applying.");
      }
    }
    [typeIn, stepSel, errorIn, beforeIn, actionSel, resolutionSel].forEach(function (i) {
      i.addEventListener("input", changed);
      i.addEventListener("change", changed);
    });
    function body(dryRun) {
      const b = Object.assign(filter(), { action: actionSel.value, dry_run: dryRun });
      if (actionSel.value === "RESOLVE") b.resolution = resolutionSel.value;
      return b;
    }
    const ask = {
      title: "Admin token needed",
      message: "Bulk actions, even counting, are operator calls: enter the admin token.",
    };

    form.addEventListener("submit", async function (ev) {
      ev.preventDefault();
      if (actionSel.value === "RESOLVE" && !resolutionSel.value) {
        say("Choose the money effect to assert before counting.", true);
        resolutionSel.focus();
        return;
      }
      const k = key();
      // The dry run records nothing; the reason is only checked.
      const b = Object.assign(body(true), { reason: reasonIn.value.trim() || "count only (dry run)" });
      countBtn.disabled = true;
      say("Counting…");
      let r;
      try {
        r = await operatorCall("POST", "/sagas/bulk", b, ask);
      } catch (e) {
        say("Could not count: " + e.message, true);
        return;
      } finally {
        countBtn.disabled = false;
      }
      if (r.dismissed) {
        say("Not counted: the admin token is needed.");
        return;
      }
      if (k !== key()) {
        say("The filter changed while counting: count again.");
        return;
      }
      const d = r.data;
      counted = { key: k, applicable: Number(d.applicable) };
      say((d.matched === 1 ? "1 saga matches" : d.matched + " sagas match") + ", " + d.applicable + " applicable" +
        (d.pending ? " (" + d.pending + " with another request still pending)" : "") + ".");
      applyBtn.disabled = counted.applicable === 0;
      applyBtn.textContent = "Apply to " + plural(counted.applicable, "saga");
    });

    applyBtn.addEventListener("click", async function () {
      if (!counted || counted.key !== key()) {
        disableApply();
        return;
      }
      const reason = reasonIn.value.trim();
      if (!reason) {
        say("Give a reason: it goes into every saga's history.", true);
        reasonIn.focus();
        return;
      }
      const actor = actorIn.value.trim();
      setActor(actor);
      const b = Object.assign(body(false), { reason: reason, expected_count: counted.applicable });
      if (actor) b.actor = actor;
      const action = actionSel.options[actionSel.selectedIndex].textContent +
        (b.resolution ? " (" + b.resolution + ")" : "");
      applyBtn.disabled = true;
      say("Applying…");
      let r;
      try {
        r = await operatorCall("POST", "/sagas/bulk", b, ask);
      } catch (e) {
        if (e.status === 409) {
          counted = null;
          disableApply();
          say("Not applied: " + e.message + ". Press Count to count again.", true);
          countBtn.focus();
        } else {
          applyBtn.disabled = false;
          say("Could not apply: " + e.message, true);
        }
        return;
      }
      if (r.dismissed) {
        applyBtn.disabled = false;
        say("Not applied: the admin token is needed.");
        return;
      }
      counted = null;
      disableApply();
      say(action + " filed on " + plural(Number(r.data.filed), "saga") +
        "; workers apply it within a moment. Count again before another run.");
      onFiled();
    });

    // The steps and types seen among the FAILED sagas, as choices.
    function know(items, stats) {
      const steps = new Map();
      items.forEach(function (s) {
        const names = steps.get(s.current_step) || new Set();
        if (s.step_name) names.add(s.step_name);
        steps.set(s.current_step, names);
      });
      const chosen = stepSel.value;
      const have = new Set([...stepSel.options].map((o) => o.value));
      [...steps.keys()].sort((a, b) => a - b).forEach(function (n) {
        const label = "step " + n + (steps.get(n).size ? " — " + [...steps.get(n)].join(", ") : "");
        const existing = [...stepSel.options].find((o) => o.value === String(n));
        if (existing) existing.textContent = label;
        else if (!have.has(String(n))) append(stepSel, h("option", { value: String(n) }, label));
      });
      stepSel.value = chosen;
      typeList.textContent = "";
      ((stats && stats.by_type) || []).forEach(function (t) {
        if (Number((t.by_state || {}).FAILED || 0) > 0) append(typeList, h("option", { value: t.type }));
      });
    }
    return {
      el: el,
      know: know,
      stop() {
        window.removeEventListener("sagaflow:actor", onActor);
      },
    };
  }

  // The queue-health report (GET /queue-health, an operator call): vacuum
  // per table, the oldest open transaction, the outbox and the inbox, and
  // every warning with its advice.
  function queueHealthPanel() {
    const checked = h("span", { id: "qh-checked", class: "updated muted" });
    const refresh = h("button", { type: "button", id: "qh-refresh", hidden: true, onclick: () => load(true) }, "Refresh");
    const body = h("div", { id: "qh-body" });
    const el = h("section", { class: "card", id: "queue-health", "data-testid": "queue-health", "aria-labelledby": "queue-health-title" },
      h("div", { class: "card-head" }, h("h2", { id: "queue-health-title" }, "Queue health"), checked, refresh),
      body);
    let stopped = false;
    let shown = false; // a report is on screen
    let timer = null;

    function askForToken(msg) {
      shown = false;
      refresh.hidden = true;
      checked.textContent = "";
      body.textContent = "";
      append(body,
        h("p", { class: "muted" }, "Dead tuples and vacuum per table, the oldest open transaction, the outbox backlog " +
          "and the inbox. An operator call: the report names database sessions and shows their queries."),
        msg ? h("p", { class: "error-text", role: "alert" }, msg) : null,
        h("button", { type: "button", id: "qh-show", "data-testid": "qh-show", onclick: () => load(true) }, "Show queue health"));
    }

    async function load(interactive) {
      if (timer) clearTimeout(timer);
      timer = null;
      if (!interactive && !getToken()) {
        if (!shown) askForToken();
        return;
      }
      let data;
      try {
        if (interactive) {
          // Asks for the token when none is kept or it is refused.
          const r = await operatorCall("GET", "/queue-health", undefined, {
            title: "Show queue health",
            message: "The queue-health report is an operator call: enter the admin token.",
            ok: "Show",
          });
          if (stopped) return;
          if (r.dismissed) {
            if (!shown) askForToken();
            return;
          }
          data = r.data;
        } else {
          // Unasked (opening the tab, the refresh timer): never a dialog.
          data = await api("GET", "/queue-health", undefined, getToken());
        }
      } catch (e) {
        if (stopped) return;
        if (e.status === 401) {
          setToken(null);
          askForToken("The admin token was refused (" + e.message + ").");
          return;
        }
        if (shown) checked.textContent = "could not refresh: " + e.message;
        else askForToken("Could not read the queue health: " + e.message);
        schedule();
        return;
      }
      if (stopped) return;
      render(data || {});
      schedule();
    }
    function schedule() {
      if (!stopped && getToken()) timer = setTimeout(() => { if (!$("#dialog").open) load(false); else schedule(); }, QUEUE_HEALTH_REFRESH_MS);
    }
    // A token entered elsewhere shows the report; a forgotten one hides it
    // (it names sessions and their queries).
    function onToken() {
      if (stopped) return;
      if (getToken()) {
        if (!shown) load(false);
      } else if (shown) {
        if (timer) clearTimeout(timer);
        timer = null;
        askForToken();
      }
    }

    function render(q) {
      shown = true;
      refresh.hidden = false;
      body.textContent = "";
      const t = q.thresholds || {};
      checked.textContent = "";
      if (q.checked_at) append(checked, "checked ", timeEl(q.checked_at));
      const over = (bad) => (bad ? " over" : "");
      const flag = (bad, limit) => (bad ? h("span", { class: "over-flag" }, " ⚠ past the " + limit + " threshold") : null);

      const warnings = q.warnings || [];
      append(body, warnings.length
        ? h("ul", { id: "qh-warnings", class: "qh-warnings" }, warnings.map((w) =>
          h("li", { class: "qh-warning", "data-code": w.code },
            h("div", null, h("b", { class: "mono" }, w.code), " ", w.message),
            h("div", { class: "advice" }, h("span", { class: "muted" }, "Advice: "), w.advice))))
        : h("p", { id: "qh-ok", class: "qh-ok" }, "✓ No warnings: every figure is within its threshold."));

      const x = q.oldest_xact;
      const xOver = !!x && t.xmin_warn_seconds !== undefined && Number(x.age_seconds) >= Number(t.xmin_warn_seconds);
      const ob = q.outbox || {};
      const obOld = t.outbox_age_warn_seconds !== undefined && Number(ob.oldest_age_seconds || 0) >= Number(t.outbox_age_warn_seconds);
      const obOver = obOld || Number(ob.set_aside || 0) > 0;
      const ib = q.inbox || {};
      const ibOver = t.inbox_age_warn_seconds !== undefined && Number(ib.oldest_age_seconds || 0) >= Number(t.inbox_age_warn_seconds);
      const fig = (k, id, cls, v) => [h("dt", null, k), h("dd", { id: id, class: cls }, v)];
      append(body, h("dl", { class: "summary qh-figures" },
        fig("oldest open transaction", "qh-oldest-xact", "qh-figure" + over(xOver), x
          ? [h("b", { class: "qh-age" }, durationFine(x.age_seconds)),
            " · pid " + x.pid + (x.application_name ? " · " + x.application_name : "") + (x.state ? " · " + x.state : ""),
            flag(xOver, durationFine(t.xmin_warn_seconds)),
            x.query ? h("div", null, h("code", { class: "mono qh-query" }, x.query)) : null]
          : [h("b", { class: "qh-age" }, "none open"), h("span", { class: "muted" }, " (nothing holds back vacuum)")]),
        fig("outbox backlog", "qh-outbox", "qh-figure" + over(obOver),
          [h("b", null, plural(Number(ob.backlog || 0), "message")), " waiting",
            Number(ob.backlog || 0) ? ", the oldest for " + durationFine(ob.oldest_age_seconds) : "",
            flag(obOld, durationFine(t.outbox_age_warn_seconds)),
            Number(ob.set_aside || 0)
              ? h("span", { class: "over-flag qh-set-aside" }, " ⚠ " + plural(Number(ob.set_aside), "message") + " refused by Kafka, set aside")
              : null]),
        fig("inbox", "qh-inbox", "qh-figure" + over(ibOver),
          [h("b", null, "≈ " + plural(Number(ib.rows || 0), "row")),
            Number(ib.rows || 0) ? ", the oldest " + duration(ib.oldest_age_seconds) + " old" : "",
            ib.received_at_indexed === false ? h("span", { class: "muted" }, " (no index on received_at)") : null,
            flag(ibOver, duration(t.inbox_age_warn_seconds))])));

      if (Number(ob.set_aside || 0) > 0) append(body, setAsideList());

      const ratioLimit = Number(t.dead_ratio_warn);
      const deadMin = Number(t.dead_tuples_min || 0);
      const rows = (q.tables || []).map(function (tb) {
        const bad = !isNaN(ratioLimit) && Number(tb.dead_ratio) >= ratioLimit && Number(tb.dead_tuples) >= deadMin;
        return h("tr", { "data-table": tb.table, class: bad ? "over" : null },
          h("th", { scope: "row", class: "mono" }, tb.table),
          h("td", { class: "num" }, String(tb.live_tuples)),
          h("td", { class: "num" }, String(tb.dead_tuples)),
          h("td", { class: "num dead-ratio" }, (Number(tb.dead_ratio) * 100).toFixed(1) + " %", bad ? h("span", { class: "over-flag" }, " ⚠") : null),
          h("td", { class: "last-autovacuum" }, tb.last_autovacuum ? timeEl(tb.last_autovacuum) : h("span", { class: "muted" }, "never")),
          h("td", null, tb.last_vacuum ? timeEl(tb.last_vacuum) : h("span", { class: "muted" }, "never")));
      });
      append(body, h("div", { class: "table-wrap" }, h("table", { class: "grid", id: "qh-tables", "data-testid": "qh-tables" },
        h("caption", { class: "sr-only" }, "Vacuum health per table"),
        h("thead", null, h("tr", null,
          ["table", "live rows", "dead rows", "dead ratio", "last autovacuum", "last manual vacuum"]
            .map((c, i) => h("th", { scope: "col", class: i >= 1 && i <= 3 ? "num" : null }, c)))),
        h("tbody", null, rows))));
      append(body, h("p", { class: "muted small-text" },
        "Warns past: open transaction " + durationFine(t.xmin_warn_seconds) +
        ", dead ratio " + (isNaN(ratioLimit) ? "?" : Math.round(ratioLimit * 100) + " %") + " with at least " + deadMin + " dead rows" +
        ", outbox " + durationFine(t.outbox_age_warn_seconds) +
        ", inbox " + duration(t.inbox_age_warn_seconds) + "."));
    }

    // The last listing, shown again while the report's refresh fetches the
    // next, so that the list does not flash "loading…" every time.
    let lastSetAside = null;
    // The outbox messages Kafka refused and the relay set aside, each with
    // a Requeue button: for once the cause (a topic's size limit, say) is
    // fixed. Filled in when the listing arrives.
    function setAsideList() {
      const content = h("div", null, lastSetAside ? setAsideContent(lastSetAside) : h("p", { class: "muted" }, "loading…"));
      api("GET", "/outbox/set-aside", undefined, getToken()).then(function (r) {
        if (stopped) return;
        lastSetAside = r || {};
        content.textContent = "";
        append(content, setAsideContent(lastSetAside));
      }, function (e) {
        if (stopped) return;
        content.textContent = "";
        append(content, h("p", { class: "error-text" }, "Could not list them: " + e.message));
      });
      return h("div", { id: "qh-set-aside-list", "data-testid": "qh-set-aside-list" },
        h("h3", null, "Messages set aside"), content);
    }
    function setAsideContent(r) {
      const items = r.items || [];
      return [
        h("p", { class: "muted" }, "Kafka refused these for good, so the relay moved them out of the outbox and published " +
          "the messages behind them. Their sagas wait for replies until each is requeued (or they time out and " +
          "compensate). Fix the cause first (a topic's max.message.bytes, say): a message Kafka refuses again is set " +
          "aside again." + (Number(r.total) > items.length ? " Showing the oldest " + items.length + " of " + r.total + "." : "")),
        h("div", { class: "table-wrap" }, h("table", { class: "grid", id: "qh-set-aside", "data-testid": "qh-set-aside" },
          h("caption", { class: "sr-only" }, "Outbox messages set aside"),
          h("thead", null, h("tr", null, ["id", "topic", "key", "size", "Kafka's answer", "set aside", ""]
            .map((c, i) => h("th", { scope: "col", class: i === 0 || i === 3 ? "num" : null }, c)))),
          h("tbody", null, items.map(setAsideRow)))),
        topicButtons(items)];
    }
    // A button that makes one requeue call, then reports and refreshes.
    function requeueButton(label, attrs, path, body, what) {
      const button = h("button", Object.assign({ type: "button" }, attrs), label);
      button.onclick = async function () {
        button.disabled = true;
        try {
          const r = await operatorCall("POST", path, body, {
            title: "Requeue " + what,
            message: "Requeueing is an operator call: enter the admin token.",
            ok: "Requeue",
          });
          if (r.dismissed) {
            button.disabled = false;
            return;
          }
          const n = ((r.data && r.data.requeued) || []).length;
          showNotice(plural(n, "outbox message") + " (" + what + ") back in the outbox; the relay publishes them next.");
        } catch (e) {
          showError("Requeueing " + what + " failed: " + e.message);
        }
        load(false);
      };
      return button;
    }
    // One button per topic with more than one message listed: one cause
    // (the topic's size limit) usually refused them all.
    function topicButtons(items) {
      const byTopic = new Map();
      for (const m of items) byTopic.set(m.topic, (byTopic.get(m.topic) || 0) + 1);
      const topics = [...byTopic].filter(([, n]) => n > 1).map(([t]) => t);
      if (!topics.length) return null;
      return h("p", { class: "qh-requeue-topics" }, topics.map((t) => requeueButton(
        "Requeue every message for " + t,
        { class: "qh-requeue-topic", "data-testid": "qh-requeue-topic", "data-topic": t },
        "/outbox/set-aside/requeue", { topic: t }, "every message for " + t)));
    }
    function setAsideRow(m) {
      const button = requeueButton("Requeue", { class: "qh-requeue", "data-testid": "qh-requeue-" + m.id },
        "/outbox/set-aside/" + encodeURIComponent(m.id) + "/requeue", undefined, "message " + m.id);
      return h("tr", { "data-id": String(m.id) },
        h("td", { class: "num mono" }, String(m.id)),
        h("td", { class: "mono" }, m.topic),
        h("td", { class: "mono" }, truncate(m.key, 40)),
        h("td", { class: "num" }, Number(m.payload_bytes).toLocaleString("en") + " B"),
        h("td", { class: "mono qh-query" }, m.error),
        h("td", null, timeEl(m.failed_at)),
        h("td", null, button));
    }

    return {
      el: el,
      start() {
        window.addEventListener("sagaflow:token", onToken);
        load(false);
      },
      stop() {
        stopped = true;
        if (timer) clearTimeout(timer);
        window.removeEventListener("sagaflow:token", onToken);
      },
    };
  }

  // Go.
  route();
})();
