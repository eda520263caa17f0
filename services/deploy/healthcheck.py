"""`python -m services.deploy.healthcheck ROLE`: exit 0 when this container's role is healthy, 1 when not.

The container entrypoint (`mmdlm-entrypoint healthcheck`) runs it for Docker's HEALTHCHECK and for
Kubernetes exec probes. HTTP roles are asked over loopback (`/readyz` by default, `/healthz` with
`--live`). A worker's readiness is a ping over the Celery broker by its node name, so it only succeeds
when the worker's main process is consuming the broker (a prefork child busy with a long job does not
stop the main process from answering). A worker's liveness (`--live`) looks at its main process only,
never at the network: a broker outage makes workers unready (alert on it) but must not get them
restarted in the middle of a job; a job whose worker hangs is recovered through its lease instead.
One line on stdout or stderr says why, for `docker inspect`.
"""

from __future__ import annotations

import argparse
import re
import sys
import urllib.error
import urllib.request
from pathlib import Path
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


_PID_IN_NODE = re.compile(r"^mmdlm-(\d+)@")


def worker_pid(node: str | None, pid: int | None) -> int:
    """The worker's main process: `--pid`, else the pid the entrypoint put in its default node name
    (`mmdlm-<pid>@host`: the shell that exec'd into the worker), else the first `mmdlm worker` main
    process (in a container, the only one), else 1."""
    if pid is not None:
        return pid
    match = _PID_IN_NODE.match(node or "")
    if match:
        return int(match.group(1))
    mains = worker_main_pids()
    return mains[0] if mains else 1


def worker_main_pids() -> list[int]:
    """Pids of `mmdlm worker` processes whose parent is not one (prefork children's parent is)."""
    workers: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        if any(a.endswith(b"mmdlm") for a in argv[:2]) and b"worker" in argv:
            workers[int(entry.name)] = parent
    return sorted(p for p, parent in workers.items() if parent not in workers)


def probe_worker_alive(pid: int) -> tuple[bool, str]:
    """Alive = the process exists, is a worker, and is neither stopped nor a zombie. No network."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return False, f"worker process {pid} is gone"
    state = stat.rsplit(")", 1)[1].split()[0]
    if state in ("Z", "X", "T", "t"):
        return False, f"worker process {pid} is {'stopped' if state in 'Tt' else 'dead'} (state {state})"
    if "worker" not in cmdline:
        return False, f"process {pid} is not a worker: {cmdline.strip()[:200]}"
    return True, f"worker process {pid} running (state {state})"


def _sampler_port() -> int:
    from services.sampler.settings import SamplerSettings

    return SamplerSettings().port


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.deploy.healthcheck")
    parser.add_argument("role", choices=["api", "sampler", "worker"])
    parser.add_argument(
        "--live",
        action="store_true",
        help="liveness: HTTP roles /healthz instead of /readyz; a worker: its main process runs (no broker)",
    )
    parser.add_argument("--node", help="worker: Celery node name to ping (default: any worker)")
    parser.add_argument("--pid", type=int, help="worker --live: pid of the worker's main process")
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
    if args.role == "worker" and args.live:
        ok, detail = probe_worker_alive(worker_pid(args.node, args.pid))
    elif args.role == "worker":
        ok, detail = probe_worker(settings, args.node, args.timeout)
    else:
        path = "/healthz" if args.live else "/readyz"
        ok, detail = probe_http(f"http://127.0.0.1:{port}{path}", args.timeout)
    (sys.stdout if ok else sys.stderr).write(f"{'healthy' if ok else 'unhealthy'}: {args.role}: {detail}\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
