// Models: every trained model with its evaluations and their protocols; a compare view over chosen models
// (GET /v1/models/compare: sortable, metrics measured under different protocols flagged), the steps sweep
// (gen PPL vs sampling steps) and gen PPL vs entropy, where mode collapse shows as low PPL at low entropy.

import { api, qs } from "../api.js";
import { add, clear, errorBox, h, jsonBlock, num, short, when } from "../dom.js";
import { plot } from "../svgplot.js";

const SWEEP = /^sweep_(\d+)_(gen_ppl|entropy)$/;

/** steps -> {gen_ppl, entropy} from a flat evaluation summary. */
function sweepOf(values) {
  const out = new Map();
  for (const [k, v] of Object.entries(values || {})) {
    const m = k.match(SWEEP);
    if (!m || v === null) continue;
    const steps = Number(m[1]);
    out.set(steps, { ...out.get(steps), [m[2]]: v });
  }
  return out;
}

function sweepPlot(items) {
  const series = items.map(({ label, values }) => ({
    label,
    line: true,
    points: [...sweepOf(values)].filter(([, r]) => r.gen_ppl !== undefined).map(([s, r]) => [s, r.gen_ppl, `${s} steps`]),
  }));
  return plot(series.filter((s) => s.points.length), { xlabel: "sampling steps", ylabel: "gen PPL", logx: true, logy: true, id: "sweep-plot" });
}

function entropyPlot(items) {
  const series = items.map(({ label, values }) => {
    const pts = [];
    if (values.gen_entropy != null && values.gen_ppl != null) pts.push([values.gen_entropy, values.gen_ppl, "default steps"]);
    for (const [s, r] of sweepOf(values)) if (r.entropy !== undefined && r.gen_ppl !== undefined) pts.push([r.entropy, r.gen_ppl, `${s} steps`]);
    return { label, points: pts };
  });
  const data = items.find(({ values }) => values.data_entropy != null && values.data_gen_ppl != null);
  if (data) series.push({ label: "data (reference)", color: "#111827", points: [[data.values.data_entropy, data.values.data_gen_ppl, "held-out text"]] });
  return plot(series.filter((s) => s.points.length), { xlabel: "unigram entropy of samples", ylabel: "gen PPL", logy: true, id: "entropy-plot" });
}

export async function render(page, { query, signal, compare }) {
  if (compare) return renderCompare(page, query.get("ids") || "", signal);
  const answer = await api(`/v1/models${qs({ limit: 200 })}`, { signal });
  const detail = h("div#model-detail");
  const button = h("button#compare-button", { type: "button", disabled: true }, "Compare selected");
  const picks = [];
  const rows = answer.data.map((m) => {
    const pick = h("input.compare-pick", { type: "checkbox", value: m.id, on: { change: () => (button.disabled = picks.filter((p) => p.checked).length < 1) } });
    picks.push(pick);
    const ev = m.latest_evaluation;
    return h(
      "tr",
      { dataset: { modelId: m.id } },
      h("td", {}, pick),
      h("td", {}, h("a", { href: "#", title: m.id, on: { click: (e) => (e.preventDefault(), showModel(detail, m.id, signal)) } }, short(m.id))),
      h("td", {}, m.family || ""),
      h("td", {}, m.job_id ? h("a", { href: `#/jobs/${m.job_id}` }, short(m.job_id)) : ""),
      h("td.num", {}, num(m.trained.step ?? null)),
      h("td.num", {}, String(m.evaluations)),
      h("td.num", {}, num(ev?.summary?.val_ppl ?? null)),
      h("td.num", {}, num(ev?.summary?.gen_ppl ?? null)),
      h("td.num", {}, num(ev?.summary?.gen_entropy ?? null)),
      h("td", {}, when(new Date(m.created * 1000).toISOString())),
    );
  });
  button.addEventListener("click", () => {
    const ids = picks.filter((p) => p.checked).map((p) => p.value);
    location.hash = `#/compare?ids=${ids.join(",")}`;
  });
  const items = answer.data.filter((m) => m.latest_evaluation).map((m) => ({ label: `${m.family || "?"} ${short(m.id)}`, values: m.latest_evaluation.summary }));
  add(page, 
    h("h1", {}, "Models"),
    h("p.muted", {}, `${answer.count} model${answer.count === 1 ? "" : "s"}. Pick some and compare their latest evaluations.`),
    h("div.toolbar", {}, button),
    h(
      "table#models-table",
      {},
      h("thead", {}, h("tr", {}, ["", "model", "family", "job", "step", "evals", "val PPL", "gen PPL", "gen entropy", "created"].map((c) => h("th", {}, c)))),
      h("tbody", {}, rows.length ? rows : h("tr", {}, h("td", { colspan: 10 }, "No models yet: train one (kind train)."))),
    ),
    h("div.layout-2", {}, h("div", {}, h("h2", {}, "Gen PPL vs entropy"), entropyPlot(items)), h("div", {}, h("h2", {}, "Steps sweep"), sweepPlot(items))),
    detail,
  );
}

async function showModel(detail, id, signal) {
  clear(detail, h("p.muted", {}, "loading…"));
  try {
    const m = await api(`/v1/models/${id}`, { signal });
    clear(
      detail,
      h("h2", {}, `Model ${short(m.id)} (${m.family || "?"})`),
      jsonBlock(m.trained, "training record"),
      h("h3", {}, `Evaluations (${m.evaluations})`),
      (m.all_evaluations || []).map((e) =>
        h(
          "div.evaluation",
          { dataset: { evaluationId: e.id } },
          h("h4", {}, when(e.created_at), " ", e.job_id ? h("a", { href: `#/jobs/${e.job_id}` }, `job ${short(e.job_id)}`) : "", e.dataset ? ` · dataset ${short(e.dataset)}` : ""),
          h("table.kv", {}, h("tbody", {}, Object.entries(e.summary).map(([k, v]) => h("tr", {}, h("th", {}, k), h("td.num", {}, num(v)))))),
          jsonBlock(e.protocols, "protocols"),
        ),
      ),
    );
  } catch (err) {
    if (err.name !== "AbortError") clear(detail, errorBox(err));
  }
}

async function renderCompare(page, ids, signal) {
  const table = await api(`/v1/models/compare${qs({ ids })}`, { signal });
  let sortKey = null;
  let sortDir = 1;
  const tbody = h("tbody");
  const draw = () => {
    const rows = [...table.rows];
    if (sortKey) {
      rows.sort((a, b) => {
        const va = sortKey === "model" ? a.model : a.values[sortKey];
        const vb = sortKey === "model" ? b.model : b.values[sortKey];
        // models without the value go last either way (and keep their order: a consistent comparator)
        const na = va === null || va === undefined;
        const nb = vb === null || vb === undefined;
        if (na || nb) return na === nb ? 0 : na ? 1 : -1;
        return (va < vb ? -1 : va > vb ? 1 : 0) * sortDir;
      });
    }
    tbody.replaceChildren(
      ...rows.map((r) =>
        h(
          "tr",
          { dataset: { modelId: r.model } },
          h("td", { title: r.model }, short(r.model)),
          h("td", {}, r.family || ""),
          table.columns.map((c) => {
            const flag = r.not_comparable[c];
            return h(`td.num${flag ? ".not-comparable" : ""}`, { title: flag ? `measured under a different protocol: ${flag.join(", ")}` : null, dataset: { column: c } }, num(r.values[c]), flag ? " ⚠" : "");
          }),
        ),
      ),
    );
  };
  const header = h(
    "tr",
    {},
    h("th", { "data-sort": "model" }, "model"),
    h("th", {}, "family"),
    table.columns.map((c) => h("th", { "data-sort": c, title: "click to sort" }, c)),
  );
  header.addEventListener("click", (e) => {
    const th = e.target.closest("th[data-sort]");
    if (!th) return;
    sortDir = sortKey === th.dataset.sort ? -sortDir : 1;
    sortKey = th.dataset.sort;
    for (const x of header.children) x.classList.remove("sorted-asc", "sorted-desc");
    th.classList.add(sortDir > 0 ? "sorted-asc" : "sorted-desc");
    draw();
  });
  draw();
  const groups = Object.entries(table.groups).map(([name, g]) =>
    h(
      "div.group-protocol",
      { dataset: { group: name, comparable: String(g.comparable) } },
      h("h4", {}, name, " ", g.comparable ? h("span.badge.status-succeeded", {}, "comparable") : h("span.badge.status-failed", {}, "protocols differ")),
      g.mismatches
        ? h("table.kv", {}, h("tbody", {}, Object.entries(g.mismatches).map(([field, per]) => h("tr.mismatch", {}, h("th", {}, field), h("td.mono", {}, Object.entries(per).map(([m, v]) => `${short(m)}: ${JSON.stringify(v)}`).join("  ·  "))))))
        : jsonBlock(g.protocol, "shared protocol"),
      g.missing ? h("p.muted", {}, `not measured: ${g.missing.map(short).join(", ")}`) : null,
    ),
  );
  const items = table.rows.map((r) => ({ label: `${r.family || "?"} ${short(r.model)}`, values: r.values }));
  add(page, 
    h("p", {}, h("a", { href: "#/models" }, "← models")),
    h("h1", {}, "Compare models"),
    h("p", { id: "compare-verdict", class: table.comparable ? "ok" : "warn" }, table.comparable ? "Every metric group was measured under one protocol." : "Some metrics were measured under different protocols (⚠): those columns are not comparable."),
    h("div.scroll", {}, h("table#compare-table", {}, h("thead", {}, header), tbody)),
    h("div.layout-2", {}, h("div", {}, h("h2", {}, "Steps sweep: gen PPL vs steps"), sweepPlot(items)), h("div", {}, h("h2", {}, "Gen PPL vs entropy"), entropyPlot(items))),
    h("h2", {}, "Protocols"),
    groups,
  );
}
