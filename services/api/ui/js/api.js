// The API client of the dashboard: the token lives in this tab's sessionStorage and travels only in the
// Authorization header (never in a URL, so it is never in a server log or the browser history).
// Server-sent events are read with fetch() and a stream parser because EventSource cannot send headers.

const KEY = "mmdlm.token";
let onUnauthorized = () => {};

export function getToken() {
  return sessionStorage.getItem(KEY);
}

export function setToken(token) {
  sessionStorage.setItem(KEY, token);
}

export function clearToken() {
  sessionStorage.removeItem(KEY);
}

export function setUnauthorizedHandler(fn) {
  onUnauthorized = fn;
}

export class ApiError extends Error {
  constructor(status, body) {
    const detail = body && typeof body.detail === "string" ? body.detail : `HTTP ${status}`;
    super(detail);
    this.status = status;
    this.body = body || {};
    this.errors = Array.isArray(this.body.errors) ? this.body.errors : [];
  }
}

function headers(extra, token) {
  const out = { ...extra };
  const t = token ?? getToken();
  if (t) out.Authorization = `Bearer ${t}`;
  return out;
}

async function failure(response, token) {
  let body = null;
  try {
    body = await response.json();
  } catch {
    body = null;
  }
  if (response.status === 401 && token === undefined) onUnauthorized();
  return new ApiError(response.status, body);
}

/** JSON request; `token` overrides the stored one (the sign-in check). Throws ApiError on 4xx/5xx. */
export async function api(path, { method = "GET", body, signal, token, raw = false } = {}) {
  const init = { method, signal, headers: headers({ Accept: "application/json" }, token) };
  if (body !== undefined) {
    init.body = JSON.stringify(body);
    init.headers["Content-Type"] = "application/json";
  }
  const response = await fetch(path, init);
  if (!response.ok) throw await failure(response, token);
  if (raw) return response;
  if (response.status === 204) return null;
  return response.json();
}

/** Query string from an object (arrays repeat the key; null/undefined/"" are left out). */
export function qs(params) {
  const search = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) {
    if (v === null || v === undefined || v === "") continue;
    for (const item of Array.isArray(v) ? v : [v]) search.append(k, String(item));
  }
  const text = search.toString();
  return text ? `?${text}` : "";
}

/** Parse one SSE block ("event: x\ndata: ...\nid: 3") into {event, data, id}; null for comments only. */
function parseBlock(block) {
  let event = "message";
  let id = null;
  const data = [];
  for (const line of block.split(/\r?\n/)) {
    if (!line || line.startsWith(":")) continue;
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (field === "event") event = value;
    else if (field === "data") data.push(value);
    else if (field === "id") id = value;
  }
  if (!data.length && event === "message") return null;
  const text = data.join("\n");
  let parsed = text;
  try {
    parsed = JSON.parse(text);
  } catch {
    parsed = text;
  }
  return { event, data: parsed, id };
}

/** Server-sent events of a GET or POST as an async iterator of {event, data, id}. Abort with `signal`. */
export async function* sse(path, { method = "GET", body, signal } = {}) {
  const init = { method, signal, headers: headers({ Accept: "text/event-stream" }) };
  if (body !== undefined) {
    init.body = JSON.stringify(body);
    init.headers["Content-Type"] = "application/json";
  }
  const response = await fetch(path, init);
  if (!response.ok) throw await failure(response);
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += value;
      const blocks = buffer.split(/\r?\n\r?\n/);
      buffer = blocks.pop();
      for (const block of blocks) {
        const event = parseBlock(block);
        if (event) yield event;
      }
    }
    const last = buffer.trim() ? parseBlock(buffer) : null;
    if (last) yield last;
  } finally {
    reader.cancel().catch(() => {});
  }
}

/** Download one file with the token (the proxied bytes, not a presigned redirect) and save it. */
export async function download(artifactId, path, filename) {
  const url = `/v1/artifacts/${encodeURIComponent(artifactId)}/download${qs({ path, redirect: "false" })}`;
  const response = await api(url, { raw: true });
  const blob = await response.blob();
  const href = URL.createObjectURL(blob);
  const a = document.createElement("a");
  a.href = href;
  a.download = filename || (path || artifactId).split("/").pop();
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(href), 10_000);
}
