"""The gateway's OpenAPI declares what the routes answer: one error schema for every 4xx/5xx, examples on
every route, and the streaming routes as text/event-stream (the schemathesis run checks the answers)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from mmdlm.config.base import StrictModel, check_text
from services.api.main import create_app
from services.common.settings import Settings

ERROR_REF = "#/components/schemas/ErrorResponse"


@pytest.fixture(scope="module")
def spec(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    home: Path = tmp_path_factory.mktemp("openapi")
    return create_app(Settings(_env_file=None, home=home)).openapi()  # type: ignore[call-arg]


def operations(spec: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(m.upper(), p, op) for p, ops in spec["paths"].items() for m, op in ops.items()]


def has_example(spec: dict[str, Any], media: dict[str, Any]) -> bool:
    if "example" in media or "examples" in media or "examples" in media.get("schema", {}):
        return True
    ref = media.get("schema", {}).get("$ref")
    if ref is None:
        items = media.get("schema", {}).get("items", {})
        ref = items.get("$ref")
    return ref is not None and "examples" in spec["components"]["schemas"][ref.rsplit("/", 1)[1]]


def test_every_error_response_has_the_one_error_schema(spec: dict[str, Any]) -> None:
    assert "HTTPValidationError" not in spec["components"]["schemas"]
    for method, path, op in operations(spec):
        codes = {int(c) for c in op["responses"]}
        assert {422, 500} <= codes, (method, path)
        if path.startswith("/v1/"):
            assert {400, 401, 503} <= codes, (method, path)
        for code, response in op["responses"].items():
            if int(code) >= 400 and path != "/readyz":
                schema = response["content"]["application/json"]["schema"]
                assert schema == {"$ref": ERROR_REF}, (method, path, code)


def test_every_route_has_examples_and_streams_are_declared(spec: dict[str, Any]) -> None:
    for method, path, op in operations(spec):
        ok = next(r for c, r in op["responses"].items() if c.startswith("2"))
        media = ok.get("content", {})
        assert any(has_example(spec, m) for m in media.values()), (method, path)
        if method in ("POST", "PATCH") and "requestBody" in op:
            body = op["requestBody"]["content"]["application/json"]
            assert has_example(spec, body) or "examples" in body.get("schema", {}), (method, path)
    streams = {
        path: op["responses"]["200"]["content"]
        for _, path, op in operations(spec)
        if path in ("/v1/jobs/{job_id}/events", "/v1/generate/stream", "/v1/completions")
    }
    assert all("text/event-stream" in content for content in streams.values()), streams
    assert len(streams) == 3


@pytest.mark.parametrize(
    ("value", "words"), [("a\x00b", "NUL"), ("x\ud800", "surrogate"), ("\udfff", "surrogate")]
)
def test_the_text_policy_refuses_nul_and_lone_surrogates(value: str, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        check_text(value)
    assert check_text("naïve 🙂 text") == "naïve 🙂 text"  # valid pairs and non-ASCII pass


def test_strict_models_bound_every_value_even_inside_containers() -> None:
    class Section(StrictModel):
        names: list[str] = []
        extra: dict[str, object] = {}
        count: int = 0
        rate: float = 0.0

    for bad in ({"names": ["ok", "b\x00"]}, {"extra": {"k": [1, 2**64]}}, {"count": -(2**63) - 1},
                {"rate": float("inf")}, {"extra": {"x": float("nan")}}, {"extra": {"\x00": 1}}):  # fmt: skip
        with pytest.raises(ValueError):
            Section.model_validate(bad)
    assert Section(count=2**63 - 1, extra={"a": [1.5, "b"]}).count == 2**63 - 1


def test_nul_in_paths_and_queries_and_large_bodies_get_the_one_error_body(tmp_path: Path) -> None:
    """Answered at the edge, before auth and the database (no server needed)."""
    from fastapi.testclient import TestClient

    app = create_app(Settings(_env_file=None, home=tmp_path, max_body_bytes=2048))  # type: ignore[call-arg]
    with TestClient(app) as client:
        nul = client.get("/v1/jobs/ab%00cd/metrics")
        assert nul.status_code == 422 and nul.json()["errors"][0]["field"] == "job_id"
        query = client.get("/v1/artifacts", params={"kind": "x\x00"})
        assert query.status_code == 422 and query.json()["errors"][0]["field"] == "query.kind"
        big = b'{"kind": "probe", "log_lines": 1, "x": "' + b"a" * 4000 + b'"}'
        declared = client.post("/v1/jobs", content=big, headers={"Content-Type": "application/json"})

        def chunks():  # noqa: ANN202 - no Content-Length: counted while read
            yield from (big[i : i + 500] for i in range(0, len(big), 500))

        streamed = client.post("/v1/jobs", content=chunks(), headers={"Content-Type": "application/json"})
        for response in (declared, streamed):
            assert response.status_code == 413, response.text
            assert response.json()["errors"] == [
                {"field": "body", "message": "request body larger than 2048 bytes (MMDLM_MAX_BODY_BYTES)",
                 "type": "too_large"}
            ]  # fmt: skip
