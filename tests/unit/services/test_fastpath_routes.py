"""The gateway's pure-ASGI fast path (services.api.fastpath) gives the answers the FastAPI routes give.

Two apps on one database (SQLite and PostgreSQL): `fast` caches tokens (so its status reads and submits
with a known token are answered by the fast path), `slow` does not (every request goes through FastAPI).
Each check compares the two, and reads the fast path's own counter to know which path answered.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from services.api.main import create_app
from services.common.auth import create_token
from services.common.db import Database
from services.common.settings import Settings

STATUS, JOBS = "/v1/jobs/{job_id}", "/v1/jobs"


@pytest.fixture
def apps(db: Database, tmp_path: Path) -> Iterator[tuple[TestClient, TestClient, dict[str, str]]]:
    def settings(cache_s: int) -> Settings:
        return Settings(
            _env_file=None, home=tmp_path, database_url=db.url, kind_modules=["tests.utils.kinds"],
            max_body_bytes=4096, token_cache_s=cache_s, auto_migrate=False,
        )  # type: ignore[call-arg]  # fmt: skip

    with db.begin() as s:
        token = create_token(s, "alice")[1]
    with TestClient(create_app(settings(60))) as fast, TestClient(create_app(settings(0))) as slow:
        yield fast, slow, {"Authorization": f"Bearer {token}"}


def counted(client: TestClient, route: str, outcome: str) -> float:
    metrics = client.app.state.mmdlm.metrics  # type: ignore[attr-defined]
    return (
        metrics.registry.get_sample_value(
            "mmdlm_gateway_fast_path_total", {"route": route, "outcome": outcome}
        )
        or 0.0
    )


def test_answers_equal_the_routes_answers(apps: tuple[TestClient, TestClient, dict[str, str]]) -> None:
    fast, slow, alice = apps
    # a token not cached yet: handed on (the app authenticates it and fills the cache)
    first = fast.post(JOBS, json={"kind": "probe", "steps": 3, "priority": 4}, headers=alice)
    assert first.status_code == 201 and counted(fast, JOBS, "handed_on") == 1
    body = {"kind": "prepare-data", "tokenizer": "gpt2", "max_documents": 10, "max_attempts": 2}
    made = fast.post(JOBS, json=body, headers=alice)
    reference = slow.post(JOBS, json=body, headers=alice)
    assert made.status_code == reference.status_code == 201 and counted(fast, JOBS, "answered") == 1
    drop = {"id", "created_at", "updated_at"}
    assert {k: v for k, v in made.json().items() if k not in drop} == {
        k: v for k, v in reference.json().items() if k not in drop
    }
    assert made.headers["content-type"] == reference.headers["content-type"] == "application/json"
    for job in (first.json(), made.json(), reference.json()):
        path = f"{JOBS}/{job['id']}"
        answered = counted(fast, STATUS, "answered")
        got, want = fast.get(path, headers=alice), slow.get(path, headers=alice)
        assert got.status_code == 200 and got.json() == want.json() == {
            **job,
            "updated_at": got.json()["updated_at"],
        }
        assert got.json()["updated_at"] == job["updated_at"]
        assert counted(fast, STATUS, "answered") == answered + 1
    # what the fast path does not answer, the app answers, the same way on both
    handed = counted(fast, JOBS, "handed_on")
    for bad in (
        {"kind": "probe", "steps": -1},
        {"kind": "nope"},
        {"kind": "prepare-data", "source": {"type": "folder", "path": "/etc"}},  # refused by the check
    ):
        got, want = fast.post(JOBS, json=bad, headers=alice), slow.post(JOBS, json=bad, headers=alice)
        assert got.status_code == want.status_code == 422 and got.json() == want.json()
    raw = b'{"kind": "probe", "steps": 2'
    got = fast.post(JOBS, content=raw, headers={**alice, "content-type": "application/json"})
    want = slow.post(JOBS, content=raw, headers={**alice, "content-type": "application/json"})
    assert got.status_code == want.status_code == 422 and got.json() == want.json()
    assert counted(fast, JOBS, "handed_on") == handed + 4
    too_big = {"kind": "probe", "note": "x" * 5000}
    assert fast.post(JOBS, json=too_big, headers=alice).status_code == 413
    missing = f"{JOBS}/{'0' * 32}"
    got, want = fast.get(missing, headers=alice), slow.get(missing, headers=alice)
    assert got.status_code == want.status_code == 404 and got.json() == want.json()
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        assert fast.get(f"{JOBS}/{made.json()['id']}", headers=headers).status_code == 401
        assert fast.post(JOBS, json={"kind": "probe"}, headers=headers).status_code == 401
    # the metrics middleware labels fast answers with the route template, like the app's
    text = fast.get("/metrics").text
    assert 'mmdlm_http_requests_total{method="GET",route="/v1/jobs/{job_id}",status="200"} 3.0' in text
    assert 'mmdlm_http_requests_total{method="POST",route="/v1/jobs",status="201"} 2.0' in text
    unmatched = [
        line
        for line in text.splitlines()
        if line.startswith("mmdlm_http_requests_total") and "<unmatched>" in line
    ]
    assert unmatched == [
        'mmdlm_http_requests_total{method="POST",route="<unmatched>",status="413"} 1.0'
    ]  # edge refusal


def test_another_users_job_is_not_answered(
    apps: tuple[TestClient, TestClient, dict[str, str]], db: Database
) -> None:
    fast, _, alice = apps
    with db.begin() as s:
        bob = {"Authorization": f"Bearer {create_token(s, 'bob')[1]}"}
    job = fast.post(JOBS, json={"kind": "probe"}, headers=alice).json()
    fast.get(f"{JOBS}/{job['id']}", headers=bob)  # caches bob's token
    response = fast.get(f"{JOBS}/{job['id']}", headers=bob)
    assert response.status_code == 404 and job["id"] not in response.text
    assert counted(fast, STATUS, "handed_on") == 2 and counted(fast, STATUS, "answered") == 0
