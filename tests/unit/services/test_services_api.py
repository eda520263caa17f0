"""The gateway in-process (TestClient, embedded backend, no worker): schemas and the discriminated
union, 422 messages naming the field, auth (401) and isolation (404), body limit (413), cancel, SSE."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from services.api.main import create_app
from services.common.auth import create_token
from services.common.client import _parse_sse
from services.common.db import Database
from services.common.http_errors import field_path
from services.common.settings import Settings


@pytest.fixture(scope="module")
def app_settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    home = tmp_path_factory.mktemp("api-home")
    return Settings(
        _env_file=None, home=home, kind_modules=["tests.utils.kinds"], max_body_bytes=4096, token_cache_s=0
    )  # type: ignore[call-arg]


@pytest.fixture(scope="module")
def api(app_settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(app_settings)) as client:
        yield client


def token_for(settings: Settings, user: str) -> str:
    with Database(settings.database_url).begin() as s:
        return create_token(s, user)[1]


@pytest.fixture(scope="module")
def alice(app_settings: Settings, api: TestClient) -> dict[str, str]:
    return {"Authorization": f"Bearer {token_for(app_settings, 'alice')}"}


@pytest.fixture(scope="module")
def bob(app_settings: Settings, api: TestClient) -> dict[str, str]:
    return {"Authorization": f"Bearer {token_for(app_settings, 'bob')}"}


def submit(api: TestClient, headers: dict[str, str], body: dict) -> dict:
    response = api.post("/v1/jobs", json=body, headers=headers)
    assert response.status_code == 201, response.text
    return response.json()


def test_submit_creates_a_queued_job_with_its_options(api: TestClient, alice: dict[str, str]) -> None:
    job = submit(api, alice, {"kind": "probe", "steps": 2, "priority": 7, "max_attempts": 5})
    assert (job["status"], job["queue"], job["priority"], job["max_attempts"]) == ("queued", "encode", 7, 5)
    assert job["spec"]["steps"] == 2 and "priority" not in job["spec"]
    assert api.get(f"/v1/jobs/{job['id']}", headers=alice).json()["id"] == job["id"]


def test_union_routes_each_kind_to_its_queue(api: TestClient, alice: dict[str, str]) -> None:
    queues = {k: submit(api, alice, {"kind": k})["queue"] for k in ("probe", "probe-train", "probe-sample")}
    assert queues == {"probe": "encode", "probe-train": "train", "probe-sample": "sample"}
    prepared = submit(api, alice, {"kind": "prepare-data", "tokenizer": "gpt2", "max_documents": 10})
    assert prepared["queue"] == "encode" and prepared["spec"]["tokenizer"] == {"type": "gpt2"}


@pytest.mark.parametrize(
    ("body", "field", "words"),
    [
        ({"kind": "probe", "steps": -1}, "steps", "greater than or equal to 0"),
        ({"kind": "probe", "stepz": 3}, "stepz", "unknown field"),
        ({"kind": "nope"}, "kind", "unknown job kind 'nope'"),
        ({"steps": 3}, "kind", "missing"),
        ({"kind": "probe", "priority": 1000}, "priority", "less than or equal to 100"),
        ({"kind": "prepare-data", "seq_len": 4}, "seq_len", "greater than or equal to 8"),
        ({"kind": "prepare-data", "source": {"type": "folder"}}, "source.path", "Field required"),
        (
            {"kind": "prepare-data", "tokenizer": {"type": "bpe", "vocab_size": 10}},
            "tokenizer.vocab_size",
            "300",
        ),
        (
            {"kind": "prepare-data", "source": {"type": "bundled", "parts": ["wiki", "bogus"]}},
            "source.parts[1]",
            "wiki",
        ),
    ],
)
def test_bad_specs_get_422_naming_the_field(
    api: TestClient, alice: dict[str, str], body: dict, field: str, words: str
) -> None:
    response = api.post("/v1/jobs", json=body, headers=alice)
    assert response.status_code == 422, response.text
    payload = response.json()
    fields = [e["field"] for e in payload["errors"]]
    assert field in fields, payload
    assert payload["detail"].startswith(f"{fields[0]}: ") and words in payload["detail"]


def test_invalid_json_is_a_422_not_a_500(api: TestClient, alice: dict[str, str]) -> None:
    response = api.post(
        "/v1/jobs", content=b"{not json", headers={**alice, "Content-Type": "application/json"}
    )
    assert response.status_code == 422 and response.json()["errors"][0]["field"] == "body"


def test_reference_checks_name_the_field(api: TestClient, alice: dict[str, str]) -> None:
    response = api.post("/v1/jobs", json={"kind": "probe", "dataset": "0" * 32}, headers=alice)
    assert response.status_code == 422
    assert response.json()["errors"] == [
        {"field": "dataset", "message": f"artifact {'0' * 32!r} not found", "type": "reference"}
    ]


def test_oversized_body_gets_413(api: TestClient, alice: dict[str, str]) -> None:
    big = {"kind": "probe", "marker_dir": "x" * 10_000}
    assert api.post("/v1/jobs", json=big, headers=alice).status_code == 413
    chunks = (b"x" * 1024 for _ in range(8))  # chunked upload without Content-Length
    assert (
        api.post(
            "/v1/jobs", content=chunks, headers={**alice, "Content-Type": "application/json"}
        ).status_code
        == 413
    )


V1_ROUTES = [
    ("POST", "/v1/jobs"), ("GET", "/v1/jobs"), ("GET", "/v1/jobs/x"), ("POST", "/v1/jobs/x/cancel"),
    ("GET", "/v1/jobs/x/events"), ("GET", "/v1/jobs/x/metrics"), ("GET", "/v1/artifacts"),
    ("GET", "/v1/artifacts/x"), ("GET", "/v1/artifacts/x/download"), ("GET", "/v1/kinds"),
]  # fmt: skip


@pytest.mark.parametrize(("method", "path"), V1_ROUTES)
def test_every_v1_route_needs_a_token(api: TestClient, method: str, path: str) -> None:
    assert api.request(method, path).status_code == 401
    bad = api.request(method, path, headers={"Authorization": "Bearer mmdlm_not-a-real-token"})
    assert bad.status_code == 401 and bad.headers["www-authenticate"] == "Bearer"


def test_every_v1_route_is_in_the_auth_list(api: TestClient) -> None:
    routes = {
        (m, r.path) for r in api.app.routes for m in getattr(r, "methods", ()) if r.path.startswith("/v1")
    }  # type: ignore[attr-defined]
    listed = {
        (
            m,
            p.replace("/x", "/{job_id}", 1)
            if p.startswith("/v1/jobs/")
            else p.replace("/x", "/{artifact_id}", 1),
        )
        for m, p in V1_ROUTES
    }
    assert routes <= listed, routes - listed


def test_other_users_jobs_are_invisible(api: TestClient, alice: dict[str, str], bob: dict[str, str]) -> None:
    job = submit(api, alice, {"kind": "probe"})
    for method, path in [("GET", ""), ("POST", "/cancel"), ("GET", "/events"), ("GET", "/metrics")]:
        assert api.request(method, f"/v1/jobs/{job['id']}{path}", headers=bob).status_code == 404
    assert job["id"] not in {j["id"] for j in api.get("/v1/jobs", headers=bob).json()["data"]}
    assert (
        api.get(f"/v1/jobs/{job['id']}", headers=alice).json()["status"] == "queued"
    )  # bob's cancel did nothing


def test_list_filters_and_paginates(api: TestClient, app_settings: Settings) -> None:
    carol = {"Authorization": f"Bearer {token_for(app_settings, 'carol')}"}
    ids = [submit(api, carol, {"kind": "probe" if i % 2 else "probe-train"})["id"] for i in range(5)]
    page = api.get("/v1/jobs", params={"limit": 2}, headers=carol).json()
    assert page["count"] == 5 and [j["id"] for j in page["data"]] == ids[::-1][:2]
    page2 = api.get("/v1/jobs", params={"limit": 2, "offset": 2}, headers=carol).json()
    assert [j["id"] for j in page2["data"]] == ids[::-1][2:4]
    trains = api.get("/v1/jobs", params={"kind": "probe-train"}, headers=carol).json()
    assert trains["count"] == 3
    api.post(f"/v1/jobs/{ids[0]}/cancel", headers=carol)
    cancelled = api.get("/v1/jobs", params={"status": ["cancelled", "failed"]}, headers=carol).json()
    assert [j["id"] for j in cancelled["data"]] == [ids[0]]
    assert api.get("/v1/jobs", params={"status": "bogus"}, headers=carol).status_code == 422


def test_cancel_queued_job_and_refuse_finished_ones(api: TestClient, alice: dict[str, str]) -> None:
    job = submit(api, alice, {"kind": "probe"})
    response = api.post(f"/v1/jobs/{job['id']}/cancel", headers=alice)
    assert response.status_code == 200 and response.json()["status"] == "cancelled"
    assert api.post(f"/v1/jobs/{job['id']}/cancel", headers=alice).status_code == 200  # idempotent


def test_events_replay_and_resume_from_last_event_id(api: TestClient, alice: dict[str, str]) -> None:
    job = submit(api, alice, {"kind": "probe"})
    api.post(f"/v1/jobs/{job['id']}/cancel", headers=alice)
    with api.stream("GET", f"/v1/jobs/{job['id']}/events", headers=alice) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        events = list(_parse_sse(response.iter_lines()))
    assert [e.type for e in events] == ["state", "state", "end"]
    assert [e.data.get("status") for e in events] == ["queued", "cancelled", "cancelled"]
    first_id = events[0].id
    with api.stream(
        "GET", f"/v1/jobs/{job['id']}/events", headers={**alice, "Last-Event-ID": str(first_id)}
    ) as response:
        resumed = list(_parse_sse(response.iter_lines()))
    assert [e.id for e in resumed[:-1]] == [events[1].id]
    assert (
        api.get(f"/v1/jobs/{job['id']}/events", headers={**alice, "Last-Event-ID": "abc"}).status_code == 400
    )


def test_metrics_of_a_job_without_metrics(api: TestClient, alice: dict[str, str]) -> None:
    job = submit(api, alice, {"kind": "probe"})
    assert api.get(f"/v1/jobs/{job['id']}/metrics", headers=alice).json() == {
        "job_id": job["id"],
        "series": {},
        "max_points": None,
    }


def test_kinds_lists_schemas(api: TestClient, alice: dict[str, str]) -> None:
    kinds = {k["name"]: k for k in api.get("/v1/kinds", headers=alice).json()}
    assert {"prepare-data", "probe"} <= set(kinds)
    assert "seq_len" in kinds["prepare-data"]["spec_schema"]["properties"]


def test_health_ready_and_prometheus(api: TestClient) -> None:
    assert api.get("/healthz").json() == {"status": "ok"}
    ready = api.get("/readyz").json()
    assert ready["status"] == "ok" and set(ready["checks"]) == {"database", "broker", "store"}
    text = api.get("/metrics").text
    assert 'mmdlm_http_requests_total{method="GET",route="/healthz",status="200"}' in text
    assert 'mmdlm_jobs{queue="encode",status="queued"}' in text


def test_openapi_documents_the_union(api: TestClient) -> None:
    schema = api.get("/openapi.json").json()
    body = json.dumps(schema["paths"]["/v1/jobs"]["post"]["requestBody"])
    assert "discriminator" in body and "PrepareDataSpecRequest" in body


def test_field_path_drops_union_tags() -> None:
    body = {"kind": "prepare-data", "source": {"type": "folder", "x": 1}}
    assert field_path(("body", "prepare-data", "source", "folder", "path"), body) == "source.path"
    assert field_path(("query", "limit"), None) == "limit"
    assert field_path(("body",), body) == "body"


def test_ready_reports_a_broken_store(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    settings = Settings(_env_file=None, home=tmp_path / "h", store_path=blocker / "store")  # type: ignore[call-arg]
    with TestClient(create_app(settings)) as client:
        response = client.get("/readyz")
    assert response.status_code == 503
    body = response.json()
    assert body["checks"]["store"]["ok"] is False and body["checks"]["database"]["ok"] is True


def test_a_job_is_accepted_while_the_broker_is_down(tmp_path: Path) -> None:
    """The row is the truth: the job is stored (201) and left for the sweeper to dispatch."""
    from tests.utils.servers import free_port

    dead = f"redis://127.0.0.1:{free_port()}/0"
    settings = Settings(
        _env_file=None, home=tmp_path / "h", broker_url=dead, kind_modules=["tests.utils.kinds"]
    )  # type: ignore[call-arg]
    with TestClient(create_app(settings)) as client:
        headers = {"Authorization": f"Bearer {token_for(settings, 'dora')}"}
        response = client.post("/v1/jobs", json={"kind": "probe"}, headers=headers)
        assert response.status_code == 201, response.text
        assert client.get("/readyz").json()["checks"]["broker"]["ok"] is False
    from services.common.models import Job

    with Database(settings.database_url).session() as s:
        job = s.get(Job, response.json()["id"])
        assert job is not None and job.status == "queued" and job.enqueued_at is None
