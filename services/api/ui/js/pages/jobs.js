// Jobs: the list (filter by kind and status) with live status and progress from each job's event stream,
// and a submit form generated from the chosen kind's JSON schema.

import { api, qs, sse } from "../api.js";
import { add, clear, errorBox, h, progressBar, progressText, short, statusBadge, TERMINAL, when } from "../dom.js";
import { schemaForm } from "../form.js";

const STATUSES = ["queued", "running", "retrying", "succeeded", "failed", "cancelled"];
const MAX_STREAMS = 3; // a browser allows 6 connections per host: leave room for the page's own fetches
const POLL_MS = 4000;

let kindsCache = null;
export async function kinds() {
  if (!kindsCache) kindsCache = await api("/v1/kinds");
  return kindsCache;
}

export async function render(page, { query, signal }) {
  const all = await kinds();
  const kindFilter = h(
    "select#jobs-filter-kind",
    {},
    h("option", { value: "" }, "all kinds"),
    all.map((k) => h("option", { value: k.name, selected: query.get("kind") === k.name }, k.name)),
  );
  const statusFilter = h(
    "select#jobs-filter-status",
    {},
    h("option", { value: "" }, "any status"),
    STATUSES.map((s) => h("option", { value: s, selected: query.get("status") === s }, s)),
  );
  const tbody = h("tbody");
  const count = h("span#jobs-count.muted");
  const listError = h("div#jobs-error");
  const rows = new Map(); // job id -> {tr, job}
  const streams = new Map(); // job id -> AbortController

  const setRow = (row, job) => {
    row.job = job;
    clear(row.status, statusBadge(job.status, { "data-testid": "job-status" }));
    row.status.firstChild.dataset.status = job.status;
    clear(row.progress, progressBar(job.progress), h("span", { "data-testid": "job-progress" }, progressText(job.progress)));
    row.tr.dataset.status = job.status;
  };

  const makeRow = (job) => {
    const status = h("td");
    const progress = h("td.progress");
    const tr = h(
      "tr",
      { dataset: { jobId: job.id } },
      h("td", {}, h("a", { href: `#/jobs/${job.id}`, title: job.id }, short(job.id))),
      h("td", {}, job.kind),
      status,
      progress,
      h("td.num", {}, String(job.priority)),
      h("td", {}, when(job.created_at)),
      h("td.muted", {}, job.worker || ""),
    );
    const row = { tr, status, progress, job };
    setRow(row, job);
    return row;
  };

  const watch = async (id) => {
    const controller = new AbortController();
    streams.set(id, controller);
    signal.addEventListener("abort", () => controller.abort());
    try {
      for await (const ev of sse(`/v1/jobs/${id}/events`, { signal: controller.signal })) {
        const row = rows.get(id);
        if (!row) break;
        if (ev.event === "state" && ev.data.status) setRow(row, { ...row.job, status: ev.data.status });
        else if (ev.event === "progress") setRow(row, { ...row.job, progress: ev.data });
        else if (ev.event === "end") break;
      }
      const row = rows.get(id);
      if (row && !signal.aborted) setRow(row, await api(`/v1/jobs/${id}`, { signal }));
    } catch (err) {
      if (err.name !== "AbortError") console.warn("job stream", id, err);
    } finally {
      streams.delete(id);
    }
  };

  const refresh = async () => {
    const params = { kind: kindFilter.value, status: statusFilter.value, limit: 100 };
    let answer;
    try {
      answer = await api(`/v1/jobs${qs(params)}`, { signal });
      clear(listError);
    } catch (err) {
      if (err.name !== "AbortError") clear(listError, errorBox(err));
      return;
    }
    count.textContent = `${answer.count} job${answer.count === 1 ? "" : "s"}`;
    const seen = new Set();
    const ordered = [];
    for (const job of answer.data) {
      seen.add(job.id);
      let row = rows.get(job.id);
      if (!row) {
        row = makeRow(job);
        rows.set(job.id, row);
      } else if (!streams.has(job.id) || TERMINAL.has(job.status)) {
        setRow(row, job);
      }
      ordered.push(row.tr);
    }
    for (const [id, row] of rows) {
      if (!seen.has(id)) {
        rows.delete(id);
        row.tr.remove();
      }
    }
    tbody.replaceChildren(...ordered);
    for (const job of answer.data) {
      if (!TERMINAL.has(job.status) && !streams.has(job.id) && streams.size < MAX_STREAMS) watch(job.id);
    }
  };

  const applyFilters = () => {
    const params = new URLSearchParams();
    if (kindFilter.value) params.set("kind", kindFilter.value);
    if (statusFilter.value) params.set("status", statusFilter.value);
    history.replaceState(null, "", `#/jobs${params.toString() ? `?${params}` : ""}`);
    refresh();
  };
  kindFilter.addEventListener("change", applyFilters);
  statusFilter.addEventListener("change", applyFilters);

  const submit = submitPanel(all, query.get("submit") || "prepare-data", refresh);
  add(page, 
    h("h1", {}, "Jobs"),
    h(
      "div.layout-2",
      {},
      h(
        "div",
        {},
        h("div.toolbar", {}, h("label", {}, "Kind ", kindFilter), h("label", {}, "Status ", statusFilter), count),
        listError,
        h(
          "table#jobs-table",
          {},
          h("thead", {}, h("tr", {}, ["job", "kind", "status", "progress", "priority", "created", "worker"].map((c) => h("th", {}, c)))),
          tbody,
        ),
      ),
      submit,
    ),
  );
  await refresh();
  // Streams cover up to MAX_STREAMS running jobs; a slow poll picks up the rest and new jobs.
  const timer = setInterval(() => {
    if (!document.hidden) refresh();
  }, POLL_MS);
  signal.addEventListener("abort", () => clearInterval(timer));
}

function submitPanel(all, initial, onSubmitted) {
  const kindSelect = h(
    "select#submit-kind",
    {},
    all.map((k) => h("option", { value: k.name, selected: k.name === initial }, k.name)),
  );
  const description = h("p.help");
  const holder = h("div#submit-fields");
  const priority = h("input#submit-priority", { name: "priority", type: "text", inputmode: "numeric", placeholder: "0" });
  const prioritySlot = h("span.field-error", { "data-error-for": "priority" });
  const extra = h("textarea#submit-extra", { rows: 3, placeholder: '{"optional": "JSON merged into the spec"}', spellcheck: "false" });
  const extraSlot = h("span.field-error", { "data-error-for": "extra" });
  const formError = h("div#submit-error.error", { role: "alert" });
  const result = h("div#submit-result");
  const button = h("button#submit-button", { type: "submit" }, "Submit");
  let current = null;

  const show = () => {
    const kind = all.find((k) => k.name === kindSelect.value);
    description.textContent = kind ? kind.description : "";
    current = kind ? schemaForm(kind.spec_schema) : null;
    clear(holder, current ? current.element : null);
    clear(formError);
  };
  kindSelect.addEventListener("change", show);
  show();

  const form = h(
    "form#submit-form",
    { novalidate: true },
    h("div.field", {}, h("label", { for: "submit-kind" }, "Kind"), kindSelect),
    description,
    holder,
    h("div.field", {}, h("label", { for: "submit-priority" }, "Priority"), priority, h("small.help", {}, "−100…100, higher runs first in its queue"), prioritySlot),
    h("details", {}, h("summary", {}, "Extra JSON"), extra, extraSlot),
    button,
    formError,
    result,
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    current.clearErrors();
    prioritySlot.textContent = "";
    extraSlot.textContent = "";
    clear(formError);
    const body = { kind: kindSelect.value, ...current.collect() };
    if (priority.value.trim()) body.priority = /^[-+]?\d+$/.test(priority.value.trim()) ? Number(priority.value) : priority.value;
    if (extra.value.trim()) {
      try {
        Object.assign(body, JSON.parse(extra.value));
      } catch (err) {
        extraSlot.textContent = `not JSON: ${err.message}`;
        return;
      }
    }
    button.disabled = true;
    try {
      const job = await api("/v1/jobs", { method: "POST", body });
      clear(result, "Submitted ", h("a", { href: `#/jobs/${job.id}`, dataset: { jobId: job.id } }, `${job.kind} ${short(job.id)}`), ` (${job.status})`);
      await onSubmitted();
    } catch (err) {
      const errors = err.errors || [];
      const rest = current.showErrors(errors.filter((e) => e.field !== "priority"));
      for (const e of errors.filter((x) => x.field === "priority")) prioritySlot.textContent = e.message;
      if (rest.length || !errors.length) {
        clear(formError, rest.length ? rest.map((e) => h("div", {}, `${e.field}: ${e.message}`)) : err.message);
      }
      clear(result);
    } finally {
      button.disabled = false;
    }
  });
  return h("aside.panel", {}, h("h2", {}, "Submit a job"), form);
}
