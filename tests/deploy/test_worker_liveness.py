"""A worker's liveness does not depend on the broker. A real worker, started through the container
entrypoint, consumes a private redis-server; that server is stopped (as in a Redis outage): the
readiness probe (Celery ping over the broker) fails with the reason, the liveness probe (`--live`: the
worker's own main process) keeps passing, the worker keeps running, and once Redis is back the worker
is ready again without a restart."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.deploy import healthcheck
from tests.deploy.support import ENTRYPOINT, clean_env
from tests.utils.servers import free_port, stop_process_group

pytestmark = [pytest.mark.integration, pytest.mark.slow]


class PrivateRedis:
    def __init__(self, port: int, workdir: Path) -> None:
        self.port, self.workdir = port, workdir
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:  # skipped on a developer machine, a failure under CI (as every missing server)
            message = "redis-server is not installed"
            if os.environ.get("CI"):
                pytest.fail(message)
            pytest.skip(message)
        self.proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.workdir)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            probe = subprocess.run([shutil.which("redis-cli") or "redis-cli", "-p", str(self.port), "ping"],
                                   capture_output=True, text=True)  # fmt: skip
            if probe.stdout.strip() == "PONG":
                return
            time.sleep(0.1)
        raise AssertionError("private redis-server did not start")

    def stop(self) -> None:
        if self.proc is not None:
            stop_process_group(self.proc)
            self.proc = None


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[PrivateRedis]:
    server = PrivateRedis(free_port(), tmp_path)
    server.start()
    yield server
    server.stop()


def _probe(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(ENTRYPOINT), "healthcheck", "worker", *args, "--timeout", "3"],
        env=env, cwd=cwd, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def _wait(args: list[str], env: dict[str, str], cwd: Path, want: int, timeout_s: float) -> str:
    deadline = time.monotonic() + timeout_s
    result = _probe(args, env, cwd)
    while result.returncode != want and time.monotonic() < deadline:
        time.sleep(1.0)
        result = _probe(args, env, cwd)
    assert result.returncode == want, result.stdout + result.stderr
    return result.stdout + result.stderr


def test_liveness_survives_a_broker_outage(redis_server: PrivateRedis, tmp_path: Path) -> None:
    env = clean_env(
        MMDLM_HOME=str(tmp_path / "home"),
        MMDLM_BROKER_URL=f"redis://127.0.0.1:{redis_server.port}/0",
        ENTRYPOINT_STATE_FILE=str(tmp_path / "entrypoint.state"),
        HF_HUB_OFFLINE="1",
        OMP_NUM_THREADS="1",
    )
    log = tmp_path / "worker.log"
    with log.open("wb") as handle:
        worker = subprocess.Popen(
            [str(ENTRYPOINT), "worker", "--queues", "train"], env=env, cwd=tmp_path,
            stdout=handle, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        ready = _wait([], env, tmp_path, 0, timeout_s=90)
        assert "pong" in ready, ready
        assert "running" in _wait(["--live"], env, tmp_path, 0, timeout_s=5)
        # a node name without the pid (WORKER_NODE_NAME): the main `mmdlm worker` processes are found
        # by their command line (in a container there is one), never a prefork child or the shell
        mains = healthcheck.worker_main_pids()
        assert worker.pid in mains, mains
        children = [
            int(p) for p in Path(f"/proc/{worker.pid}/task/{worker.pid}/children").read_text().split()
        ]
        assert children and not set(children) & set(mains), "prefork children are not main processes"

        redis_server.stop()  # the outage
        unready = _wait([], env, tmp_path, 1, timeout_s=30)
        assert "unhealthy: worker:" in unready, unready
        for _ in range(3):  # over several probe periods the process is alive, and so reported
            live = _probe(["--live"], env, tmp_path)
            assert live.returncode == 0, live.stdout + live.stderr + log.read_text()[-3000:]
            assert f"worker process {worker.pid} running" in live.stdout
            time.sleep(1.0)
        assert worker.poll() is None, log.read_text()[-3000:]

        redis_server.start()  # back on the same port: ready again, same process
        _wait([], env, tmp_path, 0, timeout_s=90)
        assert worker.poll() is None
    finally:
        stop_process_group(worker, timeout_s=20)
    dead = _probe(["--live", "--pid", str(worker.pid)], env, tmp_path)
    assert dead.returncode == 1 and "is gone" in dead.stderr, dead.stdout + dead.stderr
