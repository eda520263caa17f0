// Line charts with uPlot (vendored, fast for 100k points): drag to zoom on x, double-click to reset,
// optional log y. The server downsamples long series (extremes kept), so the browser draws at most a few
// thousand points per curve; `data-points` on the chart says how many were drawn.

import { h } from "./dom.js";

const COLORS = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#ca8a04", "#db2777"];

export function color(i) {
  return COLORS[i % COLORS.length];
}

/** An axis label short enough to read and exact enough to tell ticks apart (1e-4, 0.0025, 120k). */
function tick(v) {
  if (v === null || v === undefined) return "";
  const a = Math.abs(v);
  if (a === 0) return "0";
  if (a < 1e-3 || a >= 1e6) return v.toExponential(1).replace("e+", "e");
  return String(Number(v.toPrecision(3)));
}

/** A chart of one metric series {steps, values, count?, downsampled?} in a new element. */
export function lineChart(name, series, { log = false, width = 460, height = 220 } = {}) {
  const steps = series.steps || [];
  const values = (series.values || []).map((v) => (v === null || (log && !(v > 0)) ? null : v));
  const total = series.count ?? steps.length;
  const el = h("div.chart", {
    dataset: { metric: name, points: String(steps.length), total: String(total) },
  });
  const note = series.downsampled ? ` (${steps.length} of ${total} points)` : "";
  el.append(h("div.chart-title", {}, name, h("small.muted", {}, note)));
  if (!steps.length || typeof uPlot === "undefined") {
    el.append(h("p.muted", {}, steps.length ? "chart library missing" : "no points yet"));
    return el;
  }
  const opts = {
    width,
    height,
    legend: { show: true, live: true },
    cursor: { drag: { x: true, y: false, setScale: true } },
    scales: { x: { time: false }, y: log ? { distr: 3 } : { auto: true } },
    axes: [{ label: "step" }, { size: 64, values: (u, splits) => splits.map(tick) }],
    series: [{ label: "step" }, { label: name, stroke: COLORS[0], width: 1.5, points: { show: steps.length < 50 } }],
  };
  // eslint-disable-next-line no-undef
  el.plot = new uPlot(opts, [steps, values], el);
  return el;
}
