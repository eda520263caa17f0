"""`python -m services.deploy.healthcheck ROLE`: exit 0 when this container's role is healthy, 1 when not.

The container entrypoint (`mmdlm-entrypoint healthcheck`) runs it for Docker's HEALTHCHECK and for
Kubernetes exec probes. HTTP roles are asked over loopback (`/readyz` by default, `/healthz` with
`--live`); a worker is pinged over the Celery broker by its node name, so the probe only succeeds when
the worker's main process is consuming the broker (a prefork child busy with a long job does not stop
the main process from answering). One line on stdout or stderr says why, for `docker inspect`.
"""

from __future__ import annotations

import argparse
import sys
import urllib.error
import urllib.request
from typing import Any


def probe_http(url: str, timeout_s: float) -> tuple[bool, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:  # noqa: S310 - loopback URL
            return response.status == 200, f"{url} -> {response.status}"
    except urllib.error.HTTPError as exc:
        body = exc.read(300).decode(errors="replace")
        return False, f"{url} -> {exc.code} {body}"
    except (urllib.error.URLError, OSError) as exc:
        return False, f"{url} unreachable: {exc}"


def probe_worker(settings: Any, node: str | None, timeout_s: float) -> tuple[bool, str]:
    from services.common.queue import create_celery

    app = create_celery(settings)
    try:
        replies = app.control.ping(destination=[node] if node else None, timeout=timeout_s)
    except Exception as exc:  # broker down or refusing us: unhealthy, with the reason
        return False, f"broker {type(exc).__name__}: {exc}"
    finally:
        app.close()
    names = sorted(name for reply in replies for name in reply)
    if node:
        return node in names, f"ping {node}: {'pong' if node in names else 'no reply'}"
    return bool(names), f"ping any worker: {', '.join(names) or 'no reply'}"


def _sampler_port() -> int:
    from services.sampler.settings import SamplerSettings

    return SamplerSettings().port


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.deploy.healthcheck")
    parser.add_argument("role", choices=["api", "sampler", "worker"])
    parser.add_argument("--live", action="store_true", help="HTTP roles: /healthz instead of /readyz")
    parser.add_argument("--node", help="worker: Celery node name to ping (default: any worker)")
    parser.add_argument("--port", type=int, help="HTTP roles: port (default: from the settings)")
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds")
    args = parser.parse_args(argv)

    from pydantic import ValidationError

    from services.common.settings import Settings

    try:
        settings = Settings()
        port = args.port or (settings.api_port if args.role == "api" else _sampler_port())
    except ValidationError as exc:
        error = exc.errors()[0]
        sys.stderr.write(
            f"unhealthy: invalid MMDLM_* settings: {'.'.join(map(str, error['loc']))}: {error['msg']}\n"
        )
        return 1
    if args.role == "worker":
        ok, detail = probe_worker(settings, args.node, args.timeout)
    else:
        path = "/healthz" if args.live else "/readyz"
        ok, detail = probe_http(f"http://127.0.0.1:{port}{path}", args.timeout)
    (sys.stdout if ok else sys.stderr).write(f"{'healthy' if ok else 'unhealthy'}: {args.role}: {detail}\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
