"""The platform harness: a real API (uvicorn subprocess) and real Celery worker subprocesses over a
chosen backend, for integration tests of any job kind.

    with Platform(backend, tmp_path, workers=[["encode"]]) as p:
        job = p.client.submit({"kind": "probe", "steps": 3})
        assert p.wait(job["id"])["status"] == "succeeded"

Backends (see `Backend`): `embedded` = SQLite + sqla+sqlite broker + local store (the default of the
product); `production` = PostgreSQL + Redis + S3 (SeaweedFS). Every platform gets a fresh database,
broker namespace and bucket, so platforms never see each other's jobs.

Lifecycle timings are shortened for tests (lease 4 s, heartbeat 0.25 s, sweep 0.5 s, retry backoff
0.2 s, cancel grace 3 s, re-dispatch of unclaimed jobs 10 s); pass `env={...}` to change any MMDLM_* setting of every process.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from services.common.auth import create_token
from services.common.client import TERMINAL, Client
from services.common.db import Database
from services.common.kinds import QUEUES, load_kinds
from services.common.migrate import upgrade
from services.common.settings import Settings
from services.common.store import ObjectStore, open_store
from tests.utils.servers import free_port, stop_process_group, tail

REPO = Path(__file__).resolve().parents[2]

FAST_LIFECYCLE = {
    "MMDLM_LEASE_TTL_S": "4",
    "MMDLM_HEARTBEAT_INTERVAL_S": "0.25",
    "MMDLM_SWEEP_INTERVAL_S": "0.5",
    "MMDLM_REDISPATCH_AFTER_S": "10",
    "MMDLM_RETRY_BACKOFF_S": "0.2",
    "MMDLM_RETRY_BACKOFF_MAX_S": "2",
    "MMDLM_CANCEL_GRACE_S": "3",
    "MMDLM_BROKER_VISIBILITY_TIMEOUT_S": "60",
    "MMDLM_MAX_BODY_BYTES": "65536",
    "MMDLM_TOKEN_CACHE_S": "0",
    "MMDLM_LOG_LEVEL": "INFO",
}


@dataclass(frozen=True)
class Backend:
    """The MMDLM_* settings that select a database, broker and store."""

    name: str
    env: dict[str, str]

    def settings(self, extra: dict[str, str] | None = None) -> Settings:
        return settings_from_env({**self.env, **(extra or {})})


def settings_from_env(env: dict[str, str]) -> Settings:
    """Settings built from an MMDLM_* mapping only (the test process's own environment is ignored)."""
    values = {k[len("MMDLM_") :].lower(): v for k, v in env.items() if k.startswith("MMDLM_")}
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


@dataclass
class Worker:
    proc: subprocess.Popen[bytes]
    queues: list[str]
    name: str
    log: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


@dataclass
class Platform:
    backend: Backend
    workdir: Path
    workers_queues: Sequence[Sequence[str]] = (QUEUES,)
    env: dict[str, str] = field(default_factory=dict)
    user: str = "alice"

    def __post_init__(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.base_env = {
            **FAST_LIFECYCLE,
            "MMDLM_HOME": str(self.workdir / "home"),
            "MMDLM_KIND_MODULES": "tests.utils.kinds",
            **self.backend.env,
            **self.env,
        }
        self.settings = settings_from_env(self.base_env)
        self.db = Database(self.settings.database_url, pool_size=2)
        self.api: subprocess.Popen[bytes] | None = None
        self.workers: list[Worker] = []
        self._started = 0
        self._clients: list[Client] = []
        self.token = ""
        self.client: Client | None = None  # type: ignore[assignment]

    # --- lifecycle -------------------------------------------------------------------------------------

    def __enter__(self) -> Platform:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    def start(self) -> None:
        load_kinds(["tests.utils.kinds"])
        upgrade(self.settings.database_url)
        self.token = self.create_token(self.user)
        self.client = self.new_client(self.token)
        self.api = self._spawn(
            ["serve", "--host", "127.0.0.1", "--port", str(self.port)], self.workdir / "api.log", {}
        )
        for queues in self.workers_queues:
            self.add_worker(queues, wait_ready=False)
        self._wait_api()
        for worker in self.workers:
            self.wait_worker_ready(worker)

    def stop(self) -> None:
        for client in self._clients:
            client.close()
        procs = [w.proc for w in self.workers] + ([self.api] if self.api is not None else [])
        for proc in procs:  # all at once: warm shutdowns overlap instead of adding up
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            stop_process_group(proc, timeout_s=15)
        self.db.engine.dispose()

    # --- processes -------------------------------------------------------------------------------------

    def process_env(self, extra: dict[str, str]) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MMDLM_")}
        env.update(self.base_env)
        env.update(extra)
        env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
        return env

    def _spawn(self, args: list[str], log: Path, extra_env: dict[str, str]) -> subprocess.Popen[bytes]:
        with log.open("ab") as handle:
            return subprocess.Popen(
                [sys.executable, "-m", "services.cli", *args], stdout=handle, stderr=subprocess.STDOUT,
                env=self.process_env(extra_env), cwd=REPO, start_new_session=True,
            )  # fmt: skip

    def add_worker(
        self,
        queues: Sequence[str],
        *,
        env: dict[str, str] | None = None,
        concurrency: int = 1,
        wait_ready: bool = True,
    ) -> Worker:
        """Start another worker process consuming `queues`; `env` overrides settings for it only."""
        self._started += 1
        name = f"w{self._started}-{secrets.token_hex(3)}"
        log = self.workdir / f"worker-{name}.log"
        proc = self._spawn(
            ["worker", "--queues", ",".join(queues), "--concurrency", str(concurrency), "--hostname", f"{name}@test"],
            log, env or {},
        )  # fmt: skip
        worker = Worker(proc=proc, queues=list(queues), name=name, log=log)
        self.workers.append(worker)
        if wait_ready:
            self.wait_worker_ready(worker)
        return worker

    def wait_worker_ready(self, worker: Worker, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not worker.alive():
                raise RuntimeError(
                    f"worker {worker.name} exited ({worker.proc.returncode}):\n{tail(worker.log)}"
                )
            if " ready." in worker.log_text():
                return
            time.sleep(0.1)
        raise RuntimeError(f"worker {worker.name} not ready after {timeout_s}s:\n{tail(worker.log)}")

    def kill_worker(self, worker: Worker, sig: int = signal.SIGKILL) -> None:
        """Send `sig` to the worker's whole process group (main process and pool children)."""
        try:
            os.killpg(worker.proc.pid, sig)
        except ProcessLookupError:
            pass
        worker.proc.wait(10)

    def stop_worker(self, worker: Worker, timeout_s: float = 15.0) -> None:
        """Warm shutdown (SIGTERM to the worker's main process), SIGKILL of its group if it hangs."""
        stop_process_group(worker.proc, timeout_s=timeout_s)
        if worker in self.workers:
            self.workers.remove(worker)

    def worker_running(self, job: dict[str, Any]) -> Worker:
        """The worker whose process runs `job` (from the lease owner `host:<main pid>:<child pid>:...`)."""
        owner = job.get("worker") or ""
        for worker in self.workers:
            if f":{worker.pid}:" in owner:
                return worker
        raise LookupError(f"no worker of this platform owns {owner!r}")

    def _wait_api(self, timeout_s: float = 60.0) -> None:
        assert self.api is not None
        deadline = time.monotonic() + timeout_s
        probe = Client(self.url, timeout_s=2)
        try:
            while time.monotonic() < deadline:
                if self.api.poll() is not None:
                    raise RuntimeError(
                        f"API exited ({self.api.returncode}):\n{tail(self.workdir / 'api.log')}"
                    )
                try:
                    probe.request("GET", "/healthz")
                    return
                except Exception:
                    time.sleep(0.1)
        finally:
            probe.close()
        raise RuntimeError(f"API not up after {timeout_s}s:\n{tail(self.workdir / 'api.log')}")

    # --- helpers -------------------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def create_token(self, user: str) -> str:
        with self.db.begin() as session:
            _, token = create_token(session, user)
        return token

    def new_client(self, token: str | None) -> Client:
        client = Client(self.url, token, timeout_s=30)
        self._clients.append(client)
        return client

    def client_for(self, user: str) -> Client:
        """A client authenticated as another user (created on first use)."""
        return self.new_client(self.create_token(user))

    def store(self) -> ObjectStore:
        return open_store(self.settings)

    def wait(
        self, job_id: str, statuses: Sequence[str] = tuple(TERMINAL), timeout_s: float = 60.0
    ) -> dict[str, Any]:
        """Poll until the job is in one of `statuses`; the assertion message carries the process logs."""
        assert self.client is not None
        deadline = time.monotonic() + timeout_s
        job: dict[str, Any] = {}
        while time.monotonic() < deadline:
            job = self.client.job(job_id)
            if job["status"] in statuses:
                return job
            time.sleep(0.1)
        raise AssertionError(
            f"job {job_id} still {job.get('status')} after {timeout_s}s: {job}\n{self.logs()}"
        )

    def wait_progress(self, job_id: str, at_least: int, timeout_s: float = 60.0) -> dict[str, Any]:
        assert self.client is not None
        deadline = time.monotonic() + timeout_s
        job: dict[str, Any] = {}
        while time.monotonic() < deadline:
            job = self.client.job(job_id)
            if job["status"] == "running" and (job["progress"]["step"] or 0) >= at_least:
                return job
            if job["status"] in TERMINAL:
                break
            time.sleep(0.05)
        raise AssertionError(
            f"job {job_id} never reached step {at_least} while running: {job}\n{self.logs()}"
        )

    def logs(self, lines: int = 30) -> str:
        parts = [f"--- api ---\n{tail(self.workdir / 'api.log', lines)}"]
        parts += [f"--- worker {w.name} ---\n{tail(w.log, lines)}" for w in self.workers]
        return "\n".join(parts)
