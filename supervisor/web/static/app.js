// yolo-supervisor web view: the browser side. Every value from the server is set as text
// (textContent), never parsed as markup. Pages stay live through server-sent events.
"use strict";

window.__pageId = Math.random();  // stays the same while the page updates itself (no reload)
const $ = (sel, root = document) => root.querySelector(sel);
const COLOURS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf"];
const DOWN = "#d62728";
let ME = null;

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v;
    else if (k.startsWith("data-") || k === "title" || k === "href") e.setAttribute(k, v);
    else e[k] = v;
  }
  for (const c of children) e.append(c instanceof Node ? c : document.createTextNode(c == null ? "" : String(c)));
  return e;
}
const td = (text, cls) => el("td", cls ? { class: cls } : {}, text);

function duration(s) {
  if (s == null) return "-";
  s = Math.round(s);
  if (s < 3600) return `${Math.floor(s / 60)}m${String(s % 60).padStart(2, "0")}s`;
  if (s < 86400) return `${Math.floor(s / 3600)}h${String(Math.floor((s % 3600) / 60)).padStart(2, "0")}m`;
  return `${Math.floor(s / 86400)}d${String(Math.floor((s % 86400) / 3600)).padStart(2, "0")}h`;
}
const percent = (f) => (f == null ? "-" : `${Math.round(f * 100)}%`);
const clock = (ts) => (ts ? new Date(ts * 1000).toLocaleString() : "-");
const speed = (b) => (b == null ? "-" : b >= 1 ? `${b.toFixed(2)} it/s` : `${(1 / b).toFixed(1)} s/it`);

function restarts(count, byCause) {
  if (!count || !byCause) return String(count);
  return `${count} (` + Object.entries(byCause).map(([c, n]) => (n === 1 ? c : `${c} x${n}`)).join(", ") + ")";
}

function progressFraction(j) {
  if (j.epochs == null) return null;
  let done = j.state === "completed" ? j.epoch : j.epochs_done;
  if (j.batches && j.batch != null && j.epoch > j.epochs_done) done = j.epoch - 1 + Math.min(1, j.batch / j.batches);
  return Math.max(0, Math.min(1, done / Math.max(1, j.epochs)));
}

async function whoAmI() {
  const r = await fetch("/api/me");
  if (r.status === 401) { location.reload(); return; }
  ME = await r.json();
  $("#user").textContent = ME.user;
}

function live(url, handlers) {
  const es = new EventSource(url);
  for (const [kind, fn] of Object.entries(handlers)) es.addEventListener(kind, (ev) => fn(JSON.parse(ev.data)));
  es.onopen = () => { $("#live").textContent = "live"; $("#live").className = ""; };
  es.onerror = () => { $("#live").textContent = "reconnecting"; $("#live").className = "down"; };
  return es;
}

// -- overview ---------------------------------------------------------------------------
const WAITING = ["queued", "held", "backoff"];

function showOverview(data) {
  window.__last = data;
  if (data.error) { $("#count").textContent = data.error; return; }
  $("#count").textContent = `(${data.jobs.length})`;
  $("#jobs tbody").replaceChildren(...data.jobs.map(jobRow));
  $("#waiting").replaceChildren(...data.jobs.filter((j) => WAITING.includes(j.state) && j.state_reason)
    .map((j) => el("li", {}, `${j.name}: ${j.state_reason}`)));
  if (!$("#waiting").children.length) $("#waiting").append(el("li", { class: "muted" }, "no job is waiting"));
  $("#gpus tbody").replaceChildren(...data.gpus.map(gpuRow));
  if (!data.gpus.length) $("#gpus tbody").append(el("tr", {}, el("td", { colSpan: 6, class: "muted" },
    "no GPUs (none seen by NVML and none listed under `gpus` in config.yaml)")));
}

function jobRow(j) {
  const gp = j.goodput || {};
  const f = progressFraction(j);
  const bar = f == null ? el("span", {}, "-") : el("span", {}, el("progress", { max: 1, value: f }), ` ${percent(f)}`);
  const name = el("td", {}, el("a", { href: `/job/${encodeURIComponent(j.name)}` }, j.name));
  const row = el("tr", { "data-job": j.name, "data-state": j.state }, name, td(j.state, `state-${j.state}`),
    td(j.owner_uid == null ? "-" : `uid ${j.owner_uid}`), td(j.gpus || "-"),
    td(`${j.epoch}/${j.epochs == null ? "?" : j.epochs}`), el("td", {}, bar), td(speed(j.batches_per_s)),
    td(duration(j.eta_s)), td(restarts(j.restarts, gp.restarts_by_cause)), td(j.last_cause || "-"),
    td(duration(j.uptime_s)), td(duration(gp.down_s)), td(percent(gp.training_fraction)));
  return row;
}

function gpuRow(g) {
  const memory = g.memory_used_mib == null ? "-" : `${g.memory_used_mib}/${g.memory_total_mib} MiB`;
  const health = g.problems.length ? `${g.health}: ${g.problems.join("; ")}` : g.health;
  const pids = Object.entries(g.pids).map(([p, m]) => `${p} (${m} MiB)`).join(", ") || "-";
  return el("tr", {}, td(g.index), td(health), td(memory), td(g.utilization_pct == null ? "-" : `${g.utilization_pct}%`),
    td(g.job || "-"), td(pids));
}

async function overviewPage() {
  await whoAmI();
  live("/api/overview/stream", { overview: showOverview });
}

// -- a job's page -------------------------------------------------------------------------
const JOB = decodeURIComponent(location.pathname.split("/").pop());
let charts = [];
let drawnCurves = null;

function showJob(d) {
  const j = d.job, gp = d.goodput;
  document.title = `yolo-supervisor: ${j.name}`;
  $("#name").textContent = j.name;
  $("#state").textContent = j.state;
  $("#state").className = `state-${j.state}`;
  clearActionOnceMoved(j.state);
  $("#reason").textContent = j.state_reason ? `(${j.state_reason})` : "";
  $("#summary").textContent = `epoch ${j.epoch}/${j.epochs == null ? "?" : j.epochs}, GPUs ${j.gpus || "-"}, ` +
    `speed ${speed(j.batches_per_s)}, ETA ${duration(j.eta_s)}; goodput: wall ${duration(gp.wall_s)} = training ` +
    `${duration(gp.training_s)} (${percent(gp.training_fraction)}) + startup ${duration(gp.startup_s)} + down ` +
    `${duration(gp.down_s)} + paused ${duration(gp.paused_s)}; epochs redone ${gp.epochs_redone}; ` +
    `restarts ${restarts(gp.restarts, gp.restarts_by_cause)}`;
  showInterruptions(gp.interruptions);
  showTimeline(gp.segments, j.created_at);
  showCurves(d.curves, gp.interruptions, d.curves_error);
  $("#attempts tbody").replaceChildren(...d.attempts.map(attemptRow));
  $("#events tbody").replaceChildren(...d.events.map(eventRow));
}

function interruptionLabel(i) {
  return `attempt ${i.attempt}: ${i.cause}, ${i.gap_kind} ${duration(i.gap_s)}` +
    (i.resumed ? `, resumed from epoch ${i.resumed_epoch}` : " (not resumed)") +
    (i.epochs_redone ? `, ${i.epochs_redone} epoch(s) redone` : "");
}

function showInterruptions(list) {
  $("#interruptions").replaceChildren(...list.map((i) =>
    el("li", { "data-cause": i.cause, "data-attempt": i.attempt }, interruptionLabel(i))));
  if (!list.length) $("#interruptions").append(el("li", { class: "muted" }, "none"));
}

function showTimeline(segments, origin) {
  const span = Math.max(1, ...segments.map((s) => s.end - origin));
  $("#timeline").replaceChildren(...segments.map((s) => el("div", {
    class: `seg-${s.kind}`, "data-kind": s.kind,
    title: `${s.kind}${s.cause ? " after " + s.cause : ""}: ${duration(s.end - s.start)}`,
    style: `width: ${(100 * (s.end - s.start)) / span}%`,
  })));
  $("#timeline-span").textContent = `(${duration(span)} in all)`;
}

function showCurves(curves, interruptions, error) {
  $("#curves-note").textContent = error ? `curves: ${error}` :
    curves.epochs.length ? "" : "no epoch finished yet: the curves appear after the first one";
  const key = JSON.stringify([curves, interruptions]);
  if (key === drawnCurves) return;  // unchanged: keep the charts (and the user's zoom)
  drawnCurves = key;
  charts.forEach((c) => c.destroy());
  charts = [];
  const box = $("#charts");
  box.replaceChildren();
  if (!curves.epochs.length || typeof uPlot === "undefined") return;
  for (const group of curves.groups) {
    const holder = el("div", { class: "chart", "data-group": group.title }, el("h3", {}, group.title));
    box.append(holder);
    const names = Object.keys(group.series);
    const opts = {
      width: Math.max(360, holder.clientWidth - 12), height: 220,
      scales: { x: { time: false, range: [0, curves.epochs.length + 0.5] } },
      axes: [{ label: "epochs completed" }, {}],
      series: [{ label: "epoch" }, ...names.map((n, i) => ({ label: n, stroke: COLOURS[i % COLOURS.length], width: 1.5,
        points: { show: true, size: 5 } }))],
      hooks: { draw: [(u) => drawInterruptions(u, interruptions)] },
    };
    charts.push(new uPlot(opts, [curves.epochs, ...names.map((n) => group.series[n])], holder));
  }
}

// Every interruption as a dashed line at the epoch the next attempt resumed from, labelled with
// its cause; the epochs trained twice after it shaded (what `plot` draws).
function drawInterruptions(u, interruptions) {
  const ctx = u.ctx, top = u.bbox.top, height = u.bbox.height;
  ctx.save();
  ctx.font = `${11 * devicePixelRatio}px sans-serif`;
  ctx.textAlign = "left";  // uPlot leaves its last axis' alignment (right): the labels ran left of their lines
  interruptions.forEach((i, n) => {
    const x = u.valToPos(i.resumed_epoch, "x", true);
    if (i.epochs_redone) {
      ctx.fillStyle = "rgba(214, 39, 40, 0.12)";
      ctx.fillRect(x, top, u.valToPos(i.resumed_epoch + i.epochs_redone, "x", true) - x, height);
    }
    ctx.strokeStyle = DOWN;
    ctx.setLineDash([6, 4]);
    ctx.lineWidth = 1.5 * devicePixelRatio;
    ctx.beginPath();
    ctx.moveTo(x, top);
    ctx.lineTo(x, top + height);
    ctx.stroke();
    ctx.fillStyle = DOWN;
    ctx.fillText(`${i.cause} (${i.gap_kind} ${duration(i.gap_s)})`, x + 4, top + 14 * devicePixelRatio * (n + 1));
  });
  ctx.restore();
}

function attemptRow(a) {
  const ended = a.ended_at == null ? "-" : a.signal != null ? signalName(a.signal)
    : a.exit_code != null ? `exit ${a.exit_code}` : "unknown";
  const start = a.batch_before ? `${a.epochs_before}+${a.batch_before}b` : String(a.epochs_before);
  return el("tr", { "data-attempt": a.number }, td(a.number), td(clock(a.started_at)), td(clock(a.ended_at)),
    td(a.slurm_job_id ? `slurm:${a.slurm_job_id}` : a.pid || "-"), td(a.devices || "-"), td(ended),
    td(a.cause || "(running)"), td(`${start}->${a.epochs_after == null ? "?" : a.epochs_after}`),
    td(duration(a.training_s)), td(a.ended_at ? duration(a.down_after_s) : "-"),
    td(`${a.epochs_redone} ep / ${a.batches_redone || 0} b`), td(a.detail || "", "detail"));
}

const SIGNALS = { 1: "SIGHUP", 2: "SIGINT", 6: "SIGABRT", 9: "SIGKILL", 11: "SIGSEGV", 15: "SIGTERM" };
const signalName = (n) => SIGNALS[n] || `signal ${n}`;

function eventRow(e) {
  const move = e.to_state ? `${e.from_state || ""}->${e.to_state}` : "";
  return el("tr", { "data-kind": e.kind }, td(clock(e.at)), td(e.kind), td(move), td(e.reason || "", "reason"),
    td(e.actor || ""));
}

const LOG_KEEP = 200000;  // characters of log kept on the page
function showLog(chunk) {
  const pre = $("#log");
  if (chunk.error) { pre.textContent = `log: ${chunk.error}`; return; }
  const atBottom = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
  const text = (chunk.reset ? "" : pre.textContent) + chunk.text;
  pre.textContent = text.length > LOG_KEEP ? text.slice(-LOG_KEEP) : text;
  if (atBottom) pre.scrollTop = pre.scrollHeight;
}

// The state an action's answer showed: its message stays until the job moves on from there.
let actedState = null;

async function act(action) {
  const out = $("#action-result");
  out.textContent = `${action}...`;
  out.className = "";
  actedState = null;
  const r = await fetch(`/api/job/${encodeURIComponent(JOB)}/${action}`,
    { method: "POST", headers: { "X-CSRF-Token": ME.csrf } });
  const body = await r.json();
  out.textContent = r.ok ? `${action}: ${body.state}${body.state_reason ? " (" + body.state_reason + ")" : ""}` : body.message;
  out.className = r.ok ? "ok" : "error";
  out.setAttribute("data-status", r.status);
  if (r.ok) actedState = body.state;
}

function clearActionOnceMoved(state) {
  if (actedState === null || state === actedState) return;
  const out = $("#action-result");
  out.textContent = "";
  out.className = "";
  out.removeAttribute("data-status");
  actedState = null;
}

async function jobPage() {
  await whoAmI();
  for (const b of document.querySelectorAll("button[data-action]")) b.addEventListener("click", () => act(b.dataset.action));
  live(`/api/job/${encodeURIComponent(JOB)}/stream`, {
    job: showJob, log: showLog,
    failure: (f) => { $("#state").textContent = f.message; },
  });
}

// -- usage ---------------------------------------------------------------------------------
function usageCells(r) {
  return [td(r.hours.toFixed(2)), td(r.gpu_hours.toFixed(2)), td(r.lost_hours.toFixed(2)), td(r.lost_gpu_hours.toFixed(2)),
    td(percent(r.lost_fraction)), td(r.attempts), td(r.restarts)];
}

async function showUsage() {
  const r = await fetch(`/api/usage?since=${encodeURIComponent($("#since").value)}`);
  const u = await r.json();
  if (!r.ok) { $("#total").textContent = u.message; return; }
  $("#total").textContent = `since ${clock(u.since)}: ${u.total.gpu_hours.toFixed(2)} GPU-hours ` +
    `(${u.total.hours.toFixed(2)} hours of attempts), ${u.total.lost_gpu_hours.toFixed(2)} GPU-hours ` +
    `(${u.total.lost_hours.toFixed(2)} hours) lost to restarts and redone work`;
  $("#users tbody").replaceChildren(...u.users.map((x) => el("tr", { "data-user": x.user }, td(x.user), ...usageCells(x))));
  $("#usage-jobs tbody").replaceChildren(...u.jobs.map((x) =>
    el("tr", { "data-job": x.job }, td(x.job), td(x.user), td(x.state), ...usageCells(x))));
}

async function usagePage() {
  await whoAmI();
  $("#since").addEventListener("change", showUsage);
  await showUsage();
}

({ overview: overviewPage, job: jobPage, usage: usagePage })[document.body.dataset.page]();
