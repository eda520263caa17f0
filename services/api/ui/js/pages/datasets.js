// Datasets: every dataset artifact (token, latent, image) with its manifest: documents, tokens and rows
// per split, the tokenizer; latent datasets: the dimension and the latent statistics.

import { api, qs } from "../api.js";
import { add, bytes, clear, errorBox, h, jsonBlock, num, short, when } from "../dom.js";

const KINDS = ["dataset", "latent-dataset", "image-dataset"];

export async function render(page, { id, signal }) {
  if (id) return renderOne(page, id, signal);
  const lists = await Promise.all(KINDS.map((kind) => api(`/v1/artifacts${qs({ kind, limit: 200 })}`, { signal }).catch(() => ({ data: [] }))));
  const all = lists.flatMap((l) => l.data).sort((a, b) => (a.created_at < b.created_at ? 1 : -1));
  const rows = all.map((a) => {
    const m = a.metadata || {};
    const splits = m.splits || {};
    const rowsTotal = Object.values(splits).reduce((s, x) => s + (x.rows || 0), 0);
    return h(
      "tr",
      { dataset: { artifactId: a.id } },
      h("td", {}, h("a", { href: `#/datasets/${a.id}`, title: a.id }, short(a.id))),
      h("td", {}, a.kind),
      h("td", {}, m.tokenizer ? `${m.tokenizer.kind || ""} ${m.tokenizer.name || ""}`.trim() : m.encoder?.name || m.encoder || ""),
      h("td.num", {}, num(m.seq_len ?? m.dim ?? m.resolution ?? null)),
      h("td.num", {}, rowsTotal ? num(rowsTotal) : ""),
      h("td.num", {}, bytes(a.bytes)),
      h("td", {}, a.producer_job_id ? h("a", { href: `#/jobs/${a.producer_job_id}` }, short(a.producer_job_id)) : ""),
      h("td", {}, when(a.created_at)),
    );
  });
  add(page, 
    h("h1", {}, "Datasets"),
    h(
      "table#datasets-table",
      {},
      h("thead", {}, h("tr", {}, ["dataset", "kind", "tokenizer / encoder", "seq len / dim", "rows", "size", "job", "created"].map((c) => h("th", {}, c)))),
      h("tbody", {}, rows.length ? rows : h("tr", {}, h("td", { colspan: 8 }, "No datasets yet: submit a prepare-data job."))),
    ),
  );
}

function splitsTable(splits) {
  const names = Object.keys(splits || {});
  if (!names.length) return null;
  const cols = [...new Set(names.flatMap((n) => Object.keys(splits[n])))].filter((c) => typeof splits[names[0]][c] !== "object");
  return h(
    "table#dataset-splits",
    {},
    h("thead", {}, h("tr", {}, h("th", {}, "split"), cols.map((c) => h("th", {}, c)))),
    h("tbody", {}, names.map((n) => h("tr", { dataset: { split: n } }, h("th", {}, n), cols.map((c) => h("td.num", {}, num(splits[n][c] ?? null)))))),
  );
}

function vector(name, values) {
  if (!Array.isArray(values) || !values.length) return null;
  const lo = Math.min(...values);
  const hi = Math.max(...values);
  const mean = values.reduce((a, v) => a + v, 0) / values.length;
  return h("tr", {}, h("th", {}, name), h("td.mono", {}, `${values.length} values · min ${num(lo)} · mean ${num(mean)} · max ${num(hi)}`));
}

async function renderOne(page, id, signal) {
  const artifact = await api(`/v1/artifacts/${id}`, { signal });
  const detail = h("div#dataset-detail", { dataset: { artifactId: id } });
  add(page, h("p", {}, h("a", { href: "#/datasets" }, "← datasets")), h("h1", {}, `${artifact.kind} `, h("span.mono", {}, short(id))), detail);
  let manifest = null;
  try {
    manifest = await api(`/v1/artifacts/${id}/manifest`, { signal });
  } catch (err) {
    if (err.status !== 404) detail.append(errorBox(err));
  }
  const m = manifest || artifact.metadata || {};
  const facts = [
    ["format", m.format],
    ["seq_len", m.seq_len],
    ["tokenizer", m.tokenizer ? `${m.tokenizer.kind || ""} ${m.tokenizer.name || ""} (vocab ${m.tokenizer.vocab_size ?? "?"})` : null],
    ["packing", artifact.metadata?.packing],
    ["size", bytes(artifact.bytes)],
    ["sha256", artifact.sha256],
    ["job", artifact.producer_job_id],
  ].filter(([, v]) => v !== null && v !== undefined && v !== "");
  const latent = manifest?.latent;
  clear(
    detail,
    h("dl.facts", {}, facts.map(([k, v]) => [h("dt", {}, k), h("dd", {}, String(v))])),
    h("h2", {}, "Splits"),
    splitsTable(m.splits) || h("p.muted", {}, "no split summary"),
    latent
      ? h(
          "div#dataset-latent",
          {},
          h("h2", {}, "Latents"),
          h(
            "table.kv",
            {},
            h(
              "tbody",
              {},
              h("tr", {}, h("th", {}, "dim"), h("td.num", { id: "latent-dim" }, String(latent.dim))),
              h("tr", {}, h("th", {}, "role"), h("td", {}, latent.role || "")),
              h("tr", {}, h("th", {}, "unit norm"), h("td", {}, String(latent.unit_norm ?? ""))),
              latent.stats ? h("tr", {}, h("th", {}, "stats"), h("td", {}, `split ${latent.stats.split} · ${num(latent.stats.count)} vectors · mean norm ${num(latent.stats.mean_norm)}`)) : null,
              latent.stats ? vector("mean", latent.stats.mean) : null,
              latent.stats ? vector("std", latent.stats.std) : null,
            ),
          ),
          jsonBlock(latent.encoder, "encoder"),
        )
      : null,
    manifest ? jsonBlock(manifest.manifest, "manifest.json") : null,
    jsonBlock(artifact.metadata, "artifact metadata"),
    h("h2", {}, "Files"),
    h("table.files", {}, h("tbody", {}, (artifact.files || []).slice(0, 200).map((f) => h("tr", {}, h("td", {}, f.path), h("td.num", {}, bytes(f.bytes)), h("td.mono", {}, f.sha256))))),
  );
}
