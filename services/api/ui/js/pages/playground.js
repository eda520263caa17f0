// Playground: a prompt or an infill template -> samples, with the denoising shown step by step (the
// masked positions `_` resolving, from POST /v1/generate/stream); latent models: text -> latent -> text;
// image models: generated images as a PNG grid.

import { api, qs, sse } from "../api.js";
import { add, clear, errorBox, h, num, short } from "../dom.js";

const STREAMING = new Set(["mdlm", "gidd", "hdlm"]); // families whose reverse process has token states
const LATENT = new Set(["mmdit", "latent-dit", "cross-dit"]);
const IMAGE = new Set(["image-mmdit"]);

/** "The castle [6] was built in [3]." -> ["The castle", 6, "was built in", 3, "."] */
export function parseTemplate(text) {
  const out = [];
  for (const part of text.split(/(\[\d+\])/)) {
    const gap = part.match(/^\[(\d+)\]$/);
    if (gap) out.push(Number(gap[1]));
    else if (part.trim()) out.push(part.trim());
  }
  return out;
}

export async function render(page, { query, signal }) {
  const models = await api(`/v1/models${qs({ limit: 200 })}`, { signal });
  const modelSelect = h(
    "select#pg-model",
    {},
    models.data.map((m) => h("option", { value: m.id, dataset: { family: m.family || "" }, selected: query.get("model") === m.id }, `${m.family || "?"} ${short(m.id)} (step ${m.trained.step ?? "?"})`)),
  );
  const mode = h("select#pg-mode", {}, [
    h("option", { value: "prompt" }, "prompt"),
    h("option", { value: "infill" }, "infill template"),
    h("option", { value: "roundtrip" }, "text → latent → text"),
    h("option", { value: "image" }, "image grid (caption)"),
  ]);
  const prompt = h("textarea#pg-prompt", { rows: 2, placeholder: "Text the samples start with (empty: unconditional)" });
  const infill = h("textarea#pg-infill", { rows: 2, placeholder: "The castle [6] was built in [3]." });
  const text = h("textarea#pg-text", { rows: 2, placeholder: "A sentence to encode and decode back" });
  const caption = h("input#pg-caption", { type: "text", placeholder: "caption words" });
  const steps = h("input#pg-steps", { type: "text", inputmode: "numeric", value: "32", size: 5 });
  const samples = h("input#pg-samples", { type: "text", inputmode: "numeric", value: "2", size: 3 });
  const seed = h("input#pg-seed", { type: "text", inputmode: "numeric", placeholder: "random", size: 8 });
  const run = h("button#pg-run", { type: "submit" }, "Generate");
  const error = h("div#pg-error");
  const states = h("div#pg-states");
  const final = h("div#pg-final");
  const info = h("p#pg-info.muted");
  const rows = {
    prompt: h("div.field", {}, h("label", { for: "pg-prompt" }, "Prompt"), prompt),
    infill: h("div.field", {}, h("label", { for: "pg-infill" }, "Infill template ([n] = n tokens to generate)"), infill),
    roundtrip: h("div.field", {}, h("label", { for: "pg-text" }, "Text"), text),
    image: h("div.field", {}, h("label", { for: "pg-caption" }, "Caption"), caption),
  };
  const family = () => modelSelect.selectedOptions[0]?.dataset.family || "";
  const sync = () => {
    for (const [name, row] of Object.entries(rows)) row.hidden = name !== mode.value;
  };
  modelSelect.addEventListener("change", () => {
    const f = family();
    mode.value = IMAGE.has(f) ? "image" : LATENT.has(f) && mode.value === "infill" ? "roundtrip" : mode.value;
    sync();
  });
  mode.addEventListener("change", sync);
  sync();

  let controller = null;
  const int = (input) => (input.value.trim() === "" ? undefined : /^\d+$/.test(input.value.trim()) ? Number(input.value) : input.value);
  const form = h(
    "form#pg-form",
    { novalidate: true },
    h("div.field", {}, h("label", { for: "pg-model" }, "Model"), modelSelect),
    h("div.field", {}, h("label", { for: "pg-mode" }, "Mode"), mode),
    Object.values(rows),
    h("div.toolbar", {}, h("label", {}, "Steps ", steps), h("label", {}, "Samples ", samples), h("label", {}, "Seed ", seed), run),
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    if (controller) controller.abort();
    controller = new AbortController();
    signal.addEventListener("abort", () => controller.abort());
    clear(error);
    clear(states);
    clear(final);
    info.textContent = "";
    if (!modelSelect.value) {
      clear(error, errorBox("No model: train one first (kind train)."));
      return;
    }
    const body = { model: modelSelect.value, steps: int(steps), num_samples: int(samples), seed: int(seed) };
    run.disabled = true;
    try {
      if (mode.value === "roundtrip") await roundTrip(body, text.value, final, info, controller.signal);
      else if (mode.value === "image") await images({ ...body, caption: caption.value.trim() || undefined }, final, info, controller.signal);
      else {
        if (mode.value === "infill") body.infill = parseTemplate(infill.value);
        else if (prompt.value.trim()) body.prompt = prompt.value;
        if (STREAMING.has(family())) await streamed(body, states, final, info, controller.signal);
        else showResult(await api("/v1/generate", { method: "POST", body, signal: controller.signal }), final, info);
      }
    } catch (err) {
      if (err.name !== "AbortError") {
        clear(error, errorBox(err.errors?.length ? err.errors.map((e) => `${e.field}: ${e.message}`).join("; ") : err, "pg-error-text"));
      }
    } finally {
      run.disabled = false;
    }
  });
  add(page, 
    h("h1", {}, "Playground"),
    h("p.muted", {}, models.data.length ? "" : "No models yet: train one (kind train), then come back."),
    h("div.layout-2", {}, h("div", {}, form, error, info, h("h2", {}, "Samples"), final), h("div", {}, h("h2", {}, "Denoising, step by step"), states)),
  );
}

async function streamed(body, states, final, info, signal) {
  let count = 0;
  for await (const ev of sse("/v1/generate/stream", { method: "POST", body, signal })) {
    if (ev.event === "state") {
      count += 1;
      const d = ev.data;
      states.append(
        h(
          "div.pg-state",
          { dataset: { step: String(d.step), masked: String(d.masked) } },
          h("div.muted", {}, `step ${d.step}/${d.steps} · ${d.masked} masked`),
          (d.samples || []).map((s) => h("pre.sample", {}, s.text)),
        ),
      );
      states.lastChild.scrollIntoView({ block: "nearest" });
    } else if (ev.event === "result") {
      showResult(ev.data, final, info, count);
    } else if (ev.event === "error") {
      throw new Error(typeof ev.data === "string" ? ev.data : ev.data.detail || JSON.stringify(ev.data));
    }
  }
}

function showResult(result, final, info, states) {
  info.textContent = `${result.family} · ${result.mode} · seed ${result.seed} · ${result.steps} steps · NFE ${result.nfe} · ${num(result.tokens_per_s)} tokens/s${states !== undefined ? ` · ${states} states streamed` : ""}`;
  const images = result.samples.filter((s) => s.image);
  clear(
    final,
    images.length
      ? h("div.png-grid", {}, images.map((s) => h("figure", {}, h("img", { src: `data:image/png;base64,${s.image}`, alt: s.text }), h("figcaption", {}, s.text))))
      : null,
    result.samples.filter((s) => !s.image).map((s) => h("pre.sample.final", { dataset: { index: String(s.index) } }, s.text)),
  );
  final.dataset.done = "true";
}

async function roundTrip(body, text, final, info, signal) {
  const input = text.trim();
  if (!input) throw new Error("text: write a sentence to encode");
  const embedded = await api("/v1/embed", { method: "POST", body: { texts: [input] }, signal });
  const latent = embedded.data[0].embedding;
  const norm = Math.sqrt(latent.reduce((a, v) => a + v * v, 0));
  const result = await api("/v1/generate", { method: "POST", body: { ...body, mode: "l2t", latent_text: input }, signal });
  showResult(result, final, info);
  final.prepend(
    h("p", {}, h("strong", {}, "text: "), input),
    h("p.mono", { id: "pg-latent" }, `latent: dim ${latent.length}, norm ${num(norm)}, [${latent.slice(0, 6).map((v) => v.toFixed(3)).join(", ")}, …]`),
    h("p", {}, h("strong", {}, "decoded back:")),
  );
}

async function images(body, final, info, signal) {
  showResult(await api("/v1/generate", { method: "POST", body: { ...body, mode: body.caption ? "t2i" : undefined }, signal }), final, info);
}
