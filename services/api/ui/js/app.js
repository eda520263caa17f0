// The dashboard shell: sign-in, the hash router (#/jobs, #/jobs/<id>, #/models, #/compare?ids=...,
// #/playground, #/datasets, #/datasets/<id>, #/system) and page lifetimes (each page gets an AbortSignal
// that stops its streams and timers when the user navigates away).

import { api, clearToken, getToken, setToken, setUnauthorizedHandler } from "./api.js";
import { clear, errorBox, h } from "./dom.js";
import * as datasets from "./pages/datasets.js";
import * as job from "./pages/job.js";
import * as jobs from "./pages/jobs.js";
import * as models from "./pages/models.js";
import * as playground from "./pages/playground.js";
import * as system from "./pages/system.js";

const $ = (id) => document.getElementById(id);
let current = null; // AbortController of the page on screen

const ROUTES = [
  [/^\/jobs\/([\w-]+)$/, (m) => [job, { id: m[1] }]],
  [/^\/jobs$/, () => [jobs, {}]],
  [/^\/models$/, () => [models, {}]],
  [/^\/compare$/, () => [models, { compare: true }]],
  [/^\/playground$/, () => [playground, {}]],
  [/^\/datasets\/([\w-]+)$/, (m) => [datasets, { id: m[1] }]],
  [/^\/datasets$/, () => [datasets, {}]],
  [/^\/system$/, () => [system, {}]],
];

function parseHash() {
  const raw = location.hash.replace(/^#/, "") || "/jobs";
  const [path, query = ""] = raw.split("?");
  return { path, query: new URLSearchParams(query) };
}

function showSignin(message) {
  if (current) current.abort();
  current = null;
  $("nav").hidden = true;
  $("signout").hidden = true;
  $("whoami").textContent = "";
  clear($("page"));
  $("signin").hidden = false;
  $("signin-error").textContent = message || "";
  $("token-input").focus();
}

async function route() {
  if (!getToken()) {
    showSignin();
    return;
  }
  $("signin").hidden = true;
  $("nav").hidden = false;
  $("signout").hidden = false;
  $("whoami").textContent = "signed in";
  if (current) current.abort();
  current = new AbortController();
  const { path, query } = parseHash();
  // Each render gets its own container: a page still finishing after the user moved on writes into a
  // detached element, never into the page on screen.
  const page = h("div.view");
  $("page").replaceChildren(page);
  for (const a of document.querySelectorAll("#nav a")) {
    a.classList.toggle("active", path.startsWith(a.getAttribute("href").slice(1)));
  }
  for (const [pattern, pick] of ROUTES) {
    const m = path.match(pattern);
    if (!m) continue;
    const [module, params] = pick(m);
    try {
      await module.render(page, { ...params, query, signal: current.signal });
    } catch (err) {
      if (err.name !== "AbortError") page.append(errorBox(err, "page-error"));
    }
    return;
  }
  clear(page, h("h1", {}, "Not found"), h("p", {}, h("a", { href: "#/jobs" }, "Back to jobs")));
}

async function signIn(event) {
  event.preventDefault();
  const token = $("token-input").value.trim();
  const error = $("signin-error");
  error.textContent = "";
  if (!token) {
    error.textContent = "Enter a token.";
    return;
  }
  $("signin-submit").disabled = true;
  try {
    await api("/v1/kinds", { token });
    setToken(token);
    $("token-input").value = "";
    const before = location.hash;
    if (!before || before === "#") location.hash = "#/jobs"; // the hashchange renders the page
    else await route();
  } catch (err) {
    error.textContent =
      err.status === 401
        ? "That token was not accepted (invalid, expired or revoked). Check it and try again."
        : `Could not sign in: ${err.message}`;
  } finally {
    $("signin-submit").disabled = false;
  }
}

setUnauthorizedHandler(() => {
  clearToken();
  showSignin("Your token is no longer accepted; sign in again.");
});

$("signin-form").addEventListener("submit", signIn);
$("signout").addEventListener("click", () => {
  clearToken();
  showSignin("Signed out.");
});
window.addEventListener("hashchange", route);
route();
