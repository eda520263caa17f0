// System: queues and their depths, running jobs, workers seen recently, versions and backends
// (GET /v1/system: aggregates only, never another user's jobs).

import { api } from "../api.js";
import { add, clear, h, jsonBlock, num, when } from "../dom.js";

const REFRESH_MS = 5000;

function kv(id, obj) {
  return h(`table#${id}.kv`, {}, h("tbody", {}, Object.entries(obj || {}).map(([k, v]) => h("tr", { dataset: { key: k } }, h("th", {}, k), h("td", {}, v === null ? "—" : typeof v === "object" ? JSON.stringify(v) : String(v))))));
}

function listTable(id, items, empty) {
  if (!Array.isArray(items) || !items.length) return h(`p#${id}.muted`, {}, empty);
  const cols = [...new Set(items.flatMap((i) => Object.keys(i)))];
  return h(
    `table#${id}`,
    {},
    h("thead", {}, h("tr", {}, cols.map((c) => h("th", {}, c)))),
    h("tbody", {}, items.map((i) => h("tr", {}, cols.map((c) => h("td", {}, /_at$|last_seen/.test(c) ? when(i[c]) : typeof i[c] === "number" ? num(i[c]) : i[c] === undefined || i[c] === null ? "" : typeof i[c] === "object" ? JSON.stringify(i[c]) : String(i[c])))))),
  );
}

export async function render(page, { signal }) {
  const body = h("div#system");
  add(page, h("h1", {}, "System"), body);
  const load = async () => {
    const s = await api("/v1/system", { signal });
    const { versions, backends, queues, running_jobs: running, workers, you, window_s: windowS, ...rest } = s;
    clear(body, 
      h("div.cards", {}, h("div.card", {}, h("div.muted", {}, "running jobs"), h("div#system-running.big", {}, num(running ?? null))), you ? h("div.card", {}, h("div.muted", {}, "yours"), h("div.big", {}, `${you.running ?? 0} running · ${you.queued ?? 0} queued`)) : null),
      h("h2", {}, "Queues"),
      listTable("system-queues", queues, "no queues"),
      h("h2", {}, "Workers", windowS ? h("small.muted", {}, ` seen in the last ${Math.round(windowS / 60)} min`) : null),
      listTable("system-workers", workers, "no worker seen yet"),
      h("div.layout-2", {}, h("div", {}, h("h2", {}, "Versions"), kv("system-versions", versions)), h("div", {}, h("h2", {}, "Backends"), kv("system-backends", backends))),
      Object.keys(rest).length ? jsonBlock(rest, "more") : null,
    );
  };
  await load();
  const timer = setInterval(() => {
    if (!document.hidden) load().catch(() => {});
  }, REFRESH_MS);
  signal.addEventListener("abort", () => clearInterval(timer));
}
