/* reftrack live dashboard: plain JavaScript, no framework, no build step.
 *
 * Reads the worker's JSON API (/api/filters, kpis, funnel, stages, rates, worklist,
 * alerts, referrals/{org}/{id}), polls it every `?refresh=` seconds (default 5) and
 * updates the page in place. Filters live in the query string so a view can be shared;
 * `#referral/<org>/<id>` opens one referral's timeline. An API token given once as
 * `#token=...` is kept in sessionStorage and sent as `Authorization: Bearer <token>`.
 * Data is only ever put into the page as text (textContent / setAttribute), never as HTML.
 */
"use strict";

(() => {
  const TOKEN_KEY = "reftrack-token";
  const SVG_NS = "http://www.w3.org/2000/svg";
  const STAGE_ORDER = ["created", "routed", "contacted", "scheduled", "seen", "closed"];
  const PALETTE = [
    "#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2",
    "#ca8a04", "#db2777", "#4f46e5", "#65a30d", "#0d9488", "#78716c",
  ];
  const STAGE_COLORS = {
    created: "#93c5fd", routed: "#a5b4fc", contacted: "#c4b5fd",
    scheduled: "#86efac", seen: "#fcd34d", closed: "#d1d5db",
  };
  // [key, label, default unit, direction: +1 higher is better, -1 lower is better, 0 neutral]
  const KPIS = [
    ["referrals", "Referrals", "count", 0],
    ["completion_rate", "Completion rate", "ratio", 1],
    ["median_hours_to_schedule", "Time to schedule (median)", "hours", -1],
    ["median_hours_to_appointment", "Time to appointment (median)", "hours", -1],
    ["leakage_rate", "Leakage", "ratio", -1],
    ["engagement_rate", "Engagement", "ratio", 1],
    ["closed_loop_rate", "Closed loop", "ratio", 1],
    ["no_show_rate", "No-show rate", "ratio", -1],
    ["open", "Open", "count", 0],
    ["at_risk", "At risk", "count", -1],
    ["avg_satisfaction", "Satisfaction (avg)", "score", 1],
  ];
  const SORT_DEFAULT_ORDER = { age_hours: "desc", created_at: "desc", priority: "desc" };

  const $ = (selector, root = document) => root.querySelector(selector);

  const state = {
    filters: emptyFilters(),
    refreshSeconds: 5,
    options: null, // the last /api/filters answer
    gen: 0, // each refresh's number; answers of an older refresh are dropped
    timer: null,
    paused: false, // waiting for a token after a 401
    seen: {}, // panel -> JSON of what it shows (render only on change)
    cache: {}, // panel -> data, to redraw charts on resize
    selected: null, // "org/id" of the referral last opened from the worklist
    dashboardScroll: 0,
  };

  class AuthError extends Error {}
  class ApiError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  function emptyFilters() {
    return {
      org: [], specialty: [], from: "", to: "", priority: "", flag: "", min_age_hours: "",
      sort: "age_hours", order: "desc", bucket: "day",
    };
  }

  // -- URL: filters in the query string, the view in the fragment --------------------------

  function takeToken() {
    const hash = location.hash.replace(/^#/, "");
    if (!hash.startsWith("token=")) return;
    const token = new URLSearchParams(hash).get("token");
    if (token) sessionStorage.setItem(TOKEN_KEY, token);
    history.replaceState(history.state, "", location.pathname + location.search);
  }

  function readUrl() {
    const q = new URLSearchParams(location.search);
    const list = (name) => (q.get(name) || "").split(",").map((s) => s.trim()).filter(Boolean);
    const date = (name) => (/^\d{4}-\d{2}-\d{2}$/.test(q.get(name) || "") ? q.get(name) : "");
    const f = emptyFilters();
    f.org = list("org");
    f.specialty = list("specialty");
    f.from = date("from");
    f.to = date("to");
    f.priority = q.get("priority") || "";
    f.flag = q.get("flag") || "";
    const age = q.get("min_age_hours") || "";
    f.min_age_hours = /^\d+(\.\d+)?$/.test(age) ? age : "";
    const sorts = ["age_hours", "priority", "created_at", "org_id", "specialty", "status"];
    if (sorts.includes(q.get("sort"))) f.sort = q.get("sort");
    if (["asc", "desc"].includes(q.get("order"))) f.order = q.get("order");
    if (["minute", "hour", "day"].includes(q.get("bucket"))) f.bucket = q.get("bucket");
    state.filters = f;
    const refresh = Number(q.get("refresh"));
    state.refreshSeconds = Number.isFinite(refresh) && refresh > 0 ? Math.min(Math.max(refresh, 0.5), 3600) : 5;
  }

  function writeUrl() {
    const f = state.filters;
    const q = new URLSearchParams();
    if (f.org.length) q.set("org", f.org.join(","));
    if (f.specialty.length) q.set("specialty", f.specialty.join(","));
    if (f.from) q.set("from", f.from);
    if (f.to) q.set("to", f.to);
    if (f.priority) q.set("priority", f.priority);
    if (f.flag) q.set("flag", f.flag);
    if (f.min_age_hours) q.set("min_age_hours", f.min_age_hours);
    if (f.sort !== "age_hours" || f.order !== "desc") {
      q.set("sort", f.sort);
      q.set("order", f.order);
    }
    if (f.bucket !== "day") q.set("bucket", f.bucket);
    const keep = new URLSearchParams(location.search).get("refresh");
    if (keep) q.set("refresh", keep);
    const search = q.toString();
    history.replaceState(history.state, "", location.pathname + (search ? "?" + search : "") + location.hash);
  }

  function route() {
    const m = /^#referral\/([^/]+)\/(.+)$/.exec(location.hash);
    if (m) return { view: "referral", org: decodeURIComponent(m[1]), id: decodeURIComponent(m[2]) };
    return { view: "dashboard" };
  }

  function referralHref(org, id) {
    return "#referral/" + encodeURIComponent(org) + "/" + encodeURIComponent(id);
  }

  // -- API --------------------------------------------------------------------------------

  async function api(path, params) {
    const headers = { Accept: "application/json" };
    const token = sessionStorage.getItem(TOKEN_KEY);
    if (token) headers.Authorization = "Bearer " + token;
    const search = params && params.toString() ? "?" + params.toString() : "";
    const response = await fetch(path + search, { headers, cache: "no-store", credentials: "same-origin" });
    if (response.status === 401) throw new AuthError("unauthorized");
    let body = null;
    try {
      body = await response.json();
    } catch (_) {
      body = null;
    }
    if (!response.ok) {
      const why = (body && (body.message || body.error)) || "HTTP " + response.status;
      throw new ApiError(response.status, path + ": " + why);
    }
    return body;
  }

  /** The period every panel uses: the pinned dates, or the last 30 days ending at date_max. */
  function period() {
    const f = state.filters;
    const o = state.options || {};
    let to = f.to || o.date_max || "";
    let from = f.from;
    if (!from && to) from = addDays(to, -29);
    if (!f.to && f.from && !to) to = f.from;
    return { from, to };
  }

  function cohortParams() {
    const f = state.filters;
    const q = new URLSearchParams();
    if (f.org.length) q.set("org", f.org.join(","));
    if (f.specialty.length) q.set("specialty", f.specialty.join(","));
    const p = period();
    if (p.from) q.set("from", p.from);
    if (p.to) q.set("to", p.to);
    return q;
  }

  // -- refresh loop -----------------------------------------------------------------------

  function kick() {
    clearTimeout(state.timer);
    state.timer = null;
    refresh();
  }

  async function refresh() {
    if (state.paused) return;
    const gen = ++state.gen;
    const current = () => gen === state.gen;
    const here = route();
    const failures = [];
    try {
      const filters = await api("/api/filters");
      if (!current()) return;
      state.options = filters;
      renderFilterOptions(filters);
    } catch (error) {
      failures.push(error);
    }
    if (!current()) return;
    let panels = 0;
    if (!failures.some((e) => e instanceof AuthError)) {
      const jobs =
        here.view === "referral"
          ? [loadReferral(here.org, here.id, current)]
          : [loadKpis(current), loadFunnel(current), loadStages(current), loadRates(current),
             loadWorklist(current), loadAlerts(current)];
      panels = jobs.length;
      for (const result of await Promise.allSettled(jobs)) {
        if (result.status === "rejected") failures.push(result.reason);
      }
    }
    if (!current()) return;
    if (failures.some((e) => e instanceof AuthError)) {
      askForToken();
      return; // no polling until a token is given
    }
    if (failures.length) {
      showBanner(failures.map((e) => String((e && e.message) || e)).join(" · "));
    } else {
      hideBanner();
    }
    if (failures.length < panels + 1) {
      $("#updated").textContent = "updated " + clock(new Date()) + (failures.length ? " (some panels failed)" : "");
    }
    state.timer = setTimeout(refresh, state.refreshSeconds * 1000);
  }

  function changed(panel, data) {
    const json = JSON.stringify(data);
    if (state.seen[panel] === json) return false;
    state.seen[panel] = json;
    state.cache[panel] = data;
    return true;
  }

  // -- banner / token ---------------------------------------------------------------------

  function showBanner(text) {
    $("#banner").hidden = false;
    $("#banner-text").textContent = text;
    $("#token-form").hidden = true;
  }

  function hideBanner() {
    $("#banner").hidden = true;
  }

  function askForToken() {
    state.paused = true;
    const had = Boolean(sessionStorage.getItem(TOKEN_KEY));
    $("#banner").hidden = false;
    $("#banner-text").textContent = had
      ? "The API token was refused (401). Enter a valid token for this worker."
      : "This worker requires an API token (401). Enter it below, or open the page with #token=<token>.";
    $("#token-form").hidden = false;
    $("#updated").textContent = "not authorized";
  }

  // -- filters ----------------------------------------------------------------------------

  function fillSelect(select, values, selected, keepFirst) {
    const want = [...new Set([...(values || []), ...selected])].filter((v) => v !== null && v !== "");
    const key = JSON.stringify(want);
    if (select.dataset.options !== key) {
      const first = keepFirst ? [select.options[0]] : [];
      select.replaceChildren(
        ...first,
        ...want.map((v) => {
          const option = document.createElement("option");
          option.value = String(v);
          option.textContent = String(v);
          return option;
        }),
      );
      select.dataset.options = key;
    }
    for (const option of select.options) option.selected = selected.includes(option.value);
  }

  function renderFilterOptions(o) {
    const f = state.filters;
    fillSelect($("#f-org"), o.orgs, f.org, false);
    fillSelect($("#f-specialty"), o.specialties, f.specialty, false);
    fillSelect($("#f-priority"), o.priorities, f.priority ? [f.priority] : [], true);
    fillSelect($("#f-flag"), o.flags, f.flag ? [f.flag] : [], true);
    if (!f.priority) $("#f-priority").value = "";
    if (!f.flag) $("#f-flag").value = "";
    const p = period();
    const from = $("#f-from");
    const to = $("#f-to");
    if (document.activeElement !== from) from.value = p.from || "";
    if (document.activeElement !== to) to.value = p.to || "";
    for (const input of [from, to]) {
      input.min = o.date_min || "";
    }
    $("#f-min-age").value = f.min_age_hours;
    $("#f-bucket").value = f.bucket;
  }

  function bindFilters() {
    const selected = (select) => [...select.selectedOptions].map((o) => o.value);
    const apply = () => {
      writeUrl();
      kick();
    };
    $("#f-org").addEventListener("change", (e) => {
      state.filters.org = selected(e.target);
      apply();
    });
    $("#f-specialty").addEventListener("change", (e) => {
      state.filters.specialty = selected(e.target);
      apply();
    });
    for (const id of ["#f-from", "#f-to"]) {
      $(id).addEventListener("change", () => {
        // Editing either date pins both, so the shared URL shows exactly this period.
        const from = $("#f-from").value;
        const to = $("#f-to").value;
        if (from && to && from > to) {
          showBanner("“From” is after “To”: pick a period that ends after it starts.");
          return;
        }
        if (!from && !to) {
          state.filters.from = "";
          state.filters.to = "";
        } else {
          state.filters.from = from;
          state.filters.to = to;
        }
        apply();
      });
    }
    $("#f-priority").addEventListener("change", (e) => {
      state.filters.priority = e.target.value;
      apply();
    });
    $("#f-flag").addEventListener("change", (e) => {
      state.filters.flag = e.target.value;
      apply();
    });
    $("#f-min-age").addEventListener("change", (e) => {
      const v = e.target.value.trim();
      state.filters.min_age_hours = /^\d+(\.\d+)?$/.test(v) ? v : "";
      apply();
    });
    $("#f-bucket").addEventListener("change", (e) => {
      state.filters.bucket = e.target.value;
      apply();
    });
    $("#f-reset").addEventListener("click", () => {
      state.filters = emptyFilters();
      if (state.options) renderFilterOptions(state.options);
      apply();
    });
    for (const form of [$("#filters"), $("#worklist-filters")]) {
      form.addEventListener("submit", (e) => e.preventDefault());
    }
    for (const th of document.querySelectorAll("#worklist th[data-sort]")) {
      th.querySelector("button").addEventListener("click", () => {
        const column = th.dataset.sort;
        const f = state.filters;
        if (f.sort === column) f.order = f.order === "asc" ? "desc" : "asc";
        else {
          f.sort = column;
          f.order = SORT_DEFAULT_ORDER[column] || "asc";
        }
        showSort();
        apply();
      });
    }
    $("#token-form").addEventListener("submit", (e) => {
      e.preventDefault();
      const token = $("#token-input").value.trim();
      if (!token) return;
      sessionStorage.setItem(TOKEN_KEY, token);
      $("#token-input").value = "";
      hideBanner();
      state.paused = false;
      kick();
    });
  }

  function showSort() {
    for (const th of document.querySelectorAll("#worklist th[data-sort]")) {
      if (th.dataset.sort === state.filters.sort) {
        th.setAttribute("aria-sort", state.filters.order === "asc" ? "ascending" : "descending");
      } else th.removeAttribute("aria-sort");
    }
  }

  // -- KPI tiles --------------------------------------------------------------------------

  function buildTiles() {
    const box = $("#tiles");
    for (const [key, label] of KPIS) {
      const tile = document.createElement("article");
      tile.className = "tile";
      tile.dataset.kpi = key;
      tile.dataset.value = "";
      tile.setAttribute("aria-label", label);
      const name = document.createElement("div");
      name.className = "label";
      name.textContent = label;
      const value = document.createElement("div");
      value.className = "value";
      value.textContent = "–";
      const trend = document.createElement("div");
      trend.className = "trend";
      trend.textContent = "\u00a0";
      tile.append(name, value, trend);
      box.append(tile);
    }
  }

  async function loadKpis(current) {
    const data = await api("/api/kpis", cohortParams());
    if (!current() || !changed("kpis", data)) return;
    const tiles = data.tiles || {};
    for (const [key, , defaultUnit, direction] of KPIS) {
      const tile = $(`.tile[data-kpi="${key}"]`);
      const t = tiles[key] || { value: null, previous: null };
      const unit = t.unit || defaultUnit;
      const value = isNum(t.value) ? t.value : null;
      const previous = isNum(t.previous) ? t.previous : null;
      tile.dataset.value = value === null ? "" : String(value);
      tile.dataset.previous = previous === null ? "" : String(previous);
      tile.dataset.unit = unit;
      $(".value", tile).textContent = fmt(value, unit);
      const trend = $(".trend", tile);
      const tr = trendOf(value, previous, unit, direction);
      trend.textContent = tr.text;
      trend.className = "trend" + (tr.cls ? " " + tr.cls : "");
      trend.title = "previous period: " + fmt(previous, unit);
      tile.classList.toggle("alert-tile", key === "at_risk" && value > 0);
    }
    const p = data.period || {};
    const prev = data.previous || {};
    $("#kpi-period").textContent =
      p.from && p.to ? `cohort created ${p.from} → ${p.to} (UTC); trend vs ${prev.from} → ${prev.to}` : "";
  }

  function trendOf(value, previous, unit, direction) {
    if (value === null || previous === null) return { text: "no previous-period data", cls: "" };
    const delta = value - previous;
    if (Math.abs(delta) < 1e-12) return { text: "→ unchanged vs previous", cls: "" };
    const arrow = delta > 0 ? "▲" : "▼";
    const sign = delta > 0 ? "+" : "−";
    const size = Math.abs(delta);
    let shown;
    if (unit === "ratio") shown = (size * 100).toFixed(1) + " pp";
    else if (unit === "hours") shown = size.toFixed(1) + " h";
    else if (unit === "score") shown = size.toFixed(2);
    else shown = Math.round(size).toLocaleString("en-US");
    const cls = direction === 0 ? "" : delta * direction > 0 ? "good" : "bad";
    return { text: `${arrow} ${sign}${shown} vs previous`, cls };
  }

  // -- funnel -----------------------------------------------------------------------------

  async function loadFunnel(current) {
    const data = await api("/api/funnel", cohortParams());
    if (!current() || !changed("funnel", data)) return;
    const box = $("#funnel");
    const stages = data.stages || [];
    if (!stages.length) {
      box.replaceChildren(note("No referrals in this period."));
      return;
    }
    const top = Math.max(1, ...stages.map((s) => s.referrals || 0));
    const first = stages[0].referrals || 0;
    box.replaceChildren(
      ...stages.map((s) => {
        const row = document.createElement("div");
        row.className = "funnel-row";
        row.dataset.stage = s.stage;
        row.dataset.value = String(s.referrals);
        const name = document.createElement("span");
        name.className = "name";
        name.textContent = s.stage;
        const track = document.createElement("div");
        track.className = "track";
        track.setAttribute("role", "img");
        track.setAttribute("aria-label", `${s.stage}: ${s.referrals} referrals`);
        const fill = document.createElement("div");
        fill.className = "fill";
        fill.style.width = ((100 * (s.referrals || 0)) / top).toFixed(2) + "%";
        track.append(fill);
        const count = document.createElement("span");
        count.className = "count";
        const share = first ? ` (${((100 * s.referrals) / first).toFixed(0)}%)` : "";
        count.textContent = (s.referrals || 0).toLocaleString("en-US") + share;
        row.append(name, track, count);
        return row;
      }),
    );
  }

  // -- stage bottlenecks ------------------------------------------------------------------

  async function loadStages(current) {
    const data = await api("/api/stages", cohortParams());
    if (!current() || !changed("stages", data)) return;
    drawStages();
  }

  function drawStages() {
    const box = $("#stages");
    const rows = (state.cache.stages && state.cache.stages.rows) || [];
    if (!rows.length) {
      box.replaceChildren(note("No finished stages for this cohort."));
      return;
    }
    const bySpecialty = new Map();
    for (const r of rows) {
      const key = r.specialty == null ? "(no specialty)" : String(r.specialty);
      if (!bySpecialty.has(key)) bySpecialty.set(key, []);
      bySpecialty.get(key).push(r);
    }
    const specialties = [...bySpecialty.keys()].sort();
    const W = Math.max(560, box.clientWidth || 900);
    const left = 110;
    const right = 230;
    const rowH = 15;
    const headH = 20;
    const gap = 10;
    const axisH = 22;
    const maxHours = Math.max(0, ...rows.map((r) => num(r.p90_hours) ?? num(r.median_hours) ?? 0));
    const ticks = niceTicks(maxHours, 6);
    const xMax = ticks[ticks.length - 1] || 1;
    const plotW = W - left - right;
    const x = (v) => left + (Math.max(0, v) / xMax) * plotW;
    let height = axisH;
    for (const s of specialties) height += headH + bySpecialty.get(s).length * rowH + gap;
    const svg = svgEl("svg", {
      viewBox: `0 0 ${W} ${height}`, width: W, height, role: "img",
      "aria-label": "Median and 90th percentile hours per stage, by specialty",
    });
    for (const t of ticks) {
      svg.append(svgEl("line", { x1: x(t), x2: x(t), y1: axisH - 4, y2: height, class: "grid-line" }));
      svg.append(svgEl("text", { x: x(t), y: 12, "text-anchor": "middle" }, fmtHours(t)));
    }
    let y = axisH;
    for (const specialty of specialties) {
      const group = bySpecialty.get(specialty).sort((a, b) => stageRank(a.stage) - stageRank(b.stage));
      const worst = group.reduce((m, r) => ((num(r.median_hours) ?? -1) > (num(m.median_hours) ?? -1) ? r : m), group[0]);
      svg.append(svgEl("text", { x: 4, y: y + 14, class: "strong" }, specialty));
      y += headH;
      for (const r of group) {
        const median = num(r.median_hours) ?? 0;
        const p90 = num(r.p90_hours) ?? median;
        const g = svgEl("g", { class: "stage-row", "data-specialty": specialty, "data-stage": r.stage });
        g.append(svgEl("title", {}, `${specialty} · ${r.stage}: median ${fmtHours(median)} h, p90 ${fmtHours(p90)} h, avg ${fmtHours(num(r.avg_hours) ?? 0)} h over ${r.referrals} referrals`));
        g.append(svgEl("text", { x: left - 8, y: y + 11, "text-anchor": "end" }, r.stage));
        g.append(svgEl("rect", { x: left, y: y + 2, width: Math.max(1, x(p90) - left), height: rowH - 4, rx: 2, class: "bar-p90" }));
        g.append(svgEl("rect", {
          x: left, y: y + 2, width: Math.max(1, x(median) - left), height: rowH - 4, rx: 2,
          class: r === worst ? "bar-median worst" : "bar-median",
        }));
        g.append(svgEl("text", { x: W - right + 10, y: y + 11 },
          `med ${fmtHours(median)} h · p90 ${fmtHours(p90)} h · n=${r.referrals}`));
        svg.append(g);
        y += rowH;
      }
      y += gap;
    }
    box.replaceChildren(svg);
  }

  // -- event rates ------------------------------------------------------------------------

  async function loadRates(current) {
    const q = new URLSearchParams();
    const f = state.filters;
    if (f.org.length) q.set("org", f.org.join(","));
    // Pinned dates apply; otherwise the server's default: the 30 days ending at the last
    // minute with events (events go on long after the cohort's last `created` day).
    if (f.from) q.set("from", f.from);
    if (f.to) q.set("to", f.to);
    q.set("bucket", f.bucket);
    const data = await api("/api/rates", q);
    if (!current() || !changed("rates", data)) return;
    const p = data.period || {};
    $("#rates-period").textContent = p.from && p.to ? `events ${p.from} → ${p.to} (UTC)` + (data.truncated ? " · truncated" : "") : "";
    drawRates();
  }

  function drawRates() {
    const box = $("#rates");
    const legend = $("#rates-legend");
    const data = state.cache.rates || { rows: [] };
    const rows = (data.rows || []).filter((r) => parseTime(r.t) !== null);
    if (!rows.length) {
      box.replaceChildren(note("No events in this period."));
      legend.replaceChildren();
      return;
    }
    const series = new Map();
    const times = new Set();
    for (const r of rows) {
      const t = parseTime(r.t);
      times.add(t);
      if (!series.has(r.type)) series.set(r.type, new Map());
      const m = series.get(r.type);
      m.set(t, (m.get(t) || 0) + (r.events || 0));
    }
    const ts = [...times].sort((a, b) => a - b);
    const types = [...series.keys()].sort((a, b) => total(series.get(b)) - total(series.get(a)) || (a < b ? -1 : 1));
    const W = Math.max(560, box.clientWidth || 900);
    const H = 260;
    const m = { l: 52, r: 16, t: 12, b: 30 };
    const plotW = W - m.l - m.r;
    const plotH = H - m.t - m.b;
    const yMaxRaw = Math.max(1, ...[...series.values()].flatMap((s) => [...s.values()]));
    const yTicks = niceTicks(yMaxRaw, 5);
    const yMax = yTicks[yTicks.length - 1];
    const t0 = ts[0];
    const t1 = ts[ts.length - 1];
    const x = (t) => m.l + (t1 > t0 ? ((t - t0) / (t1 - t0)) * plotW : plotW / 2);
    const y = (v) => m.t + plotH - (v / yMax) * plotH;
    const svg = svgEl("svg", {
      viewBox: `0 0 ${W} ${H}`, width: W, height: H, role: "img",
      "aria-label": `Events per ${data.bucket || state.filters.bucket} by type`,
    });
    for (const v of yTicks) {
      svg.append(svgEl("line", { x1: m.l, x2: W - m.r, y1: y(v), y2: y(v), class: "grid-line" }));
      svg.append(svgEl("text", { x: m.l - 6, y: y(v) + 4, "text-anchor": "end" }, compact(v)));
    }
    svg.append(svgEl("line", { x1: m.l, x2: W - m.r, y1: y(0), y2: y(0), class: "axis" }));
    const labels = Math.min(ts.length, Math.max(2, Math.floor(plotW / 110)));
    for (let i = 0; i < labels; i++) {
      const t = ts[Math.round((i * (ts.length - 1)) / Math.max(1, labels - 1))];
      const anchor = i === 0 ? "start" : i === labels - 1 ? "end" : "middle";
      svg.append(svgEl("text", { x: x(t), y: H - 10, "text-anchor": anchor }, timeLabel(t, data.bucket || state.filters.bucket)));
    }
    legend.replaceChildren();
    types.forEach((type, i) => {
      const color = PALETTE[i % PALETTE.length];
      const dash = i >= PALETTE.length ? "6 3" : null;
      const s = series.get(type);
      const points = ts.map((t) => `${x(t).toFixed(1)},${y(s.get(t) || 0).toFixed(1)}`);
      const g = svgEl("g", { class: "series", "data-type": type });
      g.append(svgEl("title", {}, `${type}: ${total(s).toLocaleString("en-US")} events`));
      const attrs = { points: points.join(" "), fill: "none", stroke: color, "stroke-width": 2, "stroke-linejoin": "round" };
      if (dash) attrs["stroke-dasharray"] = dash;
      g.append(svgEl("polyline", attrs));
      if (ts.length <= 40) {
        for (const t of ts) g.append(svgEl("circle", { cx: x(t), cy: y(s.get(t) || 0), r: 2.5, fill: color }));
      }
      svg.append(g);
      const li = document.createElement("li");
      const key = document.createElement("span");
      key.className = "key";
      key.style.background = color;
      li.append(key, document.createTextNode(`${type} (${total(s).toLocaleString("en-US")})`));
      legend.append(li);
    });
    box.replaceChildren(svg);
  }

  // -- worklist ---------------------------------------------------------------------------

  async function loadWorklist(current) {
    const f = state.filters;
    const q = new URLSearchParams();
    if (f.org.length) q.set("org", f.org.join(","));
    if (f.specialty.length) q.set("specialty", f.specialty.join(","));
    if (f.priority) q.set("priority", f.priority);
    if (f.flag) q.set("flag", f.flag);
    if (f.min_age_hours) q.set("min_age_hours", f.min_age_hours);
    q.set("sort", f.sort);
    q.set("order", f.order);
    q.set("limit", "200");
    const data = await api("/api/worklist", q);
    if (!current() || !changed("worklist", data)) return;
    const rows = data.rows || [];
    $("#worklist-count").textContent = `${rows.length.toLocaleString("en-US")} shown of ${(data.total ?? rows.length).toLocaleString("en-US")} at-risk open referrals`;
    const body = $("#worklist tbody");
    if (!rows.length) {
      const tr = document.createElement("tr");
      const td = cell("No at-risk open referrals match these filters.");
      td.colSpan = 8;
      td.className = "empty";
      tr.append(td);
      body.replaceChildren(tr);
      return;
    }
    body.replaceChildren(
      ...rows.map((r) => {
        const key = r.org_id + "/" + r.referral_id;
        const tr = document.createElement("tr");
        tr.dataset.key = key;
        if (key === state.selected) tr.classList.add("selected");
        const link = document.createElement("a");
        link.href = referralHref(r.org_id, r.referral_id);
        link.className = "referral-link";
        link.textContent = r.referral_id;
        link.addEventListener("click", () => {
          state.selected = key;
        });
        const priority = chip(r.priority || "–", "priority-" + (r.priority || "none"));
        const flags = document.createElement("td");
        for (const flag of r.flags || []) flags.append(chip(flag));
        tr.append(
          cell(r.org_id), cell(link), cell(r.specialty ?? "–"), cell(priority), cell(r.status),
          flags, cell(fmtTime(r.created_at)), cell(isNum(r.age_hours) ? r.age_hours.toFixed(1) : "–", "num"),
        );
        return tr;
      }),
    );
  }

  // -- alerts -----------------------------------------------------------------------------

  async function loadAlerts(current) {
    const q = new URLSearchParams();
    if (state.filters.org.length) q.set("org", state.filters.org.join(","));
    q.set("state", "firing");
    q.set("limit", "100");
    const data = await api("/api/alerts", q);
    if (!current() || !changed("alerts", data)) return;
    const rows = data.rows || [];
    $("#alerts-count").textContent = rows.length === 100 ? "newest 100" : `${rows.length} firing`;
    renderAlerts($("#alerts"), rows, true);
  }

  function renderAlerts(list, rows, withReferral) {
    if (!rows.length) {
      const li = document.createElement("li");
      li.className = "none";
      li.textContent = "No alerts.";
      list.replaceChildren(li);
      return;
    }
    list.replaceChildren(
      ...rows.map((a) => {
        const li = document.createElement("li");
        li.className = "sev-" + String(a.severity || "unknown").toLowerCase();
        li.dataset.alertId = a.alert_id;
        const head = document.createElement("div");
        const rule = document.createElement("span");
        rule.className = "rule";
        rule.textContent = a.rule;
        head.append(rule, " ", chip(a.severity || "?"), " ", chip(a.state || "?"));
        const meta = document.createElement("div");
        meta.className = "meta";
        if (withReferral && a.referral_id) {
          const link = document.createElement("a");
          link.href = referralHref(a.org_id, a.referral_id);
          link.textContent = `${a.org_id} / ${a.referral_id}`;
          meta.append(link, " · ");
        }
        meta.append(`raised ${fmtTime(a.raised_at)} (${ago(a.raised_at)})`);
        if (a.resolved_at) meta.append(` · resolved ${fmtTime(a.resolved_at)}`);
        li.append(head, meta);
        return li;
      }),
    );
  }

  // -- one referral's timeline ------------------------------------------------------------

  async function loadReferral(org, id, current) {
    let data;
    try {
      data = await api(`/api/referrals/${encodeURIComponent(org)}/${encodeURIComponent(id)}`);
    } catch (error) {
      if (error instanceof ApiError && error.status === 404) {
        if (!current()) return;
        state.seen.referral = null;
        $("#referral-title").textContent = `Referral ${id} not found`;
        $("#referral-title").dataset.referralId = id;
        $("#referral-facts").replaceChildren();
        $("#timeline").replaceChildren(note(`No referral ${id} in ${org}.`));
        $("#timeline-events tbody").replaceChildren();
        $("#timeline-events").dataset.count = "0";
        $("#timeline-stages tbody").replaceChildren();
        $("#referral-alerts").replaceChildren();
        $("#events-count").textContent = "";
        return;
      }
      throw error;
    }
    if (!current() || !changed("referral", data)) return;
    const r = data.referral || {};
    const title = $("#referral-title");
    title.textContent = `Referral ${r.referral_id ?? id} · ${r.org_id ?? org}`;
    title.dataset.referralId = r.referral_id ?? id;
    title.dataset.orgId = r.org_id ?? org;
    const facts = $("#referral-facts");
    facts.replaceChildren(
      ...Object.entries(r)
        .filter(([k]) => k !== "patient_ref" && k !== "org_id" && k !== "referral_id")
        .map(([k, v]) => {
          const div = document.createElement("div");
          const dt = document.createElement("dt");
          dt.textContent = k.replace(/_/g, " ");
          const dd = document.createElement("dd");
          if (Array.isArray(v)) {
            if (!v.length) dd.textContent = "–";
            for (const item of v) dd.append(chip(String(item)));
          } else if (typeof v === "string" && /^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}/.test(v)) {
            dd.textContent = fmtTime(v);
          } else if (v === null || v === undefined) dd.textContent = "–";
          else dd.textContent = typeof v === "object" ? JSON.stringify(v) : String(v);
          div.append(dt, dd);
          return div;
        }),
    );
    drawTimeline();
    const events = data.events || [];
    $("#events-count").textContent = `${events.length} event${events.length === 1 ? "" : "s"}`;
    $("#timeline-events").dataset.count = String(events.length);
    $("#timeline-events tbody").replaceChildren(
      ...events.map((e) => {
        const tr = document.createElement("tr");
        tr.dataset.eventId = e.event_id;
        const data = e.data && typeof e.data === "object" && Object.keys(e.data).length ? JSON.stringify(e.data) : "–";
        tr.append(cell(fmtTime(e.occurred_at)), cell(e.type), cell(e.source), cell(e.event_id), cell(data, "data-json"));
        return tr;
      }),
    );
    const stages = data.stages || [];
    const stageBody = $("#timeline-stages tbody");
    if (!stages.length) {
      const tr = document.createElement("tr");
      const td = cell("No finished stage yet.", "empty");
      td.colSpan = 4;
      tr.append(td);
      stageBody.replaceChildren(tr);
    } else {
      stageBody.replaceChildren(
        ...stages.map((s) => {
          const tr = document.createElement("tr");
          tr.append(cell(s.stage), cell(fmtTime(s.entered_at)), cell(fmtTime(s.left_at)),
            cell(isNum(s.hours) ? s.hours.toFixed(1) : "–", "num"));
          return tr;
        }),
      );
    }
    renderAlerts($("#referral-alerts"), data.alerts || [], false);
  }

  function drawTimeline() {
    const box = $("#timeline");
    const data = state.cache.referral;
    if (!data) return;
    const events = (data.events || []).map((e) => ({ ...e, at: parseTime(e.occurred_at) })).filter((e) => e.at !== null);
    const milestones = Object.entries(data.milestones || {})
      .map(([name, at]) => ({ name, at: parseTime(at) }))
      .filter((m) => m.at !== null)
      .sort((a, b) => a.at - b.at);
    const stages = (data.stages || [])
      .map((s) => ({ ...s, from: parseTime(s.entered_at), to: parseTime(s.left_at) }))
      .filter((s) => s.from !== null && s.to !== null);
    // An open referral is still in the stage of its status: draw it up to now.
    const status = (data.referral || {}).status;
    const openStages = ["created", "routed", "contacted", "scheduled", "seen"];
    const since = milestones.filter((m) => m.name === status).map((m) => m.at)[0];
    const ongoing = openStages.includes(status) && since !== undefined ? { stage: status, from: since, to: Date.now() } : null;
    const all = [...events.map((e) => e.at), ...milestones.map((m) => m.at), ...stages.flatMap((s) => [s.from, s.to])];
    if (ongoing) all.push(ongoing.to);
    if (!all.length) {
      box.replaceChildren(note("Nothing to draw yet."));
      return;
    }
    let t0 = Math.min(...all);
    let t1 = Math.max(...all);
    if (t1 - t0 < 3600e3) {
      t0 -= 1800e3;
      t1 += 1800e3;
    }
    const pad = (t1 - t0) * 0.03;
    t0 -= pad;
    t1 += pad;
    const sources = [...new Set(events.map((e) => e.source || "?"))];
    const W = Math.max(560, box.clientWidth || 900);
    const left = 110;
    const right = 64;
    const stageY = 8;
    const stageH = 24;
    const mileY = stageY + stageH + 14;
    const laneY = mileY + 3 * 13 + 10;
    const laneH = 24;
    const axisY = laneY + sources.length * laneH + 8;
    const H = axisY + 26;
    const x = (t) => left + ((t - t0) / (t1 - t0)) * (W - left - right);
    const svg = svgEl("svg", {
      viewBox: `0 0 ${W} ${H}`, width: W, height: H, role: "img",
      "aria-label": `Timeline: ${events.length} events, ${milestones.length} milestones, ${stages.length} stages`,
    });
    svg.append(svgEl("text", { x: left - 8, y: stageY + 16, "text-anchor": "end" }, "stages"));
    svg.append(svgEl("text", { x: left - 8, y: mileY + 10, "text-anchor": "end" }, "milestones"));
    // time axis
    const span = t1 - t0;
    const tickCount = Math.max(2, Math.floor((W - left - right) / 130));
    for (let i = 0; i <= tickCount; i++) {
      const t = t0 + (span * i) / tickCount;
      svg.append(svgEl("line", { x1: x(t), x2: x(t), y1: stageY, y2: axisY, class: "grid-line" }));
      svg.append(svgEl("text", { x: x(t), y: axisY + 16, "text-anchor": "middle" }, fmtTime(new Date(t).toISOString()).slice(0, 16)));
    }
    svg.append(svgEl("line", { x1: left, x2: W - right, y1: axisY, y2: axisY, class: "axis" }));
    if (ongoing) {
      const g = svgEl("g", { class: "stage-span ongoing", "data-stage": ongoing.stage });
      const hours = (ongoing.to - ongoing.from) / 3600e3;
      g.append(svgEl("title", {}, `${ongoing.stage}: since ${fmtTime(new Date(ongoing.from).toISOString())}, ${hours.toFixed(1)} h so far`));
      const w = Math.max(2, x(ongoing.to) - x(ongoing.from));
      g.append(svgEl("rect", { x: x(ongoing.from), y: stageY, width: w, height: stageH, rx: 3, fill: STAGE_COLORS[ongoing.stage] || "#cbd5e1", class: "ongoing-bar" }));
      if (w > 110) g.append(svgEl("text", { x: x(ongoing.from) + 6, y: stageY + 16, class: "strong" }, `${ongoing.stage} ${hours.toFixed(1)} h so far`));
      svg.append(g);
      svg.append(svgEl("line", { x1: x(ongoing.to), x2: x(ongoing.to), y1: stageY - 4, y2: axisY, class: "now-line" }));
      svg.append(svgEl("text", { x: x(ongoing.to) + 3, y: axisY - 4, class: "now-label" }, "now"));
    }
    for (const s of stages) {
      const g = svgEl("g", { class: "stage-span", "data-stage": s.stage });
      g.append(svgEl("title", {}, `${s.stage}: ${fmtTime(s.entered_at)} → ${fmtTime(s.left_at)} (${isNum(s.hours) ? s.hours.toFixed(1) : "?"} h)`));
      const w = Math.max(2, x(s.to) - x(s.from));
      g.append(svgEl("rect", { x: x(s.from), y: stageY, width: w, height: stageH, rx: 3, fill: STAGE_COLORS[s.stage] || "#cbd5e1", stroke: "#fff" }));
      if (w > 70) {
        g.append(svgEl("text", { x: x(s.from) + 6, y: stageY + 16, class: "strong" }, `${s.stage} ${isNum(s.hours) ? s.hours.toFixed(1) + " h" : ""}`));
      }
      svg.append(g);
    }
    milestones.forEach((m, i) => {
      const g = svgEl("g", { class: "milestone", "data-milestone": m.name });
      g.append(svgEl("title", {}, `${m.name}: ${fmtTime(new Date(m.at).toISOString())}`));
      g.append(svgEl("line", { x1: x(m.at), x2: x(m.at), y1: stageY, y2: axisY, class: "milestone-line" }));
      const nearEnd = x(m.at) > W - right - 90;
      g.append(svgEl("text", {
        x: x(m.at) + (nearEnd ? -3 : 3), y: mileY + 10 + (i % 3) * 13, class: "milestone-label",
        "text-anchor": nearEnd ? "end" : "start",
      }, m.name));
      svg.append(g);
    });
    sources.forEach((source, i) => {
      const y = laneY + i * laneH + laneH / 2;
      svg.append(svgEl("text", { x: left - 8, y: y + 4, "text-anchor": "end" }, source));
      svg.append(svgEl("line", { x1: left, x2: W - right, y1: y, y2: y, class: "lane" }));
    });
    for (const e of events) {
      const y = laneY + sources.indexOf(e.source || "?") * laneH + laneH / 2;
      const dot = svgEl("circle", { cx: x(e.at), cy: y, r: 5, class: "event-dot", "data-event-id": e.event_id });
      dot.append(svgEl("title", {}, `${e.type} · ${e.source} · ${fmtTime(e.occurred_at)}`));
      svg.append(dot);
    }
    box.replaceChildren(svg);
  }

  // -- views ------------------------------------------------------------------------------

  function showView() {
    if (location.hash === "#dashboard" || (location.hash === "" && location.href.endsWith("#"))) {
      history.replaceState(history.state, "", location.pathname + location.search);
    }
    const here = route();
    const dashboard = $("#dashboard-view");
    const referral = $("#referral-view");
    if (here.view === "referral") {
      if (!dashboard.hidden) state.dashboardScroll = window.scrollY;
      state.selected = here.org + "/" + here.id;
      state.seen.referral = null;
      state.cache.referral = null;
      $("#referral-title").textContent = `Referral ${here.id}`;
      $("#referral-title").dataset.referralId = "";
      $("#timeline").replaceChildren(note("Loading…"));
      $("#timeline-events tbody").replaceChildren();
      $("#timeline-events").dataset.count = "";
      dashboard.hidden = true;
      referral.hidden = false;
      document.title = `reftrack — referral ${here.id}`;
      window.scrollTo(0, 0);
    } else {
      const wasHidden = dashboard.hidden;
      referral.hidden = true;
      dashboard.hidden = false;
      document.title = "reftrack — referral dashboard";
      for (const tr of document.querySelectorAll("#worklist tbody tr")) {
        tr.classList.toggle("selected", tr.dataset.key === state.selected);
      }
      if (wasHidden) {
        // Charts measured while hidden: redraw at the real width, then restore the scroll.
        drawStages();
        drawRates();
        window.scrollTo(0, state.dashboardScroll);
      }
    }
  }

  // -- small helpers ----------------------------------------------------------------------

  function svgEl(name, attrs = {}, text) {
    const el = document.createElementNS(SVG_NS, name);
    for (const [k, v] of Object.entries(attrs)) {
      if (v !== null && v !== undefined) el.setAttribute(k, String(v));
    }
    if (text !== undefined) el.textContent = String(text);
    return el;
  }

  function cell(content, className) {
    const td = document.createElement("td");
    if (content instanceof Node) td.append(content);
    else td.textContent = content === null || content === undefined ? "–" : String(content);
    if (className) td.className = className;
    return td;
  }

  function chip(text, extra) {
    const span = document.createElement("span");
    span.className = "chip" + (extra ? " " + extra : "");
    span.textContent = text;
    return span;
  }

  function note(text) {
    const p = document.createElement("p");
    p.className = "empty";
    p.textContent = text;
    return p;
  }

  function isNum(v) {
    return typeof v === "number" && Number.isFinite(v);
  }

  function num(v) {
    return isNum(v) ? v : null;
  }

  function total(map) {
    let n = 0;
    for (const v of map.values()) n += v;
    return n;
  }

  function stageRank(stage) {
    const i = STAGE_ORDER.indexOf(stage);
    return i < 0 ? STAGE_ORDER.length : i;
  }

  function fmt(value, unit) {
    if (value === null || value === undefined || !isNum(value)) return "–";
    if (unit === "ratio") return (value * 100).toFixed(1) + "%";
    if (unit === "hours") return value.toFixed(1) + " h";
    if (unit === "score") return value.toFixed(2);
    return Math.round(value).toLocaleString("en-US");
  }

  function fmtHours(v) {
    return v >= 100 ? v.toFixed(0) : v.toFixed(1);
  }

  function compact(v) {
    if (v >= 1e6) return (v / 1e6).toFixed(1).replace(/\.0$/, "") + "M";
    if (v >= 1e3) return (v / 1e3).toFixed(1).replace(/\.0$/, "") + "k";
    return String(Math.round(v * 100) / 100);
  }

  function niceTicks(max, count) {
    if (!(max > 0)) return [0, 1];
    const raw = max / count;
    const magnitude = 10 ** Math.floor(Math.log10(raw));
    const step = [1, 2, 2.5, 5, 10].map((m) => m * magnitude).find((s) => s >= raw);
    const ticks = [];
    for (let v = 0; v < max + step * 0.999; v += step) ticks.push(Number(v.toPrecision(12)));
    return ticks;
  }

  /** Milliseconds since the epoch of an ISO-8601 / ClickHouse time (UTC when no offset). */
  function parseTime(s) {
    if (s === null || s === undefined || s === "") return null;
    let t = String(s).trim().replace(" ", "T");
    t = t.replace(/(\.\d{3})\d+/, "$1");
    if (/^\d{4}-\d{2}-\d{2}$/.test(t)) t += "T00:00:00";
    if (!/(Z|[+-]\d{2}:?\d{2})$/.test(t)) t += "Z";
    const ms = Date.parse(t);
    return Number.isNaN(ms) ? null : ms;
  }

  function fmtTime(s) {
    const ms = parseTime(s);
    if (ms === null) return s ? String(s) : "–";
    return new Date(ms).toISOString().slice(0, 19).replace("T", " ");
  }

  function timeLabel(ms, bucket) {
    const iso = new Date(ms).toISOString();
    if (bucket === "minute") return iso.slice(5, 16).replace("T", " ");
    if (bucket === "hour") return iso.slice(5, 13).replace("T", " ") + "h";
    return iso.slice(0, 10);
  }

  function ago(s) {
    const ms = parseTime(s);
    if (ms === null) return "?";
    const minutes = Math.max(0, (Date.now() - ms) / 60000);
    if (minutes < 60) return `${Math.round(minutes)} min ago`;
    if (minutes < 48 * 60) return `${(minutes / 60).toFixed(1)} h ago`;
    return `${Math.round(minutes / 1440)} d ago`;
  }

  function addDays(day, n) {
    const d = new Date(day + "T00:00:00Z");
    d.setUTCDate(d.getUTCDate() + n);
    return d.toISOString().slice(0, 10);
  }

  function clock(d) {
    const p = (n) => String(n).padStart(2, "0");
    return `${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}`;
  }

  // -- start ------------------------------------------------------------------------------

  function start() {
    takeToken();
    readUrl();
    buildTiles();
    bindFilters();
    showSort();
    showView();
    window.addEventListener("hashchange", () => {
      showView();
      kick();
    });
    let resizeTimer = null;
    window.addEventListener("resize", () => {
      clearTimeout(resizeTimer);
      resizeTimer = setTimeout(() => {
        if (!$("#dashboard-view").hidden) {
          drawStages();
          drawRates();
        } else drawTimeline();
      }, 150);
    });
    kick();
  }

  start();
})();
