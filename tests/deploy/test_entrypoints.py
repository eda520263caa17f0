"""Each container role, started by the real `docker/entrypoint.sh` (the very command line a container
runs, outside Docker) against this machine's servers: a fresh PostgreSQL database, a Redis db number and
key prefix of its own, a SeaweedFS S3 bucket. Each must become ready (`/readyz` 200, the worker
answering a Celery ping on its own queue, migrate exiting 0), pass the container healthcheck, and stop
cleanly on SIGTERM, as `docker stop` and Kubernetes send it."""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from services.common.settings import Settings
from tests.deploy.support import ENTRYPOINT, REPO, clean_env
from tests.utils.servers import (
    S3Server,
    free_port,
    postgres_available,
    postgres_database,
    redis_available,
    redis_namespace,
    stop_process_group,
    tail,
)

pytestmark = [pytest.mark.integration, pytest.mark.postgres, pytest.mark.redis]

READY_TIMEOUT_S = 90.0


def _require(available: bool, what: str) -> None:
    if not available:
        if os.environ.get("CI"):
            pytest.fail(f"{what} is not running (CI must start it: see .ci/run)")
        pytest.skip(f"{what} is not running on this machine")


@dataclass
class Stack:
    """The MMDLM_* settings of a container in the compose stack, pointed at this machine's servers."""

    env: dict[str, str]
    workdir: Path

    def role_env(self, name: str, **extra: str) -> dict[str, str]:
        home = self.workdir / name
        home.mkdir(parents=True, exist_ok=True)
        return clean_env(
            **self.env,
            MMDLM_HOME=str(home),
            ENTRYPOINT_STATE_FILE=str(home / "entrypoint.state"),
            HF_HUB_OFFLINE="1",
            TRANSFORMERS_OFFLINE="1",
            TOKENIZERS_PARALLELISM="false",
            OMP_NUM_THREADS="1",
            **extra,
        )


def entrypoint(
    args: list[str], env: dict[str, str], cwd: Path, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(ENTRYPOINT), *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(scope="module")
def stack(s3_server: S3Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    _require(postgres_available(), "PostgreSQL (127.0.0.1:5432)")
    _require(redis_available(), "Redis (127.0.0.1:6379)")
    workdir = tmp_path_factory.mktemp("entrypoints")
    with postgres_database("mmdlm_deploy") as db_url, redis_namespace() as (broker_url, prefix):
        env = {
            "MMDLM_DATABASE_URL": db_url,
            "MMDLM_BROKER_URL": broker_url,
            "MMDLM_BROKER_KEY_PREFIX": prefix,
            "MMDLM_AUTO_MIGRATE": "false",
            **s3_server.env(bucket=f"mmdlm-deploy-{secrets.token_hex(4)}"),
        }
        yield Stack(env, workdir)


@pytest.fixture(scope="module")
def migrated(stack: Stack) -> Stack:
    """`migrate` with the database URL given as a secret file (MMDLM_DATABASE_URL_FILE), as in a pod that
    mounts its Secret."""
    env = stack.role_env("migrate")
    secret = stack.workdir / "database-url"
    secret.write_text(env.pop("MMDLM_DATABASE_URL") + "\n")
    env["MMDLM_DATABASE_URL_FILE"] = str(secret)
    result = entrypoint(["migrate"], env, stack.workdir, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "database at revision" in result.stdout
    return stack


class Role:
    """One long-running role process started through the entrypoint, in its own process group."""

    def __init__(self, args: list[str], env: dict[str, str], cwd: Path) -> None:
        self.log = cwd / f"{args[0]}-{secrets.token_hex(3)}.log"
        self.env, self.cwd = env, cwd
        with self.log.open("wb") as handle:
            self.proc = subprocess.Popen(
                [str(ENTRYPOINT), *args],
                env=env,
                cwd=cwd,
                stdout=handle,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def alive(self) -> None:
        if self.proc.poll() is not None:
            pytest.fail(f"the role exited with {self.proc.returncode}:\n{tail(self.log)}")

    def healthcheck(self, *args: str) -> subprocess.CompletedProcess[str]:
        return entrypoint(["healthcheck", *args], self.env, self.cwd)

    def stop(self, timeout_s: float = 30.0) -> int:
        """SIGTERM, as `docker stop` sends it; the exit code once the process has ended."""
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            pytest.fail(f"no exit {timeout_s}s after SIGTERM:\n{tail(self.log)}")

    def close(self) -> None:
        stop_process_group(self.proc, timeout_s=5)


def wait_ready(url: str, role: Role) -> dict[str, object]:
    deadline = time.monotonic() + READY_TIMEOUT_S
    last = ""
    while time.monotonic() < deadline:
        role.alive()
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            last = f"{exc.code} {exc.read(300)!r}"
        except OSError as exc:
            last = str(exc)
        time.sleep(0.5)
    pytest.fail(f"{url} not ready after {READY_TIMEOUT_S}s ({last}):\n{tail(role.log)}")


def wait_healthy(role: Role, *args: str, log_line: str = "") -> subprocess.CompletedProcess[str]:
    """Run the healthcheck until it passes; with `log_line`, only once the role has logged it (each
    probe is a fresh Python process, too slow to poll with while the role starts)."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    while log_line and log_line not in role.log.read_text(errors="replace"):
        role.alive()
        if time.monotonic() > deadline:
            pytest.fail(f"no {log_line!r} in the log after {READY_TIMEOUT_S}s:\n{tail(role.log)}")
        time.sleep(0.2)
    result = None
    while time.monotonic() < deadline:
        role.alive()
        result = role.healthcheck(*args)
        if result.returncode == 0:
            return result
        time.sleep(0.5)
    pytest.fail(f"healthcheck never passed ({result and result.stderr}):\n{tail(role.log)}")


def assert_graceful_http_stop(role: Role) -> None:
    """uvicorn finishes its shutdown; the re-raised SIGTERM then exits 0 (not killed by it: 143 under tini)."""
    code = role.stop()
    log = role.log.read_text(errors="replace")
    assert code == 0, log
    assert "Application shutdown complete" in log, log


def test_migrate_exits_0_and_is_idempotent(migrated: Stack) -> None:
    from sqlalchemy import create_engine, inspect

    engine = create_engine(migrated.env["MMDLM_DATABASE_URL"])
    try:
        assert {"alembic_version", "jobs"} <= set(inspect(engine).get_table_names())
    finally:
        engine.dispose()
    again = entrypoint(["migrate"], migrated.role_env("migrate-again"), migrated.workdir, timeout=120)
    assert again.returncode == 0, again.stderr


def test_api_becomes_ready_and_stops_cleanly(migrated: Stack) -> None:
    port = free_port()
    env = migrated.role_env("api", MMDLM_API_HOST="127.0.0.1", MMDLM_API_PORT=str(port))
    # the store secret as a file too: both ways of passing a secret reach the process
    secret = migrated.workdir / "s3-secret"
    secret.write_text(env.pop("MMDLM_S3_SECRET_KEY"))
    env["MMDLM_S3_SECRET_KEY_FILE"] = str(secret)
    role = Role(["api"], env, migrated.workdir)
    try:
        body = wait_ready(f"http://127.0.0.1:{port}/readyz", role)
        assert body["status"] == "ok" and all(c["ok"] for c in body["checks"].values()), body
        assert role.healthcheck().returncode == 0  # the Docker HEALTHCHECK form: role from the state file
        live = role.healthcheck("api", "--live")
        assert live.returncode == 0 and "healthz -> 200" in live.stdout
        assert_graceful_http_stop(role)
    finally:
        role.close()


@pytest.mark.parametrize("queue", ["encode", "train", "sample"])
def test_worker_becomes_ready_on_its_queue_and_stops_cleanly(migrated: Stack, queue: str) -> None:
    env = migrated.role_env(f"worker-{queue}")
    role = Role(["worker", "--queues", queue], env, migrated.workdir)
    try:
        result = wait_healthy(role, log_line=" ready.")  # Celery's "<node> ready."
        assert "pong" in result.stdout
        node = Path(env["ENTRYPOINT_STATE_FILE"]).read_text().split()[1]
        settings = Settings(
            home=Path(env["MMDLM_HOME"]),
            broker_url=env["MMDLM_BROKER_URL"],
            broker_key_prefix=env["MMDLM_BROKER_KEY_PREFIX"],
        )
        from services.common.queue import create_celery

        app = create_celery(settings)
        try:
            queues = app.control.inspect(destination=[node], timeout=5).active_queues() or {}
        finally:
            app.close()
        assert [q["name"] for q in queues.get(node, [])] == [queue], queues
        assert role.stop(timeout_s=60) == 0, tail(role.log)
    finally:
        role.close()


def test_sampler_becomes_ready_and_stops_cleanly(migrated: Stack) -> None:
    if not (REPO / "services" / "sampler").is_dir():
        pytest.skip("services/sampler does not exist yet: the sampler role is checked once it lands")
    port = free_port()
    env = migrated.role_env(
        "sampler",
        MMDLM_SAMPLER_HOST="127.0.0.1",
        MMDLM_SAMPLER_PORT=str(port),
        MMDLM_SAMPLER_DEVICE="cpu",
        MMDLM_SAMPLER_THREADS="1",
    )
    role = Role(["sampler"], env, migrated.workdir)
    try:
        wait_ready(f"http://127.0.0.1:{port}/readyz", role)
        assert role.healthcheck().returncode == 0
        assert role.healthcheck("sampler", "--live").returncode == 0
        assert_graceful_http_stop(role)
    finally:
        role.close()


# --- what the entrypoint and the probe refuse ----------------------------------------------------------------


def test_entrypoint_refusals(stack: Stack, tmp_path: Path) -> None:
    env = stack.role_env("refusals")
    no_queues = entrypoint(["worker"], env, tmp_path)
    assert no_queues.returncode == 64 and "needs --queues" in no_queues.stderr
    both = entrypoint(["migrate"], {**env, "MMDLM_DATABASE_URL_FILE": str(tmp_path / "x")}, tmp_path)
    assert both.returncode == 64 and "both MMDLM_DATABASE_URL and MMDLM_DATABASE_URL_FILE" in both.stderr
    env_missing = {k: v for k, v in env.items() if k != "MMDLM_S3_SECRET_KEY"}
    unreadable = entrypoint(
        ["migrate"], {**env_missing, "MMDLM_S3_SECRET_KEY_FILE": str(tmp_path / "absent")}, tmp_path
    )
    assert unreadable.returncode == 64 and "not a readable file" in unreadable.stderr
    no_state = entrypoint(["healthcheck"], env, tmp_path)
    assert no_state.returncode == 64 and "no role given" in no_state.stderr


def test_migrate_fails_with_one_line_on_a_missing_database(stack: Stack, tmp_path: Path) -> None:
    url = stack.env["MMDLM_DATABASE_URL"].rsplit("/", 1)[0] + "/mmdlm_absent_" + secrets.token_hex(4)
    result = entrypoint(["migrate"], {**stack.role_env("bad-migrate"), "MMDLM_DATABASE_URL": url}, tmp_path)
    assert result.returncode != 0
    assert "migration failed" in result.stderr and "Traceback" not in result.stderr


def test_healthcheck_reports_unhealthy(stack: Stack, tmp_path: Path) -> None:
    env = stack.role_env("probes")
    silent = entrypoint(
        ["healthcheck", "worker", "--node", "nobody@nowhere", "--timeout", "1"], env, tmp_path
    )
    assert silent.returncode == 1 and "no reply" in silent.stderr
    closed = entrypoint(["healthcheck", "api", "--port", str(free_port())], env, tmp_path)
    assert closed.returncode == 1 and "unreachable" in closed.stderr
    bad = entrypoint(["healthcheck", "api"], {**env, "MMDLM_API_PORT": "not-a-port"}, tmp_path)
    assert bad.returncode == 1 and "api_port" in bad.stderr
