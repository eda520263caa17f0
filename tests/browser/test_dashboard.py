"""The dashboard in a real browser (headless Chromium + selenium) against the real stack, on the embedded
default and on PostgreSQL + Redis + S3: sign in (and a wrong token), submit a prepare-data job from the form
generated from its JSON schema (a bad field shows the server's error next to it), watch it finish without a
reload, the curves of a train job (points drawn == points the metrics API returns, downsampled or not),
cancel a running job, the playground's denoising states, and every page, with a screenshot of each
(var/browser/<page>-<backend>.png).

What the page shows is compared with what the API answers for the same request, never with constants."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

import mmdlm
from tests.browser.conftest import UiStack

pytestmark = [pytest.mark.browser, pytest.mark.integration]

Shot = Callable[[str], Path]
TEXT = "return document.querySelector(arguments[0])?.textContent ?? null"


def js(browser: Any, script: str, *args: Any) -> Any:
    return browser.execute_script(script, *args)


def text(browser: Any, selector: str) -> str | None:
    return js(browser, TEXT, selector)


def wait_for(browser: Any, script: str, *args: Any, timeout_s: float = 60.0, what: str = "") -> Any:
    """Poll a JS expression (`return ...`) until it is truthy; the failure names what was awaited."""
    deadline = time.monotonic() + timeout_s
    value = None
    while time.monotonic() < deadline:
        value = js(browser, script, *args)
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what or script} (last value {value!r})")


def wait_text(browser: Any, selector: str, timeout_s: float = 60.0) -> str:
    return wait_for(browser, TEXT, selector, timeout_s=timeout_s, what=selector)


def api(stack: UiStack, method: str, path: str, **kwargs: Any) -> httpx.Response:
    headers = {"Authorization": f"Bearer {stack.token}"}
    return httpx.request(method, stack.url + path, headers=headers, timeout=60, **kwargs)


def element(browser: Any, selector: str, timeout_s: float = 30.0) -> Any:
    """The element once the page has rendered it (pages render after their first API answers)."""
    wait_for(
        browser, "return document.querySelector(arguments[0])", selector, timeout_s=timeout_s, what=selector
    )
    return browser.find_element("css selector", selector)


def sign_in(browser: Any, stack: UiStack, route: str = "#/jobs") -> None:
    browser.get(f"{stack.url}/ui{route}")
    element(browser, "#token-input").send_keys(stack.token)
    element(browser, "#signin-submit").click()
    wait_for(browser, "return !document.getElementById('nav').hidden", what="signed-in navigation")


def fill(browser: Any, selector: str, value: str) -> None:
    field = element(browser, selector)
    field.clear()
    field.send_keys(value)


def select(browser: Any, selector: str, value: str) -> None:
    from selenium.webdriver.support.ui import Select

    Select(element(browser, selector)).select_by_value(value)


def job_status(stack: UiStack, job_id: str) -> str:
    return api(stack, "GET", f"/v1/jobs/{job_id}").json()["status"]


CAPTURE_DOWNLOADS = """
window.__downloads = [];
const createObjectURL = URL.createObjectURL;
URL.createObjectURL = (blob) => {
  const href = createObjectURL(blob);
  window.__downloads.push({href, blob});
  return href;
};
HTMLAnchorElement.prototype.click = function () {
  const found = window.__downloads.find((d) => d.href === this.href);
  if (found) found.name = this.download;
};
"""
DIGEST = """
const done = arguments[0];
window.__downloads[0].blob.arrayBuffer().then(async (bytes) => {
  const hash = new Uint8Array(await crypto.subtle.digest('SHA-256', bytes));
  done([[...hash].map((b) => b.toString(16).padStart(2, '0')).join(''), bytes.byteLength]);
}).catch((e) => done(String(e)));
"""


# --- sign in ----------------------------------------------------------------------------------------------


def test_wrong_token_shows_a_message_and_the_right_one_signs_in(
    ui_stack: UiStack, browser: Any, screenshot: Shot
) -> None:
    browser.get(f"{ui_stack.url}/ui")
    assert js(browser, "return document.getElementById('nav').hidden") is True
    element(browser, "#token-input").send_keys("mmdlm_not-a-real-token")
    element(browser, "#signin-submit").click()
    message = wait_text(browser, "#signin-error")
    assert "not accepted" in message
    assert js(browser, "return sessionStorage.length") == 0
    screenshot(f"signin-error-{ui_stack.backend}")

    fill(browser, "#token-input", ui_stack.token)
    element(browser, "#signin-submit").click()
    wait_for(browser, "return !document.getElementById('nav').hidden", what="navigation")
    wait_for(browser, "return document.getElementById('jobs-table')", what="jobs table")
    assert ui_stack.token not in browser.current_url
    assert js(browser, "return sessionStorage.getItem('mmdlm.token')") == ui_stack.token
    element(browser, "#signout").click()
    assert js(browser, "return sessionStorage.length") == 0
    assert element(browser, "#token-input").is_displayed()


# --- jobs: the generated form, field errors, live status ----------------------------------------------------


def test_submit_prepare_data_from_the_form_and_watch_it_finish_without_reload(
    ui_stack: UiStack, browser: Any, screenshot: Shot
) -> None:
    sign_in(browser, ui_stack)
    select(browser, "#submit-kind", "prepare-data")
    # a bad field: the server's 422 message appears next to that field, as the API words it
    fill(browser, '[name="seq_len"]', "3")
    element(browser, "#submit-button").click()
    shown = wait_text(browser, '[data-error-for="seq_len"]')
    refused = api(ui_stack, "POST", "/v1/jobs", json={"kind": "prepare-data", "seq_len": 3})
    assert refused.status_code == 422
    assert [e["message"] for e in refused.json()["errors"] if e["field"] == "seq_len"] == [shown]
    assert not text(browser, "#submit-result")
    screenshot(f"jobs-field-error-{ui_stack.backend}")

    fill(browser, '[name="seq_len"]', "32")
    fill(browser, '[name="max_documents"]', "60")
    select(browser, '[name="tokenizer.type"]', "gpt2")
    js(browser, "window.__sameDocument = true")  # gone if the page reloads
    element(browser, "#submit-button").click()
    job_id = wait_for(
        browser,
        "return document.querySelector('#submit-result a[data-job-id]')?.dataset.jobId",
        what="the submitted job's link",
    )
    assert not text(browser, '[data-error-for="seq_len"]')
    spec = api(ui_stack, "GET", f"/v1/jobs/{job_id}").json()["spec"]
    assert (spec["kind"], spec["seq_len"], spec["max_documents"], spec["tokenizer"]["type"]) == (
        "prepare-data", 32, 60, "gpt2",
    )  # fmt: skip
    row = f'tr[data-job-id="{job_id}"] [data-testid=job-status]'
    seen = set()
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        status = text(browser, row)
        seen.add(status)
        if status in ("succeeded", "failed", "cancelled"):
            break
        time.sleep(0.1)
    assert status == "succeeded" == job_status(ui_stack, job_id), ui_stack.platform.logs()
    assert js(browser, "return window.__sameDocument") is True  # updated live, never reloaded
    progress = text(browser, f'tr[data-job-id="{job_id}"] [data-testid=job-progress]')
    api_progress = api(ui_stack, "GET", f"/v1/jobs/{job_id}").json()["progress"]
    assert progress.startswith(f"{api_progress['step']}/{api_progress['total']}")
    screenshot(f"jobs-{ui_stack.backend}")

    # the job page: events, logs and the dataset artifact with its files' sizes and checksums
    element(browser, f'tr[data-job-id="{job_id}"] a').click()
    wait_for(browser, "return document.querySelector('#job-status')?.dataset.status === 'succeeded'")
    wait_for(browser, "return document.querySelector('.view')?.dataset.settled", what="the final job page")
    [artifact_id] = api(ui_stack, "GET", f"/v1/jobs/{job_id}").json()["artifacts"]
    artifact = api(ui_stack, "GET", f"/v1/artifacts/{artifact_id}").json()
    wait_for(
        browser,
        "return document.querySelector(`#job-artifacts [data-artifact-id='${arguments[0]}']`)",
        artifact_id,
    )
    shown_files = js(
        browser,
        "return [...document.querySelectorAll('#job-artifacts table.files tbody tr')]"
        ".map(r => [r.cells[0].textContent, r.cells[2].textContent])",
    )
    assert sorted(shown_files) == sorted([f["path"], f["sha256"]] for f in artifact["files"])
    # the download button fetches the file with the token (no presigned redirect) and saves the bytes
    js(browser, CAPTURE_DOWNLOADS)
    manifest = next(f for f in artifact["files"] if f["path"] == "manifest.json")
    element(browser, "#job-artifacts tr[data-path='manifest.json'] button").click()
    name = wait_for(browser, "return window.__downloads[0]?.name", what="a saved download")
    assert name == "manifest.json"
    digest = browser.execute_async_script(DIGEST)
    assert digest == [manifest["sha256"], manifest["bytes"]]
    wait_for(
        browser,
        "return document.querySelector('#job-events tr[data-type=end], #job-events tr[data-type=artifact]')",
    )
    assert "prepared" in wait_text(browser, "#job-logs")
    screenshot(f"job-prepare-data-{ui_stack.backend}")


def test_jobs_filters_list_what_the_api_lists(ui_stack: UiStack, browser: Any) -> None:
    done = ui_stack.platform.client.submit({"kind": "probe", "steps": 1})
    ui_stack.platform.wait(done["id"])
    sign_in(browser, ui_stack)
    select(browser, "#jobs-filter-kind", "probe")
    select(browser, "#jobs-filter-status", "succeeded")
    expected = {
        j["id"] for j in api(ui_stack, "GET", "/v1/jobs?kind=probe&status=succeeded&limit=100").json()["data"]
    }
    assert done["id"] in expected
    ids = "[...document.querySelectorAll('#jobs-table tr[data-job-id]')].map(r => r.dataset.jobId)"
    wait_for(browser, f"return {ids}.length === arguments[0]", len(expected), what="the filtered rows")
    assert set(js(browser, f"return {ids}")) == expected
    assert "kind=probe" in browser.current_url and ui_stack.token not in browser.current_url


# --- a job: curves, cancel ----------------------------------------------------------------------------------


def _train_spec(dataset: str) -> dict[str, Any]:
    """A real train job that takes seconds: cpu-nano MDLM, context 32, one rank, a metric every step and
    one validation pass at the end."""
    return {
        "kind": "train", "dataset": dataset, "steps": 6, "precision": "fp32", "device": "cpu", "nproc_per_node": 1,
        "model": {"family": "mdlm", "model": {"preset": "cpu-nano", "max_seq_len": 32}}, "data": {"batch_size": 4},
        "optimizer": {"lr": 1e-3}, "schedule": {"kind": "cosine", "warmup_steps": 2},
        "checkpoint": {"interval": 6}, "eval": {"interval": 6, "batches": 1}, "log": {"interval": 1, "console": False},
    }  # fmt: skip


def _chart_points(browser: Any) -> dict[str, tuple[int, int]]:
    return {
        name: (int(points), int(total))
        for name, points, total in js(
            browser,
            "return [...document.querySelectorAll('.chart')].map(c => [c.dataset.metric, c.dataset.points, c.dataset.total])",
        )
    }


def _api_points(stack: UiStack, job_id: str) -> dict[str, tuple[int, int]]:
    series = api(stack, "GET", f"/v1/jobs/{job_id}/metrics?max_points=2000").json()["series"]
    return {name: (len(s["steps"]), s["count"]) for name, s in series.items()}


def test_train_job_curves_draw_the_points_the_metrics_api_returns(
    ui_stack: UiStack, browser: Any, screenshot: Shot
) -> None:
    if ui_stack.backend != "embedded":
        pytest.skip(
            "one real train job per session (embedded stack); both stacks draw a long probe curve below"
        )
    from mmdlm.training.debug import prepare_debug_dataset
    from tests.integration.sampler.helpers import publish_folder

    # the session's tiny BPE slice (the one the tiny MDLM trains on; prepared once, then reused)
    folder = prepare_debug_dataset(ui_stack.tiny_root / "trainer-datasets", seq_len=32, vocab_size=512,
                                   documents_per_part=60)  # fmt: skip
    dataset = publish_folder(ui_stack.platform, folder, kind="dataset")
    job = ui_stack.platform.client.submit(_train_spec(dataset))
    sign_in(browser, ui_stack, f"#/jobs/{job['id']}")
    wait_for(browser, "return document.querySelector('#job-status')?.dataset.status === 'succeeded'", timeout_s=240,
             what="the train job to succeed")  # fmt: skip
    assert job_status(ui_stack, job["id"]) == "succeeded"
    wait_for(browser, "return document.querySelector('.view')?.dataset.settled", what="the final job page")
    expected = _api_points(ui_stack, job["id"])
    assert {"loss", "lr"} <= set(expected) and expected["loss"][0] >= 6
    wait_for(browser, "return document.querySelectorAll('.chart').length === arguments[0]", len(expected))
    wait_for(browser, "return document.querySelector('.chart[data-metric=loss]')?.dataset.points === arguments[0]",
             str(expected["loss"][0]))  # fmt: skip
    assert _chart_points(browser) == expected
    assert js(browser, "return document.querySelectorAll('.chart canvas').length") == len(expected)
    element(browser, "#chart-log").click()  # log scale redraws every curve with the same points
    assert _chart_points(browser) == expected
    screenshot(f"job-train-{ui_stack.backend}")


def test_a_long_curve_is_downsampled_and_drawn_as_sent(ui_stack: UiStack, browser: Any) -> None:
    """5,000 steps: the server keeps at most 2,000 points (extremes kept); the chart draws exactly those."""
    long = ui_stack.platform.client.submit({"kind": "probe-train", "steps": 5000, "log_lines": 0})
    assert ui_stack.platform.wait(long["id"], timeout_s=120)["status"] == "succeeded"
    sign_in(browser, ui_stack, f"#/jobs/{long['id']}")
    wait_for(browser, "return document.querySelector('.view')?.dataset.settled", what="the final job page")
    wait_for(browser, "return document.querySelector('.chart[data-metric=loss]')?.dataset.total === '5000'")
    drawn = _chart_points(browser)
    assert drawn == _api_points(ui_stack, long["id"])
    assert drawn["loss"][0] <= 2000 < drawn["loss"][1]


def test_cancel_a_running_job_from_its_page(ui_stack: UiStack, browser: Any, screenshot: Shot) -> None:
    job = ui_stack.platform.client.submit({"kind": "probe", "steps": 600, "step_s": 0.1, "log_lines": 3})
    ui_stack.platform.wait_progress(job["id"], 2)
    sign_in(browser, ui_stack, f"#/jobs/{job['id']}")
    wait_for(browser, "return document.querySelector('#job-status')?.dataset.status === 'running'")
    wait_for(browser, "return document.querySelectorAll('.chart').length > 0", what="live curves")
    assert "probe log line 0" in wait_text(browser, "#job-logs")
    element(browser, "#job-cancel").click()
    wait_for(browser, "return document.querySelector('#job-status')?.dataset.status === 'cancelled'", timeout_s=60,
             what="the cancelled state, live")  # fmt: skip
    assert job_status(ui_stack, job["id"]) == "cancelled"
    wait_for(browser, "return document.querySelector('.view')?.dataset.settled", what="the final job page")
    assert js(browser, "return document.getElementById('job-cancel').disabled") is True
    # priority only changes while a job waits: the API's refusal is shown as it words it
    fill(browser, "#job-priority", "7")
    element(browser, "#job-priority-save").click()
    refused = api(ui_stack, "PATCH", f"/v1/jobs/{job['id']}", json={"priority": 7})
    assert refused.status_code == 409
    wait_for(browser, "return document.getElementById('job-action-msg').textContent === arguments[0]",
             refused.json()["detail"])  # fmt: skip
    screenshot(f"job-cancelled-{ui_stack.backend}")


# --- playground, models, datasets, system -----------------------------------------------------------------


RECORD = """
window.__seen = [];
new MutationObserver((records) => {
  for (const r of records) for (const n of r.addedNodes) {
    if (n.classList?.contains('pg-state')) window.__seen.push(['state', Number(n.dataset.masked)]);
    else if (r.target.id === 'pg-final' && n.classList?.contains('final')) window.__seen.push(['final', 0]);
  }
}).observe(document.getElementById('page'), {childList: true, subtree: true});
"""


def test_playground_shows_the_denoising_step_by_step(
    ui_stack: UiStack, browser: Any, screenshot: Shot
) -> None:
    model = ui_stack.models["mdlm"]
    sign_in(browser, ui_stack, f"#/playground?model={model}")
    wait_for(browser, "return document.getElementById('pg-model')?.value === arguments[0]", model)
    fill(browser, "#pg-prompt", "The king")
    fill(browser, "#pg-steps", "16")
    fill(browser, "#pg-samples", "2")
    js(browser, RECORD)
    element(browser, "#pg-run").click()
    wait_for(browser, "return document.getElementById('pg-final').dataset.done === 'true'", timeout_s=120,
             what="the final samples")  # fmt: skip
    seen = js(browser, "return window.__seen")
    first_final = next(i for i, (kind, _) in enumerate(seen) if kind == "final")
    intermediate = [masked for kind, masked in seen[:first_final] if kind == "state" and masked > 0]
    assert len(intermediate) >= 2, seen
    assert intermediate == sorted(intermediate, reverse=True)  # masked positions resolve, never come back
    finals = js(
        browser, "return [...document.querySelectorAll('#pg-final pre.final')].map(p => p.textContent)"
    )
    assert len(finals) == 2 and all(t.startswith("The king") for t in finals)
    assert not text(browser, "#pg-error")
    screenshot(f"playground-{ui_stack.backend}")


def test_models_page_and_compare_view(ui_stack: UiStack, browser: Any, screenshot: Shot) -> None:
    model = ui_stack.models["mdlm"]
    sign_in(browser, ui_stack, "#/models")
    listed = {m["id"] for m in api(ui_stack, "GET", "/v1/models?limit=200").json()["data"]}
    rows = (
        "return [...document.querySelectorAll('#models-table tr[data-model-id]')].map(r => r.dataset.modelId)"
    )
    wait_for(browser, rows)
    assert set(js(browser, rows)) == listed and model in listed
    assert js(
        browser, "return !!document.getElementById('entropy-plot') && !!document.getElementById('sweep-plot')"
    )
    screenshot(f"models-{ui_stack.backend}")
    element(browser, f'tr[data-model-id="{model}"] input.compare-pick').click()
    element(browser, "#compare-button").click()
    wait_for(browser, "return document.querySelector('#compare-table tbody tr')")
    table = api(ui_stack, "GET", f"/v1/models/compare?ids={model}").json()
    shown_columns = js(
        browser,
        "return [...document.querySelectorAll('#compare-table th[data-sort]')].map(t => t.dataset.sort)",
    )
    assert shown_columns == ["model", *table["columns"]]
    assert js(browser, "return document.querySelector('#compare-table tbody tr').dataset.modelId") == model
    screenshot(f"compare-{ui_stack.backend}")


def test_datasets_page_shows_the_manifest(ui_stack: UiStack, browser: Any, screenshot: Shot) -> None:
    datasets = api(ui_stack, "GET", "/v1/artifacts?kind=dataset&limit=200").json()["data"]
    if not datasets:
        job = ui_stack.platform.client.submit(
            {"kind": "prepare-data", "seq_len": 32, "max_documents": 40, "tokenizer": "gpt2"}
        )
        assert ui_stack.platform.wait(job["id"], timeout_s=180)["status"] == "succeeded"
        datasets = api(ui_stack, "GET", "/v1/artifacts?kind=dataset&limit=200").json()["data"]
    sign_in(browser, ui_stack, "#/datasets")
    rows = "return [...document.querySelectorAll('#datasets-table tr[data-artifact-id]')].map(r => r.dataset.artifactId)"
    wait_for(browser, rows)
    assert {d["id"] for d in datasets} <= set(js(browser, rows))
    screenshot(f"datasets-{ui_stack.backend}")
    dataset = datasets[0]["id"]
    element(browser, f'#datasets-table tr[data-artifact-id="{dataset}"] a').click()
    wait_for(browser, "return document.querySelector('#dataset-splits tbody tr')")
    manifest = api(ui_stack, "GET", f"/v1/artifacts/{dataset}/manifest").json()
    for split, numbers in manifest["splits"].items():
        cells = js(
            browser,
            "const t = document.getElementById('dataset-splits');"
            "const cols = [...t.tHead.rows[0].cells].slice(1).map(c => c.textContent);"
            "const row = t.querySelector(`tr[data-split='${arguments[0]}']`);"
            "return Object.fromEntries([...row.cells].slice(1).map((c, i) => [cols[i], c.textContent]));",
            split,
        )
        for key in ("documents", "tokens", "rows"):
            if numbers.get(key) is not None:
                assert cells[key].replace(",", "") == str(numbers[key]), (split, key, cells)
    screenshot(f"dataset-{ui_stack.backend}")


def test_system_page(ui_stack: UiStack, browser: Any, screenshot: Shot) -> None:
    sign_in(browser, ui_stack, "#/system")
    wait_for(browser, "return document.querySelector('#system-versions tr[data-key=mmdlm]')")
    system = api(ui_stack, "GET", "/v1/system").json()
    assert text(browser, "#system-versions tr[data-key=mmdlm] td") == mmdlm.__version__
    assert text(browser, "#system-backends tr[data-key=database] td") == system["backends"]["database"]
    queues = js(
        browser,
        "return [...document.querySelectorAll('#system-queues tbody tr')].map(r => r.cells[0].textContent)",
    )
    assert queues == [q["name"] for q in system["queues"]]
    screenshot(f"system-{ui_stack.backend}")
