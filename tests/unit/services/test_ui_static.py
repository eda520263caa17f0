"""The dashboard's static files: served at /ui by the gateway, shipped in the package, offline (no CDN),
the vendored library matching its recorded checksums, and the token never put in a URL."""

from __future__ import annotations

import hashlib
import re
import tomllib
from pathlib import Path

from fastapi.testclient import TestClient

from services.api.main import create_app
from services.api.routes.ui import UI_DIR
from services.common.settings import Settings

REPO = Path(__file__).resolve().parents[3]


def _client(tmp_path: Path) -> TestClient:
    return TestClient(create_app(Settings(_env_file=None, home=tmp_path)))  # type: ignore[call-arg]


def test_ui_is_served_without_auth_and_outside_the_api_schema(tmp_path: Path) -> None:
    with _client(tmp_path) as client:
        page = client.get("/ui")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert "default-src 'self'" in page.headers["content-security-policy"]
        for src in re.findall(r'(?:src|href)="(/ui/static/[^"]+)"', page.text):
            assert client.get(src).status_code == 200, src
        js = client.get("/ui/static/js/app.js")
        assert js.headers["content-type"].startswith("text/javascript")
        assert client.get("/ui/", follow_redirects=False).headers["location"] == "/ui"
        for bad in ("../routes/ui.py", "..%2Fmain.py", "%2E%2E/main.py", "js", "nope.js"):
            answer = client.get(f"/ui/static/{bad}")
            assert answer.status_code == 404 and "detail" in answer.json(), bad
        paths = client.get("/openapi.json").json()["paths"]
        assert not [p for p in paths if p.startswith("/ui")]


def test_every_ui_file_is_package_data() -> None:
    """A non-editable install (the Docker image) carries only package data: every file must match."""
    patterns = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"][
        "services.api"
    ]
    base = UI_DIR.parent
    files = [p.relative_to(base).as_posix() for p in UI_DIR.rglob("*") if p.is_file()]
    assert "ui/index.html" in files and "ui/vendor/uPlot.iife.min.js" in files
    shipped = {p.relative_to(base).as_posix() for pattern in patterns for p in base.glob(pattern)}
    missing = sorted(set(files) - shipped)
    assert not missing, f"add to pyproject package-data: {missing}"


def test_vendored_files_match_their_recorded_checksums() -> None:
    readme = (UI_DIR / "vendor" / "README.md").read_text()
    recorded = dict(re.findall(r"\| `([\w.]+)` \|[^\n]*`([0-9a-f]{64})` \|", readme))
    vendored = {p.name for p in (UI_DIR / "vendor").iterdir() if p.name != "README.md"}
    assert set(recorded) == vendored
    for name, digest in recorded.items():
        assert hashlib.sha256((UI_DIR / "vendor" / name).read_bytes()).hexdigest() == digest, name


def test_front_end_is_offline_and_keeps_the_token_out_of_urls() -> None:
    ours = [p for p in UI_DIR.rglob("*") if p.suffix in {".js", ".html", ".css"} and "vendor" not in p.parts]
    for path in ours:
        text = path.read_text()
        assert not re.search(r"(src|href)=[\"']https?://|import [^;]*https?://|@import", text), path
        assert "new EventSource" not in text, path  # it cannot send the header: fetch() streams instead
        assert not re.search(r"[?&](token|access_token)=", text), path
        assert "localStorage" not in text, path  # the token lives in sessionStorage (this tab only)
