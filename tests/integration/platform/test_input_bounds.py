"""Hostile input at the edge of the real stack (API + sampler on PostgreSQL): every case of issue 11 is a
4xx naming the field (never a 500 or a cut stream), and a database outage is a 503 with Retry-After."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from services.common.auth import PREFIX
from tests.integration.platform.conftest import EdgeStack
from tests.utils.fixtures import _backend
from tests.utils.harness import REPO, Platform
from tests.utils.servers import PG_HOST, PG_PORT, PG_USER, free_port, stop_process_group, tail

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.postgres, pytest.mark.redis]

BIG = 2**63  # one past PostgreSQL's BIGINT


def call(stack: EdgeStack, method: str, path: str, **kwargs: Any) -> httpx.Response:
    headers = {"Authorization": f"Bearer {stack.platform.token}", **kwargs.pop("headers", {})}
    return httpx.request(method, stack.platform.url + path, headers=headers, timeout=60, **kwargs)


def raw_json(stack: EdgeStack, path: str, text: str) -> httpx.Response:
    """A body sent as written: `Infinity`, `\\ud800` and 2**70 are what a hostile client can send."""
    return call(stack, "POST", path, content=text.encode(), headers={"Content-Type": "application/json"})


def refused(response: httpx.Response, field: str, status: int = 422, words: str = "") -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"detail", "errors"}, body  # the one error schema
    assert field in [e["field"] for e in body["errors"]], body
    assert words in body["detail"], body
    return body


def test_nul_in_path_query_and_spec_is_a_422_naming_the_field(edge_stack: EdgeStack) -> None:
    refused(call(edge_stack, "GET", "/v1/jobs/abc%00def"), "job_id", words="NUL")
    refused(call(edge_stack, "GET", "/v1/artifacts/x%00/download"), "artifact_id")
    refused(call(edge_stack, "GET", "/v1/jobs", params={"kind": "pro\x00be"}), "query.kind")
    refused(
        call(edge_stack, "GET", f"/v1/jobs/{edge_stack.job}/metrics", params={"name": "a\x00"}), "query.name"
    )
    spec = {"kind": "train", "dataset": "ab\x00cd", "model": {"family": "mdlm", "model": "cpu-nano"}}
    refused(call(edge_stack, "POST", "/v1/jobs", json=spec), "dataset", words="NUL")
    refused(
        call(edge_stack, "POST", "/v1/jobs", json={"kind": "probe", "marker_dir": "/tmp/\x00"}), "marker_dir"
    )
    # the job table is intact: a normal read still works
    assert call(edge_stack, "GET", "/v1/jobs", params={"kind": "probe"}).status_code == 200


def test_lone_surrogates_are_refused_in_specs_and_prompts(edge_stack: EdgeStack) -> None:
    refused(raw_json(edge_stack, "/v1/jobs", '{"kind": "probe", "marker_dir": "x\\ud800y"}'), "marker_dir")
    body = f'{{"model": "{edge_stack.model}", "prompt": "the \\udc00 king", "max_tokens": 4}}'
    refused(raw_json(edge_stack, "/v1/completions", body), "prompt", words="surrogate")
    body = f'{{"model": "{edge_stack.model}", "infill": ["a", 2, "\\ud83d"]}}'
    refused(raw_json(edge_stack, "/v1/generate", body), "infill")


def test_offsets_and_cursors_past_bigint_are_refused_and_the_largest_works(edge_stack: EdgeStack) -> None:
    for path in ("/v1/jobs", "/v1/artifacts", "/v1/models"):
        refused(call(edge_stack, "GET", path, params={"offset": BIG}), "offset")
        page = call(edge_stack, "GET", path, params={"offset": BIG - 1})
        assert page.status_code == 200 and page.json()["data"] == [], page.text
    job = edge_stack.job
    refused(call(edge_stack, "GET", f"/v1/jobs/{job}/metrics", params={"since_step": BIG}), "since_step")
    assert (
        call(edge_stack, "GET", f"/v1/jobs/{job}/metrics", params={"since_step": BIG - 1}).json()["series"]
        == {}
    )
    refused(call(edge_stack, "GET", f"/v1/jobs/{job}/events", params={"after": 2**64}), "after")
    refused(call(edge_stack, "GET", f"/v1/jobs/{job}/events", headers={"Last-Event-ID": str(BIG)}),
            "Last-Event-ID", status=400)  # fmt: skip
    # the largest cursor is a complete stream: no events after it, then `end` (not a cut stream)
    stream = call(edge_stack, "GET", f"/v1/jobs/{job}/events", headers={"Last-Event-ID": str(BIG - 1)})
    assert stream.status_code == 200 and stream.headers["content-type"].startswith("text/event-stream")
    assert "event: end" in stream.text and '"status": "succeeded"' in stream.text, stream.text


def test_non_finite_floats_and_huge_integers_in_specs(edge_stack: EdgeStack) -> None:
    train = '{"kind": "train", "dataset": "%s", "model": {"family": "mdlm", "model": "cpu-nano"}, %s}'
    refused(raw_json(edge_stack, "/v1/jobs", train % (edge_stack.dataset, '"optimizer": {"lr": Infinity}')),
            "optimizer.lr", words="finite")  # fmt: skip
    refused(
        raw_json(edge_stack, "/v1/jobs", train % (edge_stack.dataset, '"optimizer": {"lr": NaN}')),
        "optimizer.lr",
    )
    refused(raw_json(edge_stack, "/v1/jobs", train % (edge_stack.dataset, f'"steps": {2**70}')), "steps")
    refused(raw_json(edge_stack, "/v1/jobs", train % (edge_stack.dataset, f'"seed": {2**64}')), "seed")
    refused(raw_json(edge_stack, "/v1/jobs", '{"kind": "probe", "priority": 1e400}'), "priority")
    refused(call(edge_stack, "PATCH", f"/v1/jobs/{edge_stack.job}", json={"priority": 2**70}), "priority")
    body = f'{{"model": "{edge_stack.model}", "temperature": Infinity}}'
    refused(raw_json(edge_stack, "/v1/completions", body), "temperature")


def test_a_train_job_past_the_operator_quota_is_refused_with_the_limit(edge_stack: EdgeStack) -> None:
    spec = {"kind": "train", "dataset": edge_stack.dataset, "model": {"family": "mdlm", "model": "cpu-nano"},
            "steps": 100_000, "data": {"batch_size": 8}, "schedule": {"warmup_steps": 10}}  # fmt: skip
    body = refused(call(edge_stack, "POST", "/v1/jobs", json=spec), "steps", words="MMDLM_TRAIN_MAX_TOKENS")
    assert "2.56e+07" in body["detail"]  # 100,000 steps x 8 rows x 32 tokens (the dataset's seq_len)
    kinds = {k["name"]: k for k in call(edge_stack, "GET", "/v1/kinds").json()}
    assert kinds["train"]["limits"]["max_tokens"] == 10_000_000
    assert kinds["sample"]["limits"]["requests"]["samples_per_request"] == 64
    assert kinds["sample"]["limits"]["requests"]["steps"] == 16


def test_completion_prompts_are_bounded_in_total_and_checked_before_decoding(edge_stack: EdgeStack) -> None:
    model = edge_stack.model
    many = call(
        edge_stack,
        "POST",
        "/v1/completions",
        json={"model": model, "prompt": ["a"] * 16_000, "max_tokens": 1},
    )
    refused(many, "prompt", words="16000 completions exceed the limit of 64")
    refused(call(edge_stack, "POST", "/v1/completions", json={"model": model, "prompt": ["a", "b"], "n": 40}),
            "prompt", words="80 completions")  # fmt: skip
    for prompt in ([5, 10**9], [[5, 6], [7, -3]], [2**40]):
        bad = call(
            edge_stack,
            "POST",
            "/v1/completions",
            json={"model": model, "prompt": prompt, "max_tokens": 2, "steps": 4},
        )
        refused(bad, "prompt", words="is not a text token of this model")
    ok = call(
        edge_stack,
        "POST",
        "/v1/completions",
        json={"model": model, "prompt": [5, 6], "max_tokens": 2, "steps": 4},
    )
    assert ok.status_code == 200, ok.text
    assert len(ok.json()["choices"]) == 1


def _api_process(workdir: Path, env: dict[str, str]) -> tuple[subprocess.Popen[bytes], str]:
    import os

    port = free_port()
    base = {k: v for k, v in os.environ.items() if not k.startswith("MMDLM_")}
    base.update(MMDLM_HOME=str(workdir / "home"), HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO), **env)
    log = workdir / "api.log"
    with log.open("ab") as handle:
        proc = subprocess.Popen(
            [sys.executable, "-m", "services.cli", "serve", "--host", "127.0.0.1", "--port", str(port)],
            stdout=handle, stderr=subprocess.STDOUT, env=base, cwd=REPO, start_new_session=True,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert proc.poll() is None, tail(log)
        try:
            if httpx.get(url + "/healthz", timeout=2).status_code == 200:
                return proc, url
        except httpx.TransportError:
            time.sleep(0.2)
    stop_process_group(proc)
    raise AssertionError(f"API not up:\n{tail(log)}")


def assert_unavailable(response: httpx.Response) -> None:
    assert response.status_code == 503, response.text
    assert int(response.headers["Retry-After"]) > 0
    body = response.json()
    assert set(body) == {"detail", "errors"} and body["errors"][0]["field"] == "database", body


def test_postgres_refusing_connections_is_a_503_with_retry_after(tmp_path: Path) -> None:
    closed = free_port()  # nothing listens here
    proc, url = _api_process(
        tmp_path,
        {"MMDLM_DATABASE_URL": f"postgresql+psycopg://postgres@127.0.0.1:{closed}/none", "MMDLM_AUTO_MIGRATE": "false"},
    )  # fmt: skip
    try:
        auth = {"Authorization": f"Bearer {PREFIX}{'0' * 40}"}  # well-formed: its lookup needs the database
        assert_unavailable(httpx.get(url + "/v1/jobs", headers=auth, timeout=30))
        assert_unavailable(httpx.post(url + "/v1/jobs", headers=auth, json={"kind": "probe"}, timeout=30))
        assert httpx.get(url + "/healthz", timeout=5).status_code == 200  # the process itself is fine
    finally:
        stop_process_group(proc)
    assert "Traceback" not in (tmp_path / "api.log").read_text()


def test_a_dropped_database_is_a_503_not_a_500(request: pytest.FixtureRequest, tmp_path: Path) -> None:
    with (
        _backend("production", request, tmp_path / "backend") as backend,
        Platform(backend, tmp_path / "p", workers_queues=[]) as platform,
    ):
        client = platform.client
        job = client.submit({"kind": "probe", "steps": 1})
        name = platform.settings.database_url.rsplit("/", 1)[1]
        admin = f"host={PG_HOST} port={PG_PORT} user={PG_USER} dbname=postgres"
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        auth = {"Authorization": f"Bearer {platform.token}"}
        for path in (f"/v1/jobs/{job['id']}", "/v1/jobs", f"/v1/jobs/{job['id']}/events?follow=false"):
            assert_unavailable(httpx.get(platform.url + path, headers=auth, timeout=30))
        log = json.dumps((platform.workdir / "api.log").read_text())
        assert "unhandled error" not in log
