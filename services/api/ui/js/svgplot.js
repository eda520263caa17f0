// Small SVG plots for a handful of points (the steps sweep and the PPL-vs-entropy scatter): one function,
// log or linear axes, a legend. Long series go to uPlot instead (chart.js).

import { color } from "./chart.js";

const NS = "http://www.w3.org/2000/svg";

function el(tag, attrs = {}, text) {
  const node = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
  if (text !== undefined) node.textContent = text;
  return node;
}

function ticks(lo, hi, log) {
  // log axes: 1-2-5 per decade; a range within about a decade gets linear ticks instead
  if (log) {
    const out = [];
    for (let e = Math.floor(Math.log10(lo)); e <= Math.ceil(Math.log10(hi)); e += 1) {
      for (const m of [1, 2, 5]) {
        const v = m * 10 ** e;
        if (v >= lo * 0.999 && v <= hi * 1.001) out.push(v);
      }
    }
    if (out.length >= 3) return out;
  }
  const span = hi - lo || 1;
  const step = 10 ** Math.floor(Math.log10(span / 4));
  const nice = [1, 2, 5, 10].map((m) => m * step).find((s) => span / s <= 6) || step * 10;
  const out = [];
  for (let v = Math.ceil(lo / nice) * nice; v <= hi + nice * 1e-9; v += nice) out.push(Number(v.toPrecision(12)));
  return out;
}

/**
 * series: [{label, points: [[x, y], ...], line: bool}] -> <svg>. Options: xlabel, ylabel, logx, logy, id.
 * Points with a non-finite (or, on a log axis, non-positive) coordinate are left out.
 */
export function plot(series, { xlabel = "", ylabel = "", logx = false, logy = false, width = 560, height = 320, id } = {}) {
  const ok = (v, log) => Number.isFinite(v) && (!log || v > 0);
  const clean = series.map((s) => ({ ...s, points: s.points.filter(([x, y]) => ok(x, logx) && ok(y, logy)) }));
  const all = clean.flatMap((s) => s.points);
  const svg = el("svg", { width, height, viewBox: `0 0 ${width} ${height}`, class: "svgplot", role: "img" });
  if (id) svg.id = id;
  svg.dataset.points = String(all.length);
  if (!all.length) {
    svg.append(el("text", { x: width / 2, y: height / 2, "text-anchor": "middle", class: "muted" }, "no data"));
    return svg;
  }
  const m = { l: 64, r: 150, t: 12, b: 44 };
  const tx = (v) => (logx ? Math.log10(v) : v);
  const ty = (v) => (logy ? Math.log10(v) : v);
  let [x0, x1] = [Math.min(...all.map((p) => p[0])), Math.max(...all.map((p) => p[0]))];
  let [y0, y1] = [Math.min(...all.map((p) => p[1])), Math.max(...all.map((p) => p[1]))];
  const pad = (lo, hi, log) => (lo === hi ? (log ? [lo / 2, hi * 2] : [lo - 1, hi + 1]) : log ? [lo / 1.15, hi * 1.15] : [lo - (hi - lo) * 0.06, hi + (hi - lo) * 0.06]);
  [x0, x1] = pad(x0, x1, logx);
  [y0, y1] = pad(y0, y1, logy);
  const px = (v) => m.l + ((tx(v) - tx(x0)) / (tx(x1) - tx(x0))) * (width - m.l - m.r);
  const py = (v) => height - m.b - ((ty(v) - ty(y0)) / (ty(y1) - ty(y0))) * (height - m.t - m.b);
  const axes = el("g", { class: "axes" });
  axes.append(el("line", { x1: m.l, y1: height - m.b, x2: width - m.r, y2: height - m.b }));
  axes.append(el("line", { x1: m.l, y1: m.t, x2: m.l, y2: height - m.b }));
  const fmt = (v) => (Math.abs(v) >= 1e4 || (Math.abs(v) < 1e-2 && v !== 0) ? v.toExponential(0) : String(Number(v.toPrecision(3))));
  for (const v of ticks(x0, x1, logx)) {
    axes.append(el("line", { class: "grid", x1: px(v), y1: m.t, x2: px(v), y2: height - m.b }));
    axes.append(el("text", { x: px(v), y: height - m.b + 16, "text-anchor": "middle" }, fmt(v)));
  }
  for (const v of ticks(y0, y1, logy)) {
    axes.append(el("line", { class: "grid", x1: m.l, y1: py(v), x2: width - m.r, y2: py(v) }));
    axes.append(el("text", { x: m.l - 6, y: py(v) + 4, "text-anchor": "end" }, fmt(v)));
  }
  axes.append(el("text", { x: (m.l + width - m.r) / 2, y: height - 6, "text-anchor": "middle" }, xlabel));
  axes.append(el("text", { x: 14, y: (m.t + height - m.b) / 2, "text-anchor": "middle", transform: `rotate(-90 14 ${(m.t + height - m.b) / 2})` }, ylabel));
  svg.append(axes);
  clean.forEach((s, i) => {
    const c = s.color || color(i);
    const pts = [...s.points].sort((a, b) => (s.line ? a[0] - b[0] : 0));
    if (s.line && pts.length > 1) {
      svg.append(el("polyline", { points: pts.map(([x, y]) => `${px(x)},${py(y)}`).join(" "), fill: "none", stroke: c, "stroke-width": 2 }));
    }
    for (const [x, y, note] of pts) {
      // the exact coordinates ride along, so a test (or a user's devtools) reads what each dot stands for
      const dot = el("circle", { cx: px(x), cy: py(y), r: s.line ? 3.5 : 5, fill: c, class: "dot", "data-series": s.label, "data-x": x, "data-y": y });
      dot.append(el("title", {}, `${s.label}${note ? ` ${note}` : ""}: (${fmt(x)}, ${fmt(y)})`));
      svg.append(dot);
    }
    const ly = m.t + 14 + i * 18;
    svg.append(el("circle", { cx: width - m.r + 14, cy: ly - 4, r: 5, fill: c }));
    svg.append(el("text", { x: width - m.r + 24, y: ly, class: "legend" }, s.label.length > 18 ? `${s.label.slice(0, 17)}…` : s.label));
  });
  return svg;
}
