// The ops dashboard: polls GET /v1/ops/stats every second with the operator token and
// keeps the last five minutes client-side for its charts. Rates (per second) come from
// the deltas of each node's counters between two of its reports. Nodes seen earlier in
// this tab that stop reporting stay listed, marked down. No framework, no build step;
// data from the server is only ever written with textContent.
"use strict";

(() => {
  const TOKEN_KEY = "feed.ops.token";
  const POLL_MS = 1000;
  const FETCH_TIMEOUT_MS = 4000;
  const HISTORY_MS = 5 * 60 * 1000;
  const MAX_HISTORY = 400; // samples; one per poll
  const MAX_KNOWN_NODES = 500; // down nodes beyond this are forgotten, oldest first
  const SERVICES = ["gateway", "fanout", "push", "server"];

  const $ = (selector, root = document) => root.querySelector(selector);

  const state = {
    token: sessionStorage.getItem(TOKEN_KEY),
    timer: null,
    generation: 0, // bumped on sign-out so an in-flight poll cannot restart the loop
    history: [],
    nodes: new Map(), // "service/node" -> {service, node, snap, lastSeen, up}
    rates: new Map(), // "service/node/field" -> {value, at, rate}
    latest: null,
    lastStatus: "",
  };

  // -- formatting ----------------------------------------------------------------------

  const intFormat = new Intl.NumberFormat(undefined, { maximumFractionDigits: 0 });
  const fmtInt = (v) => (v == null || Number.isNaN(v) ? "–" : intFormat.format(v));
  const fmtNum = (v) => {
    if (v == null || Number.isNaN(v)) return "–";
    if (v === 0) return "0";
    return Math.abs(v) < 10 ? v.toFixed(1) : intFormat.format(v);
  };
  const fmtPct = (v) => (v == null ? "–" : `${(v * 100).toFixed(1)} %`);
  const fmtAgo = (ms) => {
    const s = Math.max(0, Math.round(ms / 1000));
    if (s < 90) return `${s} s ago`;
    if (s < 5400) return `${Math.round(s / 60)} min ago`;
    return `${Math.round(s / 3600)} h ago`;
  };

  // -- status and sign-in --------------------------------------------------------------

  function setStatus(text, kind) {
    const el = $("#status");
    if (state.lastStatus !== text) {
      el.textContent = text; // a live region: only changes are announced
      state.lastStatus = text;
    }
    el.dataset.kind = kind;
  }

  function showLogin(message) {
    clearTimeout(state.timer);
    state.generation += 1;
    $("#dashboard").hidden = true;
    $("#sign-out").hidden = true;
    $("#login").hidden = false;
    $("#login-error").textContent = message || "";
    setStatus("Not connected", "idle");
    $("#token").focus();
  }

  function showDashboard() {
    $("#login").hidden = true;
    $("#dashboard").hidden = false;
    $("#sign-out").hidden = false;
  }

  function start(token) {
    state.token = token;
    sessionStorage.setItem(TOKEN_KEY, token);
    showDashboard();
    setStatus("Connecting…", "idle");
    clearTimeout(state.timer);
    state.generation += 1;
    poll(state.generation);
  }

  function signOut(message) {
    state.token = null;
    sessionStorage.removeItem(TOKEN_KEY);
    showLogin(message);
  }

  // -- polling -------------------------------------------------------------------------

  async function fetchStats() {
    const controller = new AbortController();
    const timeout = setTimeout(() => controller.abort(), FETCH_TIMEOUT_MS);
    try {
      return await fetch("/v1/ops/stats", {
        headers: { Authorization: `Bearer ${state.token}`, Accept: "application/json" },
        cache: "no-store",
        signal: controller.signal,
      });
    } finally {
      clearTimeout(timeout);
    }
  }

  async function poll(generation) {
    const started = Date.now();
    try {
      const resp = await fetchStats();
      if (generation !== state.generation) return;
      if (resp.status === 401) {
        signOut("That token was refused. Check OPERATOR_TOKEN and try again.");
        return;
      }
      if (!resp.ok) {
        setStatus(`Stats unavailable (HTTP ${resp.status}); retrying`, "error");
      } else {
        update(await resp.json());
        setStatus("Live", "ok");
      }
    } catch (err) {
      if (generation !== state.generation) return;
      setStatus("Cannot reach the API server; retrying", "error");
    }
    if (generation !== state.generation) return;
    state.timer = setTimeout(() => poll(generation), Math.max(0, POLL_MS - (Date.now() - started)));
  }

  // -- model ---------------------------------------------------------------------------

  /** Per-second rate of one node's counter, from its last two distinct reports. */
  function nodeRate(key, value, at) {
    if (typeof value !== "number" || typeof at !== "number") return null;
    const prev = state.rates.get(key);
    if (prev && at === prev.at) return prev.rate;
    let rate = null;
    if (prev && at > prev.at) {
      const delta = value - prev.value;
      rate = delta >= 0 ? delta / ((at - prev.at) / 1000) : 0; // reset: the node restarted
    }
    state.rates.set(key, { value, at, rate });
    return rate;
  }

  function sumRates(rates) {
    const known = rates.filter((r) => r != null);
    return known.length ? known.reduce((a, b) => a + b, 0) : null;
  }

  const nodeKey = (service, node) => `${service}/${node}`;

  function rememberNodes(body) {
    const now = body.server_time_ms;
    const seen = new Set();
    for (const service of SERVICES) {
      for (const snap of body.services[service] || []) {
        const key = nodeKey(service, snap.node);
        seen.add(key);
        state.nodes.set(key, { service, node: String(snap.node), snap, lastSeen: now, up: true });
      }
    }
    for (const [key, entry] of state.nodes) {
      if (!seen.has(key)) entry.up = false;
    }
    if (state.nodes.size > MAX_KNOWN_NODES) {
      const down = [...state.nodes.entries()]
        .filter(([, e]) => !e.up)
        .sort((a, b) => a[1].lastSeen - b[1].lastSeen);
      for (const [key] of down.slice(0, state.nodes.size - MAX_KNOWN_NODES)) {
        state.nodes.delete(key);
        for (const rateKey of state.rates.keys()) {
          if (rateKey.startsWith(`${key}/`)) state.rates.delete(rateKey);
        }
      }
    }
  }

  const nodesOf = (service) =>
    [...state.nodes.values()]
      .filter((e) => e.service === service)
      .sort((a, b) => a.node.localeCompare(b.node));

  /** Per-node rates of the counters the dashboard shows, computed once per poll. */
  function computeRates(entry) {
    const { service, node, snap } = entry;
    const at = snap.reported_at_ms;
    const r = (field) => nodeRate(`${nodeKey(service, node)}/${field}`, snap[field], at);
    const rates = {};
    if (service === "gateway") rates.delivered = r("delivered_total");
    if (service === "fanout") rates.writes = r("timeline_writes_total");
    if (service === "server") {
      rates.requests = r("requests_total");
      rates.hits = r("timeline_cache_hits_total");
      rates.misses = r("timeline_cache_misses_total");
      rates.rankedFirst = r("ranked_first_pages_total");
      rates.rankedLater = r("ranked_later_pages_total");
      rates.fallbacks = {};
      for (const [cause, count] of Object.entries(snap.ranked_fallbacks || {})) {
        rates.fallbacks[cause] = nodeRate(`${nodeKey(service, node)}/f/${cause}`, count, at);
      }
    }
    if (service === "push") {
      rates.outcomes = {};
      for (const [outcome, count] of Object.entries(snap.outcomes || {})) {
        rates.outcomes[outcome] = nodeRate(`${nodeKey(service, node)}/o/${outcome}`, count, at);
      }
    }
    entry.rates = rates;
  }

  function splitOutcome(outcome) {
    const [provider = "", result = "", ...reason] = String(outcome).split(":");
    return { provider, result, reason: reason.join(":") };
  }

  function sample(body) {
    const totals = body.totals;
    const up = (service) => nodesOf(service).filter((e) => e.up);
    const rateOf = (service, name) => sumRates(up(service).map((e) => e.rates[name]));
    const pushRates = { sent: [], failed: [], retry: [] };
    for (const entry of up("push")) {
      for (const [outcome, rate] of Object.entries(entry.rates.outcomes || {})) {
        const { result } = splitOutcome(outcome);
        const bucket = result === "sent" ? "sent" : result === "retry" ? "retry" : null;
        if (bucket) pushRates[bucket].push(rate);
        else if (result === "failed" || result === "invalid") pushRates.failed.push(rate);
      }
    }
    const servers = up("server");
    const ranked = sumRates(servers.flatMap((e) => [e.rates.rankedFirst, e.rates.rankedLater]));
    const fallback = sumRates(servers.flatMap((e) => Object.values(e.rates.fallbacks || {})));
    const hits = rateOf("server", "hits");
    const misses = rateOf("server", "misses");
    return {
      t: body.server_time_ms,
      websocket: totals.gateway.connections_websocket,
      sse: totals.gateway.connections_sse,
      users: totals.gateway.users_online,
      delivered: rateOf("gateway", "delivered"),
      screenP50: totals.gateway.latency_p50_ms,
      screenP99: totals.gateway.latency_p99_ms,
      lag: totals.fanout.nodes ? totals.fanout.lag_total : null,
      writes: rateOf("fanout", "writes"),
      pushSent: sumRates(pushRates.sent),
      pushFailed: sumRates(pushRates.failed),
      pushRetry: sumRates(pushRates.retry),
      feedP50: totals.server.feed_read_p50_ms,
      feedP99: totals.server.feed_read_p99_ms,
      hitRate: hits != null && misses != null && hits + misses > 0 ? hits / (hits + misses) : null,
      // A fallback rate is null until a node has reported a cause twice; none yet is 0.
      ranked,
      fallback: fallback ?? (ranked != null ? 0 : null),
      rankerP50: totals.server.ranker_p50_ms,
      rankerP99: totals.server.ranker_p99_ms,
    };
  }

  function update(body) {
    state.latest = body;
    rememberNodes(body);
    for (const entry of state.nodes.values()) {
      if (entry.up) computeRates(entry);
    }
    state.history.push(sample(body));
    const horizon = body.server_time_ms - HISTORY_MS;
    while (state.history.length && (state.history[0].t < horizon || state.history.length > MAX_HISTORY)) {
      state.history.shift();
    }
    render();
  }

  // -- rendering -----------------------------------------------------------------------

  function render() {
    const body = state.latest;
    const last = state.history[state.history.length - 1];
    const nodes = [...state.nodes.values()];
    $("#total-users").textContent = fmtInt(body.totals.gateway.users_online);
    $("#total-connections").textContent = fmtInt(body.totals.gateway.connections);
    $("#total-delivered-rate").textContent = fmtNum(last.delivered);
    $("#total-lag").textContent = body.totals.fanout.nodes ? fmtInt(body.totals.fanout.lag_total) : "–";
    $("#total-nodes-up").textContent = fmtInt(nodes.filter((e) => e.up).length);
    const down = nodes.filter((e) => !e.up).length;
    $("#total-nodes-down").textContent = fmtInt(down);
    $("#total-nodes-down").parentElement.classList.toggle("alert", down > 0);
    renderCharts(body);
    renderTables(body);
    renderRanked(body, last);
  }

  const CHARTS = {
    connections: {
      series: [
        { label: "WebSocket", key: "websocket", fmt: fmtInt },
        { label: "SSE", key: "sse", fmt: fmtInt },
        { label: "Users online", key: "users", fmt: fmtInt },
      ],
    },
    delivered: { series: [{ label: "Delivered/s", key: "delivered", fmt: fmtNum }] },
    "screen-latency": {
      series: [
        { label: "p50", key: "screenP50", fmt: fmtNum, unit: "ms" },
        { label: "p99", key: "screenP99", fmt: fmtNum, unit: "ms" },
      ],
    },
    lag: { series: [{ label: "Lag", key: "lag", fmt: fmtInt }] },
    writes: { series: [{ label: "Writes/s", key: "writes", fmt: fmtNum }] },
    push: {
      series: [
        { label: "Sent/s", key: "pushSent", fmt: fmtNum },
        { label: "Failed/s", key: "pushFailed", fmt: fmtNum },
        { label: "Retried/s", key: "pushRetry", fmt: fmtNum },
      ],
    },
    "feed-latency": {
      series: [
        { label: "p50", key: "feedP50", fmt: fmtNum, unit: "ms" },
        { label: "p99", key: "feedP99", fmt: fmtNum, unit: "ms" },
      ],
    },
    ranked: {
      series: [
        { label: "Ranked/s", key: "ranked", fmt: fmtNum },
        { label: "Fallback/s", key: "fallback", fmt: fmtNum },
      ],
    },
    "ranker-latency": {
      series: [
        { label: "p50", key: "rankerP50", fmt: fmtNum, unit: "ms" },
        { label: "p99", key: "rankerP99", fmt: fmtNum, unit: "ms" },
      ],
    },
    "hit-rate": {
      series: [{ label: "Hit rate", key: "hitRate", fmt: fmtPct, scale: 100 }],
      fixedMax: 100,
    },
  };

  function renderCharts(body) {
    for (const [name, chart] of Object.entries(CHARTS)) {
      const figure = $(`[data-chart="${name}"]`);
      const last = state.history[state.history.length - 1];
      const now = $(`[data-now="${name}"]`);
      now.replaceChildren();
      const parts = [];
      chart.series.forEach((s, i) => {
        let value = last[s.key];
        let shown = s.fmt(value);
        if (name === "hit-rate" && value == null) {
          // No feed reads in the last interval: show the hit rate since the servers started.
          value = body.totals.server.timeline_cache_hit_rate;
          shown = value == null ? "–" : `${fmtPct(value)} overall`;
        }
        if (s.unit && shown !== "–") shown = `${shown} ${s.unit}`;
        const row = document.createElement("div");
        const dt = document.createElement("dt");
        const swatch = document.createElement("span");
        swatch.className = `swatch s${i}`;
        swatch.setAttribute("aria-hidden", "true");
        dt.append(swatch, s.label);
        const dd = document.createElement("dd");
        dd.textContent = shown;
        row.append(dt, dd);
        now.append(row);
        parts.push(`${s.label} ${shown}`);
      });
      const canvas = $("canvas", figure);
      const caption = $("figcaption", figure).textContent;
      const span = spanText(chartSpan());
      canvas.setAttribute("aria-label", `${caption}, last ${span}. Now: ${parts.join(", ")}.`);
      draw(canvas, chart);
    }
  }

  function cssVar(name) {
    return getComputedStyle(document.documentElement).getPropertyValue(name).trim();
  }

  function niceMax(value) {
    if (!(value > 0)) return 1;
    const power = 10 ** Math.floor(Math.log10(value));
    for (const step of [1, 2, 2.5, 5, 10]) {
      if (value <= step * power) return step * power;
    }
    return 10 * power;
  }

  const DASHES = [[], [6, 4], [2, 3]];
  const MIN_SPAN_MS = 60 * 1000;

  /** The charts' time span: the history kept so far (at least a minute), up to 5 min. */
  function chartSpan() {
    const history = state.history;
    const kept = history[history.length - 1].t - history[0].t;
    return Math.min(HISTORY_MS, Math.max(MIN_SPAN_MS, kept));
  }

  function spanText(ms) {
    const s = Math.round(ms / 1000);
    return s % 60 === 0 ? `${s / 60} min` : `${Math.floor(s / 60)} min ${s % 60} s`;
  }

  function draw(canvas, chart) {
    const ratio = window.devicePixelRatio || 1;
    const width = canvas.clientWidth;
    const height = canvas.clientHeight;
    if (!width || !height) return;
    if (canvas.width !== Math.round(width * ratio) || canvas.height !== Math.round(height * ratio)) {
      canvas.width = Math.round(width * ratio);
      canvas.height = Math.round(height * ratio);
    }
    const ctx = canvas.getContext("2d");
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    ctx.clearRect(0, 0, width, height);
    const history = state.history;
    const end = history[history.length - 1].t;
    const span = chartSpan();
    const begin = end - span;
    const value = (point, s) => {
      const v = point[s.key];
      return v == null ? null : v * (s.scale || 1);
    };
    let top = 0;
    for (const s of chart.series) {
      for (const point of history) top = Math.max(top, value(point, s) ?? 0);
    }
    top = chart.fixedMax || niceMax(top);
    const left = 44;
    const right = 8;
    const above = 8;
    const below = 18;
    const plotW = width - left - right;
    const plotH = height - above - below;
    const x = (t) => left + ((t - begin) / span) * plotW;
    const y = (v) => above + plotH - (v / top) * plotH;

    ctx.font = `11px ${cssVar("--font")}`;
    ctx.fillStyle = cssVar("--muted");
    ctx.strokeStyle = cssVar("--grid");
    ctx.lineWidth = 1;
    ctx.setLineDash([]);
    ctx.textAlign = "right";
    ctx.textBaseline = "middle";
    for (const fraction of [0, 0.5, 1]) {
      const v = top * fraction;
      ctx.beginPath();
      ctx.moveTo(left, Math.round(y(v)) + 0.5);
      ctx.lineTo(width - right, Math.round(y(v)) + 0.5);
      ctx.stroke();
      ctx.fillText(fmtNum(v), left - 6, y(v));
    }
    ctx.textBaseline = "alphabetic";
    ctx.textAlign = "left";
    ctx.fillText(`−${spanText(span)}`, left, height - 4);
    ctx.textAlign = "right";
    ctx.fillText("now", width - right, height - 4);

    chart.series.forEach((s, i) => {
      ctx.strokeStyle = cssVar(`--series-${i}`);
      ctx.lineWidth = 2;
      ctx.setLineDash(DASHES[i % DASHES.length]);
      ctx.beginPath();
      let drawing = false;
      let previousT = null;
      for (const point of history) {
        const v = value(point, s);
        // A gap in the data (no value, or polls missed for a while) breaks the line.
        if (v == null || (previousT != null && point.t - previousT > 5 * POLL_MS)) {
          drawing = false;
        }
        previousT = point.t;
        if (v == null) continue;
        const px = x(point.t);
        const py = y(Math.min(v, top));
        if (drawing) ctx.lineTo(px, py);
        else ctx.moveTo(px, py);
        drawing = true;
      }
      ctx.stroke();
    });
  }

  function cell(text, className) {
    const td = document.createElement("td");
    td.textContent = text;
    if (className) td.className = className;
    return td;
  }

  function statusCell(entry, now) {
    if (entry.up) return cell("up", "up");
    return cell(`down (last seen ${fmtAgo(now - entry.lastSeen)})`, "down");
  }

  function fillTable(id, rows, emptyText, columns) {
    const tbody = $(`#${id} tbody`);
    tbody.replaceChildren();
    if (!rows.length) {
      const tr = document.createElement("tr");
      const td = cell(emptyText, "empty");
      td.colSpan = columns;
      tr.append(td);
      tbody.append(tr);
      return;
    }
    for (const cells of rows) {
      const tr = document.createElement("tr");
      tr.append(...cells);
      tbody.append(tr);
    }
  }

  function nodeRows(service, now, columns) {
    return nodesOf(service).map((entry) => {
      const th = document.createElement("th");
      th.scope = "row";
      th.textContent = entry.node;
      const tr = [th, statusCell(entry, now)];
      const values = columns(entry.snap, entry.rates || {});
      for (const v of values) tr.push(entry.up ? cell(v) : cell("–", "stale"));
      return tr;
    });
  }

  function renderTables(body) {
    const now = body.server_time_ms;
    fillTable(
      "gateway-table",
      nodeRows("gateway", now, (s, r) => [
        fmtInt(s.connections_websocket),
        fmtInt(s.connections_sse),
        fmtInt(s.users),
        fmtNum(r.delivered),
        fmtInt(s.slow_disconnects_total),
        fmtNum(s.latency_p50_ms),
        fmtNum(s.latency_p99_ms),
        s.queue_high_water_bytes == null ? "–" : `${fmtInt(s.queue_high_water_bytes)} B`,
      ]),
      "No gateway node has reported.",
      10,
    );
    fillTable(
      "fanout-table",
      nodeRows("fanout", now, (s, r) => [
        fmtInt(s.lag_total),
        Array.isArray(s.partitions) ? String(s.partitions.length) : "–",
        fmtNum(r.writes),
        fmtInt(s.posts_total),
        fmtInt(s.batches_total),
        fmtInt(s.dead_letters_total),
        fmtNum(s.post_to_timeline_p50_ms),
        fmtNum(s.post_to_timeline_p99_ms),
      ]),
      "No fan-out worker has reported.",
      10,
    );
    const countWhere = (outcomes, results) =>
      Object.entries(outcomes || {})
        .filter(([o]) => results.includes(splitOutcome(o).result))
        .reduce((a, [, n]) => a + n, 0);
    fillTable(
      "push-table",
      nodeRows("push", now, (s) => [
        fmtInt(s.queue),
        fmtInt(countWhere(s.outcomes, ["sent"])),
        fmtInt(countWhere(s.outcomes, ["failed", "invalid"])),
      ]),
      "No push worker has reported.",
      5,
    );
    const perSecond = {};
    for (const entry of nodesOf("push").filter((e) => e.up)) {
      for (const [outcome, rate] of Object.entries((entry.rates || {}).outcomes || {})) {
        if (rate != null) perSecond[outcome] = (perSecond[outcome] || 0) + rate;
      }
    }
    const outcomes = Object.entries(body.totals.push.outcomes || {});
    fillTable(
      "outcomes-table",
      outcomes.map(([outcome, total]) => {
        const { provider, result, reason } = splitOutcome(outcome);
        const th = document.createElement("th");
        th.scope = "row";
        th.textContent = provider;
        return [
          th,
          cell(result, `result-${result}`),
          cell(reason || "–"),
          cell(fmtInt(total)),
          cell(fmtNum(perSecond[outcome] ?? null)),
        ];
      }),
      "No push sent yet.",
      5,
    );
    fillTable(
      "server-table",
      nodeRows("server", now, (s, r) => {
        const reads = (s.timeline_cache_hits_total || 0) + (s.timeline_cache_misses_total || 0);
        return [
          fmtNum(r.requests),
          fmtNum(s.feed_read_p50_ms),
          fmtNum(s.feed_read_p99_ms),
          reads ? fmtPct(s.timeline_cache_hits_total / reads) : "–",
        ];
      }),
      "No API server has reported.",
      6,
    );
    renderRedis(body.redis);
  }

  /** The Redis behind the API server: one node, or each master of a cluster with its
   * share of the hash slots (a master that does not answer shows as down). */
  function renderRedis(redis) {
    if (!redis) return;
    $("#redis-mode").textContent = redis.cluster
      ? `(cluster, ${redis.nodes.length} masters)`
      : "(single node)";
    fillTable(
      "redis-table",
      redis.nodes.map((n) => {
        const th = document.createElement("th");
        th.scope = "row";
        th.textContent = n.node;
        return [
          th,
          n.up ? cell("up", "up") : cell("down", "down"),
          cell(redis.cluster ? fmtNum(n.slots) : "all"),
          cell(n.keys === null ? "–" : fmtNum(n.keys)),
        ];
      }),
      "No Redis node known.",
      4,
    );
  }

  // How a ranked request can be served (server/metrics.py `feed_ranked_requests`), in
  // the order listed; a cause the server adds later is listed after these.
  const RANKED_OUTCOMES = [
    { why: "first page, ranked now", total: "ranked_first_pages_total", rate: "rankedFirst" },
    {
      why: "later page, from its snapshot",
      total: "ranked_later_pages_total",
      rate: "rankedLater",
    },
  ];
  const FALLBACK_CAUSES = {
    no_model: "no model loaded",
    error: "ranker error",
    budget: "over the time budget",
    breaker_open: "circuit breaker open",
    no_candidates: "nothing recent to rank",
  };

  /** Fallback share of the ranked requests over the chart's span (its samples are about
   * one second apart, so their rates weigh alike); null without ranked requests. */
  function fallbackShare() {
    let ranked = 0;
    let fallback = 0;
    for (const point of state.history) {
      ranked += point.ranked || 0;
      fallback += point.fallback || 0;
    }
    return ranked + fallback > 0 ? fallback / (ranked + fallback) : null;
  }

  function renderRanked(body, last) {
    const totals = body.totals.server;
    const ms = (v) => (v == null ? "–" : `${fmtNum(v)} ms`);
    $("#ranked-rate").textContent = fmtNum(last.ranked);
    $("#ranked-fallback-rate").textContent = fmtNum(last.fallback);
    $("#ranked-span").textContent = `last ${spanText(chartSpan())}`;
    $("#ranked-fallback-share").textContent = fmtPct(fallbackShare());
    $("#ranker-p50").textContent = ms(totals.ranker_p50_ms);
    $("#ranker-p99").textContent = ms(totals.ranker_p99_ms);

    const servers = nodesOf("server").filter((e) => e.up);
    const rateOf = (pick) => sumRates(servers.map((e) => pick(e.rates || {})));
    const rows = RANKED_OUTCOMES.map((o) => ({
      served: "ranked",
      why: o.why,
      count: totals[o.total],
      rate: rateOf((r) => r[o.rate]),
    }));
    const counts = totals.ranked_fallbacks || {};
    const unknown = Object.keys(counts).filter((c) => !(c in FALLBACK_CAUSES));
    const causes = [...Object.keys(FALLBACK_CAUSES), ...unknown];
    for (const cause of causes) {
      rows.push({
        served: "chronological",
        why: FALLBACK_CAUSES[cause] || cause,
        cause,
        count: counts[cause] || 0,
        rate: rateOf((r) => (r.fallbacks || {})[cause]),
      });
    }
    const tbody = $("#ranked-table tbody");
    tbody.replaceChildren();
    for (const row of rows) {
      const tr = document.createElement("tr");
      if (row.cause) tr.dataset.cause = row.cause;
      if (row.cause && row.count > 0) tr.className = "fallback-seen";
      const th = document.createElement("th");
      th.scope = "row";
      th.textContent = row.served;
      if (row.served === "ranked") th.className = "served-ranked";
      tr.append(th, cell(row.why), cell(fmtInt(row.count)), cell(fmtNum(row.rate)));
      tbody.append(tr);
    }
  }

  // -- wiring --------------------------------------------------------------------------

  let resizeQueued = false;
  window.addEventListener("resize", () => {
    if (resizeQueued || !state.latest) return;
    resizeQueued = true;
    requestAnimationFrame(() => {
      resizeQueued = false;
      renderCharts(state.latest);
    });
  });

  document.addEventListener("DOMContentLoaded", () => {
    $("#login-form").addEventListener("submit", (event) => {
      event.preventDefault();
      const token = $("#token").value.trim();
      if (!token) {
        $("#login-error").textContent = "Enter the operator token.";
        return;
      }
      $("#token").value = "";
      start(token);
    });
    $("#sign-out").addEventListener("click", () => signOut(""));
    if (state.token) start(state.token);
    else showLogin("");
  });
})();
