// One job: status and progress, live metric curves (zoom, log scale), streaming logs, events, artifacts
// with sizes, checksums and downloads, cancel and priority. Everything updates from the job's event stream.

import { api, download, qs, sse } from "../api.js";
import { lineChart } from "../chart.js";
import { add, bytes, clear, errorBox, h, jsonBlock, progressBar, progressText, short, statusBadge, TERMINAL, when } from "../dom.js";

const MAX_POINTS = 2000;
const MAX_LOG_LINES = 5000;
const METRICS_EVERY_MS = 2000;

export async function render(page, { id, query, signal }) {
  let job = await api(`/v1/jobs/${id}`, { signal });
  const status = h("span#job-status");
  const progress = h("div#job-progress");
  const facts = h("dl.facts");
  const errorLine = h("p#job-error.error");
  const message = h("p#job-action-msg.muted");
  const cancel = h("button#job-cancel", { type: "button" }, "Cancel");
  const priority = h("input#job-priority", { type: "text", inputmode: "numeric", size: 5, value: String(job.priority) });
  const prioritySave = h("button#job-priority-save", { type: "button" }, "Set priority");
  const logScale = h("input#chart-log", { type: "checkbox" });
  // points per curve asked of the server (it downsamples keeping extremes); "all" draws every stored point
  const wanted = query.get("points") || String(MAX_POINTS);
  const pointsSelect = h(
    "select#chart-points",
    { title: "points per curve" },
    ["500", String(MAX_POINTS), "10000", "all"].map((v) => h("option", { value: v, selected: v === wanted }, v === "all" ? "all points" : `≤ ${v} points`)),
  );
  const charts = h("div#job-charts.charts");
  const logs = h("pre#job-logs.logs");
  const events = h("tbody");
  const artifacts = h("div#job-artifacts");
  let metrics = null;

  const show = (j) => {
    job = j;
    clear(status, statusBadge(j.status));
    status.dataset.status = j.status;
    clear(progress, progressBar(j.progress), " ", h("span", {}, progressText(j.progress)));
    clear(
      facts,
      [
        ["kind", j.kind],
        ["queue", j.queue],
        ["attempt", `${j.attempt}/${j.max_attempts}`],
        ["worker", j.worker || "—"],
        ["created", when(j.created_at)],
        ["started", when(j.started_at) || "—"],
        ["finished", when(j.finished_at) || "—"],
        ["cancel requested", j.cancel_requested ? "yes" : "no"],
      ].map(([k, v]) => [h("dt", {}, k), h("dd", {}, v)]),
    );
    errorLine.textContent = j.error || "";
    cancel.disabled = TERMINAL.has(j.status);
  };

  const drawCharts = () => {
    if (!metrics) return;
    const started = performance.now();
    const names = Object.keys(metrics.series).sort();
    const width = Math.max(320, Math.min(560, Math.floor((charts.clientWidth || 1100) / 2) - 24));
    clear(
      charts,
      names.length
        ? names.map((n) => lineChart(n, metrics.series[n], { log: logScale.checked, width }))
        : h("p.muted", {}, "no metrics yet"),
    );
    charts.dataset.loaded = "true";
    charts.dataset.drawnAt = String(performance.now()); // timings for bench/dashboard_render.py
    charts.dataset.drawMs = String(charts.dataset.drawnAt - started);
  };

  let metricsBusy = false;
  let metricsAt = 0;
  const loadMetrics = async (force = false) => {
    if (metricsBusy || (!force && Date.now() - metricsAt < METRICS_EVERY_MS)) return;
    metricsBusy = true;
    metricsAt = Date.now();
    try {
      const maxPoints = pointsSelect.value === "all" ? null : pointsSelect.value;
      const started = performance.now();
      metrics = await api(`/v1/jobs/${id}/metrics${qs({ max_points: maxPoints })}`, { signal });
      charts.dataset.fetchMs = String(performance.now() - started);
      drawCharts();
    } catch (err) {
      if (err.name !== "AbortError") clear(charts, errorBox(err));
    } finally {
      metricsBusy = false;
    }
  };

  let shownArtifacts = null;
  const loadArtifacts = async () => {
    const answer = await api(`/v1/artifacts${qs({ job_id: id, limit: 100 })}`, { signal });
    const ids = answer.data.map((a) => a.id).join(",");
    if (ids === shownArtifacts) return; // unchanged: keep the rendered list (no flicker, no lost clicks)
    shownArtifacts = ids;
    if (!answer.data.length) {
      clear(artifacts, h("p.muted", {}, "no artifacts"));
      return;
    }
    clear(
      artifacts,
      answer.data.map((a) =>
        h(
          "div.artifact",
          { dataset: { artifactId: a.id } },
          h("h3", {}, `${a.kind} · ${a.name} `, h("small.muted", {}, `${short(a.id)} · ${bytes(a.bytes)} · sha256 ${a.sha256.slice(0, 16)}…`)),
          h(
            "table.files",
            {},
            h("thead", {}, h("tr", {}, ["file", "size", "sha256", ""].map((c) => h("th", {}, c)))),
            h(
              "tbody",
              {},
              (a.files || []).map((f) =>
                h(
                  "tr",
                  { dataset: { path: f.path } },
                  h("td", {}, f.path),
                  h("td.num", {}, bytes(f.bytes)),
                  h("td.mono", { title: f.sha256 }, f.sha256),
                  h("td", {}, h("button.small", { type: "button", on: { click: () => download(a.id, f.path).catch((e) => (message.textContent = `download failed: ${e.message}`)) } }, "download")),
                ),
              ),
            ),
          ),
          jsonBlock(a.metadata, "metadata"),
        ),
      ),
    );
  };

  cancel.addEventListener("click", async () => {
    cancel.disabled = true;
    try {
      show(await api(`/v1/jobs/${id}/cancel`, { method: "POST" }));
      message.textContent = "Cancel requested.";
    } catch (err) {
      message.textContent = err.message;
      cancel.disabled = TERMINAL.has(job.status);
    }
  });
  prioritySave.addEventListener("click", async () => {
    const value = priority.value.trim();
    try {
      show(await api(`/v1/jobs/${id}`, { method: "PATCH", body: { priority: /^[-+]?\d+$/.test(value) ? Number(value) : value } }));
      message.textContent = `Priority set to ${job.priority}.`;
    } catch (err) {
      message.textContent = err.errors?.length ? err.errors.map((e) => `${e.field}: ${e.message}`).join("; ") : err.message;
    }
  });
  logScale.addEventListener("change", drawCharts);
  pointsSelect.addEventListener("change", () => loadMetrics(true));

  add(page, 
    h("p", {}, h("a", { href: "#/jobs" }, "← jobs")),
    h("h1", {}, `${job.kind} job `, h("span.mono", {}, short(job.id)), " ", status),
    progress,
    errorLine,
    h("div.toolbar", {}, cancel, h("label", {}, "Priority ", priority), prioritySave, message),
    facts,
    h("h2", {}, "Curves ", h("label.inline", {}, logScale, " log scale "), pointsSelect, h("small.muted", {}, " drag to zoom, double-click to reset")),
    charts,
    h("div.layout-2", {}, h("div", {}, h("h2", {}, "Logs"), logs), h("div", {}, h("h2", {}, "Events"), h("table#job-events", {}, h("thead", {}, h("tr", {}, ["id", "type", "at", "data"].map((c) => h("th", {}, c)))), events))),
    h("h2", {}, "Artifacts"),
    artifacts,
    jsonBlock(job.spec, "spec"),
  );
  show(job);
  await Promise.all([loadMetrics(true), loadArtifacts()]);

  // Replay then follow the job's events; the stream ends with `end` once the job is terminal.
  let logCount = 0;
  try {
    for await (const ev of sse(`/v1/jobs/${id}/events`, { signal })) {
      if (ev.event === "log") {
        logCount += 1;
        if (logCount > MAX_LOG_LINES) logs.firstChild?.remove();
        logs.append(h(`span.log-${ev.data.stream || "stdout"}`, {}, `${ev.data.line}\n`));
        logs.scrollTop = logs.scrollHeight;
        continue;
      }
      if (ev.event === "end") break;
      if (ev.event === "state" && ev.data.status) show({ ...job, status: ev.data.status });
      if (ev.event === "progress") {
        show({ ...job, progress: ev.data });
        loadMetrics();
      }
      if (ev.event === "artifact") loadArtifacts();
      if (ev.event !== "progress" || events.childElementCount < 2000) {
        const { at, ...data } = ev.data || {};
        events.append(h("tr", { dataset: { type: ev.event } }, h("td.num", {}, ev.id || ""), h("td", {}, ev.event), h("td", {}, when(at)), h("td.mono", {}, JSON.stringify(data))));
      }
    }
  } catch (err) {
    if (err.name === "AbortError") return;
    add(page, errorBox(err));
  }
  if (signal.aborted) return;
  show(await api(`/v1/jobs/${id}`, { signal }));
  await Promise.all([loadMetrics(true), loadArtifacts()]);
  page.dataset.settled = "true"; // the job ended and its final metrics and artifacts are shown
}
