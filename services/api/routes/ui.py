"""/ui: the web dashboard, a single page of plain ES modules served as static files (no build step, no CDN).

The files carry no data and no secret, so they are served without auth; every piece of data the pages show
comes from the /v1 API with the token the user signed in with (kept in the tab's sessionStorage and sent as
`Authorization: Bearer`, never in a URL). Routes are left out of the OpenAPI schema: they are not API.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, HTTPException, status
from fastapi.responses import FileResponse, RedirectResponse

router = APIRouter(include_in_schema=False)
UI_DIR = Path(__file__).resolve().parent.parent / "ui"
"""services/api/ui: index.html, the modules, styles and vendor/ (listed in pyproject's package data)."""
MEDIA_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".md": "text/plain; charset=utf-8",
    ".LICENSE": "text/plain; charset=utf-8",
}
HEADERS = {"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"}
"""no-cache: a browser revalidates after an upgrade (the files are small; ETags make it cheap)."""
PAGE_HEADERS = {
    **HEADERS,
    # Only our own files run; the API is same-origin. Inline styles are used by uPlot's DOM.
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data: blob:; style-src 'self' 'unsafe-inline'; "
    "object-src 'none'; base-uri 'none'; frame-ancestors 'none'",
    "Referrer-Policy": "no-referrer",
}


@router.get("/ui")
def index() -> FileResponse:
    return FileResponse(UI_DIR / "index.html", media_type=MEDIA_TYPES[".html"], headers=PAGE_HEADERS)


@router.get("/ui/")
def index_slash() -> RedirectResponse:
    return RedirectResponse("/ui", status_code=status.HTTP_308_PERMANENT_REDIRECT)


@router.get("/ui/static/{path:path}")
def static(path: str) -> FileResponse:
    """A file under services/api/ui; anything resolving outside it (or a folder) is a 404."""
    target = (UI_DIR / path).resolve()
    if not target.is_relative_to(UI_DIR) or not target.is_file() or len(path) > 256:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"path: no dashboard file {path[:256]!r}")
    media_type = MEDIA_TYPES.get(target.suffix) or "application/octet-stream"
    return FileResponse(target, media_type=media_type, headers=HEADERS)
