"""A small HTTP client of the gateway, used by the CLI, the demo, the tests and the benchmark.

Errors come back as `ApiError` with the server's message (422s name the field), or `ApiUnreachable`
when nothing answers; neither carries a traceback to the user.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

TERMINAL = frozenset({"succeeded", "failed", "cancelled"})


class ClientError(Exception):
    pass


class ApiUnreachable(ClientError):
    pass


class ApiError(ClientError):
    def __init__(self, status: int, detail: str, body: Any = None) -> None:
        super().__init__(f"HTTP {status}: {detail}")
        self.status = status
        self.detail = detail
        self.body = body


@dataclass(frozen=True)
class Event:
    id: int | None
    type: str
    data: dict[str, Any]


class Client:
    def __init__(self, base_url: str, token: str | None = None, *, timeout_s: float = 30.0) -> None:
        self.base_url = check_api_url(base_url)
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout_s)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # --- plumbing -----------------------------------------------------------------------------------

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise ApiUnreachable(
                f"cannot reach the MM-DLM API at {self.base_url}: {_oneline(exc)} "
                "(is `mmdlm serve` running there? MMDLM_API_URL sets the address)"
            ) from None
        return _decode(response)

    # --- jobs ---------------------------------------------------------------------------------------

    def submit(self, spec: dict[str, Any]) -> dict[str, Any]:
        """`spec`: `kind` + the kind's fields, optionally `priority` and `max_attempts`."""
        return self.request("POST", "/v1/jobs", json=spec)

    def job(self, job_id: str) -> dict[str, Any]:
        return self.request("GET", f"/v1/jobs/{job_id}")

    def jobs(
        self, *, status: list[str] | None = None, kind: str | None = None, limit: int = 50, offset: int = 0
    ) -> dict[str, Any]:
        params: dict[str, Any] = {"limit": limit, "offset": offset}
        if status:
            params["status"] = status
        if kind:
            params["kind"] = kind
        return self.request("GET", "/v1/jobs", params=params)

    def cancel(self, job_id: str) -> dict[str, Any]:
        return self.request("POST", f"/v1/jobs/{job_id}/cancel")

    def set_priority(self, job_id: str, priority: int) -> dict[str, Any]:
        """Reprioritize a waiting job (HTTP 409 once it runs)."""
        return self.request("PATCH", f"/v1/jobs/{job_id}", json={"priority": priority})

    def metrics(self, job_id: str, names: list[str] | None = None) -> dict[str, Any]:
        return self.request("GET", f"/v1/jobs/{job_id}/metrics", params={"name": names or []})

    def kinds(self) -> list[dict[str, Any]]:
        return self.request("GET", "/v1/kinds")

    def events(
        self, job_id: str, *, after: int = 0, follow: bool = True, reconnect: int = 5
    ) -> Iterator[Event]:
        """Stored events after `after`, then new ones until the job ends (the `end` event is yielded
        last). A dropped connection is resumed from the last event id, up to `reconnect` times."""
        last = after
        failures = 0
        while True:
            try:
                with self._http.stream(
                    "GET",
                    f"/v1/jobs/{job_id}/events",
                    params={"follow": str(follow).lower()},
                    headers={"Last-Event-ID": str(last)},
                    timeout=httpx.Timeout(self._http.timeout.connect, read=None),
                ) as response:
                    if response.status_code >= 400:
                        response.read()
                        _decode(response)
                    for event in _parse_sse(response.iter_lines()):
                        failures = 0
                        if event.id is not None:
                            last = event.id
                        yield event
                        if event.type == "end":
                            return
            except httpx.TransportError as exc:
                failures += 1
                if failures > reconnect:
                    raise ApiUnreachable(f"lost the event stream of job {job_id}: {exc}") from None
                time.sleep(min(2.0, 0.2 * failures))
                continue
            return  # the server closed the stream without `end` (not expected): stop

    def wait(self, job_id: str, timeout_s: float = 600.0, poll_s: float = 0.2) -> dict[str, Any]:
        """Poll until the job is terminal; raises TimeoutError with its last state otherwise."""
        deadline = time.monotonic() + timeout_s
        while True:
            job = self.job(job_id)
            if job["status"] in TERMINAL:
                return job
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still {job['status']} after {timeout_s:.0f}s: {job}")
            time.sleep(poll_s)

    # --- artifacts ----------------------------------------------------------------------------------

    def artifact(self, artifact_id: str) -> dict[str, Any]:
        return self.request("GET", f"/v1/artifacts/{artifact_id}")

    def artifacts(self, *, job_id: str | None = None, kind: str | None = None) -> dict[str, Any]:
        params = {k: v for k, v in (("job_id", job_id), ("kind", kind)) if v}
        return self.request("GET", "/v1/artifacts", params=params)

    def download(self, artifact_id: str, path: str | None = None) -> bytes:
        """One file of an artifact (follows the presigned redirect on S3 deployments)."""
        params = {"path": path} if path else {}
        try:
            response = self._http.get(
                f"/v1/artifacts/{artifact_id}/download", params=params, follow_redirects=False
            )
            if response.status_code in (302, 303, 307):
                # Presigned URL: authenticated by its signature, so send no bearer token to the store.
                response = httpx.get(response.headers["location"], timeout=self._http.timeout)
        except httpx.TransportError as exc:
            raise ApiUnreachable(f"download of artifact {artifact_id} failed: {exc}") from None
        if response.status_code >= 400:
            _decode(response)
        return response.content

    def download_all(self, artifact_id: str, dest: Path) -> dict[str, Any]:
        """Fetch every file of an artifact into `dest`, checking each sha256; returns the artifact."""
        artifact = self.artifact(artifact_id)
        dest = Path(dest)
        for record in artifact["files"]:
            data = self.download(
                artifact_id, record["path"] if artifact["metadata"].get("layout") != "file" else None
            )
            digest = hashlib.sha256(data).hexdigest()
            if digest != record["sha256"]:
                raise ClientError(f"{record['path']}: sha256 {digest} does not match {record['sha256']}")
            target = dest / record["path"]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        return artifact


def check_api_url(url: str) -> str:
    """`url` without its trailing slash, or a ClientError saying what a valid one looks like (an
    invalid address is a user's mistake, not a crash of the client)."""
    example = "e.g. http://127.0.0.1:8000"
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError, ValueError) as exc:
        raise ClientError(f"invalid MM-DLM API URL {url!r}: {_oneline(exc)} ({example})") from None
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise ClientError(f"the MM-DLM API URL must be http(s)://host[:port], got {url!r} ({example})")
    return url.rstrip("/")


def _oneline(exc: BaseException | str) -> str:
    """A message on one line (exceptions of httpx and of other servers may span several)."""
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def _not_the_api(response: httpx.Response) -> str:
    kind = response.headers.get("content-type", "no content type").split(";")[0]
    return f"a {kind} answer from {response.request.url}: is MMDLM_API_URL the MM-DLM API?"


def _decode(response: httpx.Response) -> Any:
    if response.status_code >= 400:
        try:
            body = response.json()
            detail = body.get("detail", body) if isinstance(body, dict) else body
        except (json.JSONDecodeError, ValueError):
            # not our JSON error: one short line, never a whole (HTML) page of another server
            body, text = None, response.text.strip()
            html = "html" in response.headers.get("content-type", "") or text.startswith("<")
            if html or not text:
                detail = f"{response.reason_phrase} ({_not_the_api(response)})"
            else:
                detail = _oneline(text.splitlines()[0][:200])
        raise ApiError(response.status_code, str(detail), body)
    if not response.content:
        return None
    try:
        return response.json()
    except (json.JSONDecodeError, ValueError):
        raise ClientError(_not_the_api(response)) from None


def _parse_sse(lines: Iterator[str]) -> Iterator[Event]:
    """Minimal text/event-stream parser: `id`, `event`, `data` fields; comments and `retry` ignored."""
    event_id: str | None = None
    event_type = "message"
    data: list[str] = []
    for raw in lines:
        line = raw.rstrip("\r")
        if line == "":
            if data:
                payload = "\n".join(data)
                try:
                    parsed = json.loads(payload)
                except json.JSONDecodeError:
                    parsed = {"text": payload}
                yield Event(
                    id=int(event_id) if event_id and event_id.isdigit() else None,
                    type=event_type,
                    data=parsed if isinstance(parsed, dict) else {"value": parsed},
                )
            event_id, event_type, data = None, "message", []
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "id":
            event_id = value
        elif name == "event":
            event_type = value
        elif name == "data":
            data.append(value)
