// Small DOM helpers: build elements without innerHTML (all text goes through textContent, so nothing a
// job, a log line or a sample contains can inject markup), and formatters.

/** h("tag#id.class", {attrs, on: {click}}, ...children) -> Element. */
export function h(spec, attrs = {}, ...children) {
  const [tagAndId, ...classes] = spec.split(".");
  const [tag, id] = tagAndId.split("#");
  const el = document.createElement(tag || "div");
  if (id) el.id = id;
  if (classes.length) el.className = classes.join(" ");
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "on") for (const [ev, fn] of Object.entries(v)) el.addEventListener(ev, fn);
    else if (k === "dataset") Object.assign(el.dataset, v);
    else if (k === "value") el.value = v;
    else if (k === "checked") el.checked = Boolean(v);
    else if (k === "text") el.textContent = v;
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

/** el.append that flattens arrays and skips null/undefined/false (DOM append would print them). */
export function add(el, ...children) {
  append(el, children);
  return el;
}

export function clear(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

export function bytes(n) {
  if (n === null || n === undefined) return "";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  let v = Number(n);
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i += 1;
  }
  return `${i ? v.toFixed(1) : v} ${units[i]}`;
}

export function num(v) {
  if (v === null || v === undefined) return "—";
  if (typeof v !== "number") return String(v);
  if (Number.isInteger(v)) return v.toLocaleString("en");
  const a = Math.abs(v);
  if (a !== 0 && (a < 1e-3 || a >= 1e5)) return v.toExponential(3);
  // trailing zeros go only after a decimal point: 12340.2 -> "12340", never "1234"
  const fixed = v.toPrecision(5);
  if (fixed.includes("e")) return v.toExponential(3); // 99999.99 rounds up to 1.0000e+5
  return fixed.includes(".") ? fixed.replace(/\.?0+$/, "") : fixed;
}

export function when(iso) {
  if (!iso) return "";
  const d = new Date(iso);
  return Number.isNaN(d.getTime()) ? String(iso) : d.toLocaleString("en-GB", { hour12: false });
}

export function short(id) {
  return id ? String(id).slice(0, 8) : "";
}

export function progressText(p) {
  if (!p || p.step === null || p.step === undefined) return p && p.message ? p.message : "";
  const total = p.total ? `/${p.total}` : "";
  return `${p.step}${total}${p.message ? ` ${p.message}` : ""}`;
}

export function progressBar(p) {
  const pct = p && p.total ? Math.min(100, Math.round((100 * (p.step || 0)) / p.total)) : null;
  const bar = h("progress", { max: 100 });
  if (pct !== null) bar.value = pct;
  return bar;
}

export const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);

export function statusBadge(status, attrs = {}) {
  return h(`span.badge.status-${status}`, attrs, status);
}

/** A <details> showing a JSON value, pretty-printed. */
export function jsonBlock(value, summary = "JSON", open = false) {
  return h("details", { open }, h("summary", {}, summary), h("pre.json", {}, JSON.stringify(value, null, 2)));
}

export function table(columns, rows, attrs = {}) {
  return h(
    "table",
    attrs,
    h("thead", {}, h("tr", {}, columns.map((c) => h("th", {}, c)))),
    h("tbody", {}, rows),
  );
}

export function errorBox(err, id) {
  return h("p.error", { id, role: "alert" }, err instanceof Error ? err.message : String(err));
}
