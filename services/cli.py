"""`mmdlm`: the platform commands (serve, worker, migrate, token, submit, jobs, status, logs, cancel,
demo, ...) plus the ML commands of `mmdlm.cli:app`, mounted lazily so that a missing or broken ML CLI
never stops the platform commands from working.

Client commands talk to the API over HTTP (`MMDLM_API_URL`, `MMDLM_TOKEN`). Every error is printed as
one line on stderr with a non-zero exit code, never as a traceback.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

app = typer.Typer(
    name="mmdlm",
    help="Train, sample and evaluate diffusion language models as tracked jobs.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
token_app = typer.Typer(help="API tokens.", no_args_is_help=True)
artifact_app = typer.Typer(help="Artifacts (datasets, models, samples).", no_args_is_help=True)
app.add_typer(token_app, name="token")
app.add_typer(artifact_app, name="artifact")

console = Console()
err = Console(stderr=True)


def fail(message: str, code: int = 1) -> NoReturn:
    """`error: message` on stderr, never wrapped and never read as markup (messages hold `[...]`)."""
    err.print(Text.assemble(("error:", "red"), " ", message), highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def _settings() -> Any:
    from pydantic import ValidationError

    from services.common.settings import Settings

    try:
        return Settings()
    except ValidationError as exc:
        fail(f"invalid MMDLM_* settings: {_problems(exc)}")


def _line(exc: BaseException) -> str:
    from services.common.preflight import oneline

    return oneline(exc)


def _problems(exc: Any) -> str:
    return "; ".join(f"{'.'.join(map(str, e['loc'])) or 'settings'}: {e['msg']}" for e in exc.errors())


def _sigterm_exits_0() -> None:
    """uvicorn re-raises the SIGTERM it shut down on, so the process ends killed by it (exit 143 under tini, a
    failure to supervisors); a stop that was asked for exits 0 instead, also before uvicorn has started."""
    import signal

    def stop(*_: object) -> NoReturn:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)


def _logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)


def _client() -> Any:
    from services.common.client import Client, ClientError

    settings = _settings()
    token = settings.token.get_secret_value() if settings.token else None
    if not token:
        fail("no API token: set MMDLM_TOKEN (create one with `mmdlm token create --user NAME`)")
    try:
        return Client(settings.api_url, token, timeout_s=settings.http_timeout_s)
    except ClientError as exc:
        fail(f"MMDLM_API_URL: {exc}")


def _call(fn: Any, *args: Any, **kwargs: Any) -> Any:
    from services.common.client import ApiError, ClientError

    try:
        return fn(*args, **kwargs)
    except ApiError as exc:
        hint = " (check MMDLM_TOKEN; `mmdlm token create --user NAME` makes one)" if exc.status == 401 else ""
        fail(f"{exc}{hint}")
    except ClientError as exc:
        fail(str(exc))


def _preflight(fn: Any, *args: Any, prefix: str = "", **kwargs: Any) -> Any:
    """Run a start-up check; its PreflightError becomes the one-line exit."""
    from services.common.preflight import PreflightError

    try:
        return fn(*args, **kwargs)
    except PreflightError as exc:
        fail(f"{prefix}{exc}")


# --- servers -------------------------------------------------------------------------------------------------


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="default MMDLM_API_HOST")] = None,
    port: Annotated[int | None, typer.Option(help="default MMDLM_API_PORT")] = None,
    workers: Annotated[int | None, typer.Option(help="uvicorn worker processes")] = None,
) -> None:
    """Run the REST gateway (uvicorn)."""
    import uvicorn

    from services.common import preflight

    settings = _settings()
    _logging(settings.log_level)
    # The gateway starts while a dependency is down (503s, /readyz says which); a URL that can never
    # work stops it here, in one line.
    _preflight(preflight.check_config, settings, broker=True)
    if settings.should_auto_migrate:
        _migrate(settings)
    _sigterm_exits_0()
    uvicorn.run(
        "services.api.main:create_app",
        factory=True,
        host=host or settings.api_host,
        port=settings.api_port if port is None else port,
        workers=workers or settings.api_workers,
        log_level=settings.log_level.lower(),
        access_log=False,
    )


@app.command("serve-sampler")
def serve_sampler(
    host: Annotated[str | None, typer.Option(help="default MMDLM_SAMPLER_HOST")] = None,
    port: Annotated[int | None, typer.Option(help="default MMDLM_SAMPLER_PORT")] = None,
) -> None:
    """Run the sampler service: generation, OpenAI-compatible completions, embeddings (one process)."""
    import uvicorn
    from pydantic import ValidationError

    from services.common import preflight
    from services.sampler.settings import SamplerSettings

    settings = _settings()
    _logging(settings.log_level)
    _preflight(preflight.check_config, settings, broker=False)
    try:
        config = SamplerSettings()
    except ValidationError as exc:
        fail(f"invalid MMDLM_SAMPLER_* settings: {_problems(exc)}")
    from services.sampler.app import create_app

    try:  # built here, not by uvicorn's factory call, so that a refusal is one line, not a traceback
        application = create_app(settings, config)
    except ValueError as exc:  # e.g. MMDLM_SAMPLER_DEVICE=cuda on a machine without CUDA
        fail(f"sampler not started: {exc}")
    _sigterm_exits_0()
    uvicorn.run(
        application,
        host=host or config.host,
        port=config.port if port is None else port,
        workers=1,  # the model cache and the request batcher live in this one process
        log_level=settings.log_level.lower(),
        access_log=False,
    )


@app.command()
def worker(
    queues: Annotated[str, typer.Option(help="comma-separated: encode,train,sample")] = "encode,train,sample",
    concurrency: Annotated[int, typer.Option(min=1, help="jobs run at once (one process each)")] = 1,
    pool: Annotated[str, typer.Option(help="prefork (default) or solo")] = "prefork",
    hostname: Annotated[str | None, typer.Option(help="Celery node name")] = None,
) -> None:
    """Run a worker that claims and runs jobs of the given queues (and sweeps lost jobs)."""
    from services.common.preflight import PreflightError
    from services.common.worker import run_worker

    settings = _settings()
    _logging(settings.log_level)
    names = [q.strip() for q in queues.split(",") if q.strip()]
    try:
        run_worker(
            settings,
            names,
            concurrency=concurrency,
            pool=pool,
            hostname=hostname,
            loglevel=settings.log_level,
        )
    except (ValueError, PreflightError) as exc:  # bad queues; broker/database/store unusable at start
        fail(f"worker not started: {exc}")


@app.command()
def migrate() -> None:
    """Create or upgrade the database schema (alembic upgrade head)."""
    from services.common.migrate import current_revision

    settings = _settings()
    _migrate(settings)
    console.print(f"database at revision {current_revision(settings.database_url)}")


def _migrate(settings: Any) -> None:
    """`alembic upgrade head` after waiting (MMDLM_STARTUP_WAIT_S) for the database; one line if not."""
    from services.common import preflight
    from services.common.migrate import upgrade

    if settings.startup_checks:
        _preflight(
            preflight.require, settings, [preflight.database_check(settings, schema=False)],
            prefix="migration failed: ",
        )  # fmt: skip
    try:
        upgrade(settings.database_url)
    except Exception as exc:  # noqa: BLE001 - any failure of the upgrade is reported, in one line
        fail(f"migration failed: {preflight.oneline(exc)}")


@app.command()
def sweep(
    loop: Annotated[bool, typer.Option(help="keep sweeping every MMDLM_SWEEP_INTERVAL_S")] = False,
) -> None:
    """Requeue jobs whose worker vanished and publish due wake-ups (workers also do this themselves)."""
    from services.common.db import Database
    from services.common.lifecycle import sweep as run_sweep
    from services.common.queue import create_celery, publish

    settings = _settings()
    _logging(settings.log_level)
    db = Database(settings.database_url)
    celery = create_celery(settings)
    while True:
        result = run_sweep(
            db,
            lambda job_id, queue: publish(celery, job_id, queue),
            redispatch_after_s=settings.redispatch_after_s,
        )
        console.print(
            f"requeued {result.requeued}, failed {result.failed}, cancelled {result.cancelled}, "
            f"dispatched {result.dispatched}"
        )
        if not loop:
            return
        time.sleep(settings.sweep_interval_s)


@app.command("config")
def show_config() -> None:
    """Print the effective settings (secrets masked)."""
    console.print_json(json.dumps(_settings().redacted()))


# --- tokens --------------------------------------------------------------------------------------------------


@token_app.command("create")
def token_create(
    user: Annotated[str, typer.Option(help="user name (created if new)")],
    name: Annotated[str, typer.Option(help="label of this token")] = "",
    ttl_days: Annotated[float | None, typer.Option(help="expire after this many days")] = None,
) -> None:
    """Create an API token (printed once on stdout; only its hash is stored)."""
    from services.common.auth import create_token
    from services.common.db import Database

    settings = _settings()
    if settings.should_auto_migrate:
        _migrate(settings)
    db = Database(settings.database_url)
    try:
        with db.begin() as session:
            created_user, token = create_token(session, user, token_name=name, ttl_days=ttl_days)
            user_name = created_user.name
    except ValueError as exc:
        fail(str(exc))
    except Exception as exc:  # noqa: BLE001 - database unreachable or not migrated: one line
        fail(
            f"cannot create the token (is the database reachable and migrated? `mmdlm migrate`): {_line(exc)}"
        )
    err.print(f"token for user {user_name!r} (shown once):", highlight=False)
    typer.echo(token)


@token_app.command("revoke")
def token_revoke(user: Annotated[str, typer.Option(help="revoke every token of this user")]) -> None:
    """Revoke every token of a user. API processes that cached one refuse it within
    MMDLM_TOKEN_CACHE_S (0 = at once)."""
    from services.common.auth import revoke_tokens
    from services.common.db import Database

    settings = _settings()
    db = Database(settings.database_url)
    try:
        with db.begin() as session:
            count = revoke_tokens(session, user)
    except Exception as exc:  # noqa: BLE001 - database unreachable or not migrated: one line
        fail(f"cannot revoke (is the database reachable and migrated? `mmdlm migrate`): {_line(exc)}")
    if count is None:
        fail(f"no user named {user!r}")
    console.print(f"revoked {count} token(s) of {user!r}", highlight=False)
    if count and settings.token_cache_s > 0:
        console.print(
            f"API processes refuse them within {settings.token_cache_s:g}s (MMDLM_TOKEN_CACHE_S)",
            highlight=False,
        )


# --- jobs ----------------------------------------------------------------------------------------------------


@app.command()
def submit(
    file: Annotated[Path, typer.Argument(help="YAML/JSON: kind + spec fields (+ priority, max_attempts)")],
    set_: Annotated[list[str] | None, typer.Option("--set", help="override a field: a.b=value")] = None,
    priority: Annotated[int | None, typer.Option(help="higher runs first in its queue")] = None,
    max_attempts: Annotated[int | None, typer.Option(help="attempts before the job fails")] = None,
    follow: Annotated[
        bool, typer.Option("--follow/--no-follow", help="stream progress until it ends")
    ] = False,
) -> None:
    """Submit a job described by a YAML file; prints its id."""
    import yaml

    from mmdlm.cli.common import yaml_problem
    from mmdlm.config.base import apply_overrides, load_mapping

    try:
        body = load_mapping(file)
    except yaml.YAMLError as exc:
        fail(f"{file} is not valid YAML: {yaml_problem(exc)}")
    except json.JSONDecodeError as exc:
        fail(f"{file} is not valid JSON: {exc}")
    except (OSError, ValueError) as exc:  # missing/unreadable file, not text, not a mapping
        fail(f"{file}: {exc}" if str(file) not in str(exc) else str(exc))
    for item in set_ or []:
        try:
            body = apply_overrides(body, [item])
        except yaml.YAMLError as exc:
            fail(f"--set {item!r}: the value is not valid YAML: {yaml_problem(exc)}")
        except ValueError as exc:
            fail(f"--set: {exc}")
    if priority is not None:
        body["priority"] = priority
    if max_attempts is not None:
        body["max_attempts"] = max_attempts
    if "kind" not in body:
        fail(f"{file}: missing `kind` (e.g. kind: prepare-data)")
    client = _client()
    job = _call(client.submit, body)
    typer.echo(job["id"])
    if follow:
        _follow(client, job["id"])


@app.command()
def jobs(
    status: Annotated[list[str] | None, typer.Option(help="filter by status (repeatable)")] = None,
    kind: Annotated[str | None, typer.Option(help="filter by kind")] = None,
    limit: Annotated[int, typer.Option(min=1, max=500)] = 20,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """List your jobs, newest first."""
    page = _call(_client().jobs, status=status, kind=kind, limit=limit)
    if as_json:
        console.print_json(json.dumps(page))
        return
    table = Table("id", "kind", "status", "progress", "attempt", "created", box=None)
    for job in page["data"]:
        table.add_row(
            job["id"],
            job["kind"],
            job["status"],
            _progress_text(job),
            f"{job['attempt']}/{job['max_attempts']}",
            job["created_at"][:19],
        )
    console.print(table)
    console.print(f"{len(page['data'])} of {page['count']} jobs")


@app.command()
def status(
    job_id: Annotated[str, typer.Argument()], as_json: Annotated[bool, typer.Option("--json")] = False
) -> None:
    """Show one job."""
    job = _call(_client().job, job_id)
    if as_json:
        console.print_json(json.dumps(job))
        return
    console.print(f"[bold]{job['id']}[/bold]  {job['kind']}  [bold]{job['status']}[/bold]", highlight=False)
    console.print(
        f"attempt {job['attempt']}/{job['max_attempts']}, priority {job['priority']}, queue {job['queue']}"
    )
    console.print(f"progress: {_progress_text(job)}", highlight=False)
    if job["error"]:
        console.print(f"error: {job['error']}", style="red", markup=False)
    for artifact_id in job["artifacts"]:
        console.print(f"artifact: {artifact_id}")


@app.command()
def logs(
    job_id: Annotated[str, typer.Argument()],
    follow: Annotated[bool, typer.Option("--follow", "-f", help="keep streaming until the job ends")] = False,
) -> None:
    """Print a job's log and state changes; with --follow, a progress bar until it ends.

    With --follow the last line is `job <id> <status>` and the exit status says how it ended:
    0 succeeded, 1 failed, 3 cancelled (2 is a usage error)."""
    _follow(_client(), job_id, follow=follow)


FOLLOW_EXIT = {"succeeded": 0, "failed": 1, "cancelled": 3}
"""Exit status of `logs --follow` / `submit --follow` by the job's final status."""


def _follow(client: Any, job_id: str, follow: bool = True) -> None:
    from services.common.follow import follow_job

    job = _call(follow_job, client, job_id, console, follow=follow)
    if not follow:
        return
    console.print(
        f"job {job_id} {job['status']}",
        style="bold green" if job["status"] == "succeeded" else "bold red",
        markup=False,
        soft_wrap=True,
    )
    code = FOLLOW_EXIT.get(job["status"], 1)
    if code:
        raise typer.Exit(code)


@app.command()
def cancel(job_id: Annotated[str, typer.Argument()]) -> None:
    """Cancel a job (at once if it waits; within seconds if it runs)."""
    job = _call(_client().cancel, job_id)
    state = "cancelled" if job["status"] == "cancelled" else "cancel requested (it stops within seconds)"
    console.print(f"job {job_id}: {state}")


@app.command()
def kinds() -> None:
    """The job kinds this deployment accepts."""
    for kind in _call(_client().kinds):
        console.print(f"[bold]{kind['name']}[/bold] (queue {kind['queue']}): {kind['description']}")


@artifact_app.command("show")
def artifact_show(artifact_id: Annotated[str, typer.Argument()]) -> None:
    console.print_json(json.dumps(_call(_client().artifact, artifact_id)))


@artifact_app.command("download")
def artifact_download(
    artifact_id: Annotated[str, typer.Argument()], dest: Annotated[Path, typer.Argument()]
) -> None:
    """Download every file of an artifact into DEST, verifying each sha256."""
    artifact = _call(_client().download_all, artifact_id, dest)
    console.print(f"{len(artifact['files'])} files, {artifact['bytes']} bytes -> {dest}")


@app.command()
def demo(
    quick: Annotated[
        bool, typer.Option("--quick", help="every step with a few steps and rows (MMDLM_DEMO_SCALE=smoke)")
    ] = False,
    keep: Annotated[
        bool, typer.Option("--keep", help="leave the stack up afterwards (dashboard at /ui) until Ctrl-C")
    ] = False,
) -> None:
    """Start the embedded API and a worker, run the demo jobs, print what they produced."""
    from services.demo import run_demo

    raise typer.Exit(run_demo(console, scale="smoke" if quick else None, keep=keep))


def _progress_text(job: dict[str, Any]) -> str:
    p = job["progress"]
    if p["step"] is None:
        return "-"
    total = f"/{p['total']}" if p["total"] else ""
    return f"{p['step']}{total} {p['message'] or ''}".strip()


# --- entry point ---------------------------------------------------------------------------------------------

PLATFORM_COMMANDS = {
    "serve", "serve-sampler", "worker", "migrate", "sweep", "config", "token", "submit", "jobs", "status", "logs", "cancel",
    "kinds", "artifact", "demo",
}  # fmt: skip


def build_cli(argv: list[str]) -> Any:
    """The click group: platform commands, plus the ML commands of `mmdlm.cli:app` when the requested
    command is not a platform one (or help is asked). Platform names win a clash."""
    import typer.main

    group = typer.main.get_command(app)
    first = next((a for a in argv if not a.startswith("-")), None)
    if first in PLATFORM_COMMANDS:
        return group
    try:
        from mmdlm.cli import app as ml_app  # lazy on purpose: may import torch

        ml = typer.main.get_command(ml_app)
    except Exception as exc:  # a broken ML CLI must not take the platform commands down
        if first is not None:
            fail(f"the ML commands are unavailable ({type(exc).__name__}: {exc})")
        return group
    commands = getattr(ml, "commands", None) or {ml.name or "ml": ml}
    for name, command in commands.items():
        if name not in group.commands:  # type: ignore[attr-defined]
            group.add_command(command, name)  # type: ignore[attr-defined]
    return group


def main() -> None:
    argv = sys.argv[1:]
    try:
        cli = build_cli(argv)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    try:
        cli.main(args=argv, prog_name="mmdlm", standalone_mode=True)
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)
    except Exception as exc:
        if not _environment_error(exc):
            raise  # a bug: its traceback is what a report needs
        try:
            fail(f"{type(exc).__name__}: {_line(exc)}")
        except typer.Exit as done:
            sys.exit(done.exit_code)


_ENVIRONMENT_MODULES = ("sqlalchemy.", "psycopg", "sqlite3", "kombu.", "redis.", "minio.", "urllib3.")


def _environment_error(exc: Exception) -> bool:
    """Failures of the machine or the services around it (a database, broker or store that went away
    mid-command, a full disk, a folder without permission): one line, not a traceback, whichever
    command met them."""
    from services.common.client import ClientError
    from services.common.preflight import PreflightError
    from services.common.store import StoreError

    if isinstance(exc, OSError | ClientError | PreflightError | StoreError):
        return True
    return type(exc).__module__.startswith(_ENVIRONMENT_MODULES)


if __name__ == "__main__":
    main()
