"""Operator and user mistakes through the real `mmdlm` console script and real processes: workers and
servers started on a wrong or unreachable broker / database / object store, client commands with a bad
token, unknown request fields, `logs --follow` of a job the user cancels, and token revocation.

Each mistake ends in a non-zero exit and one `error:` line saying what is wrong and what to do; no
traceback reaches the user.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path

import httpx
import pytest

from services.common.client import Client
from tests.utils.harness import Backend, Platform
from tests.utils.servers import free_port, stop_process_group, tail

pytestmark = [pytest.mark.integration]

MMDLM = str(Path(sys.executable).with_name("mmdlm"))  # the installed console script
REPO = Path(__file__).resolve().parents[3]


def clean_env(home: Path, **env: str) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("MMDLM_")}
    base.update(HF_HUB_OFFLINE="1", MMDLM_HOME=str(home), MMDLM_STARTUP_WAIT_S="1", **env)
    return base


def start(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [MMDLM, *args], env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )  # fmt: skip


def finish(proc: subprocess.Popen[str], timeout_s: float = 90) -> tuple[int, str, str]:
    try:
        out, err = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        stop_process_group(proc)  # type: ignore[arg-type]
        out, err = proc.communicate()
        raise AssertionError(f"still running after {timeout_s}s (no fast failure):\n{out}\n{err}") from None
    return proc.returncode, out, err


def assert_failed_in_one_line(code: int, out: str, err: str, *words: str) -> str:
    """Non-zero exit; stderr ends with one `error:` line holding every word (at most one warning line
    before it: the start-up check saying what it waits for); no traceback anywhere."""
    both = out + err
    assert "Traceback" not in both, both
    assert code == 1, (code, both)
    lines = err.strip().splitlines()
    assert 1 <= len(lines) <= 2 and lines[-1].startswith("error: "), both
    for word in words:
        assert word in lines[-1], (word, lines[-1])
    return lines[-1]


# --- start-up: workers and servers -----------------------------------------------------------------------


@pytest.mark.postgres
def test_processes_refuse_to_start_on_unusable_services(
    tmp_path: Path, postgres_database: Callable[[], AbstractContextManager[str]]
) -> None:
    closed = free_port()  # nothing listens on it: a refused connection, as from a wrong port
    s3 = {
        "MMDLM_STORE_BACKEND": "s3", "MMDLM_S3_ENDPOINT": f"127.0.0.1:{closed}", "MMDLM_S3_ACCESS_KEY": "a",
        "MMDLM_S3_SECRET_KEY": "b", "MMDLM_S3_SECURE": "false",
    }  # fmt: skip
    pg_closed = f"postgresql+psycopg://postgres@127.0.0.1:{closed}/mmdlm"
    worker = ["worker", "--queues", "encode"]
    with postgres_database() as unmigrated:
        cases: list[tuple[list[str], dict[str, str], list[str]]] = [
            (worker, {"MMDLM_BROKER_URL": "amqpx://127.0.0.1/"},
             ["worker not started", "MMDLM_BROKER_URL", "unknown broker transport 'amqpx'", "redis://"]),
            (worker, {"MMDLM_BROKER_URL": f"redis://127.0.0.1:{closed}/0"},
             ["worker not started", f"broker redis://127.0.0.1:{closed}/0 unreachable", "Connection refused",
              "check MMDLM_BROKER_URL"]),
            (worker, {"MMDLM_DATABASE_URL": pg_closed.replace("postgres@", "postgres:secret@")},
             ["worker not started", f"127.0.0.1:{closed}", "unreachable", "Connection refused",
              "check MMDLM_DATABASE_URL"]),
            (worker, {"MMDLM_DATABASE_URL": "postgresql+nosuchdriver://h/db"},
             ["MMDLM_DATABASE_URL", "is not usable", "postgresql+psycopg://"]),
            (worker, {"MMDLM_DATABASE_URL": unmigrated}, ["has no MM-DLM schema", "run `mmdlm migrate`"]),
            (worker, s3, [f"127.0.0.1:{closed}", "unreachable", "MMDLM_S3_*"]),
            (["serve", "--port", str(free_port())], {"MMDLM_BROKER_URL": "amqpx://127.0.0.1/"},
             ["unknown broker transport 'amqpx'"]),
            (["serve", "--port", str(free_port())], {"MMDLM_DATABASE_URL": "nosuchdb://x"},
             ["MMDLM_DATABASE_URL 'nosuchdb://x' is not usable"]),
            (["serve-sampler", "--port", str(free_port())], {"MMDLM_DATABASE_URL": "nosuchdb://x"},
             ["MMDLM_DATABASE_URL 'nosuchdb://x' is not usable"]),
            (["migrate"], {"MMDLM_DATABASE_URL": pg_closed},
             ["migration failed", "unreachable", "Connection refused"]),
            (["migrate"], {"MMDLM_DATABASE_URL": unmigrated.rsplit("/", 1)[0] + "/mmdlm_absent_db"},
             ["migration failed", "refused", 'database "mmdlm_absent_db" does not exist']),
            (["serve", "--port", str(free_port())], {"MMDLM_KIND_MODULES": "nope.kinds"},
             ["MMDLM_KIND_MODULES", "no module named 'nope.kinds'"]),
        ]  # fmt: skip
        if not _has_cuda():
            cases.append(
                (["serve-sampler", "--port", str(free_port())], {"MMDLM_SAMPLER_DEVICE": "cuda"},
                 ["sampler not started", "MMDLM_SAMPLER_DEVICE=cuda but CUDA is not available"])
            )  # fmt: skip
        # all at once: each is a fresh interpreter, and they wait on nothing but their own check
        procs = []
        for i, (args, env, _) in enumerate(cases):
            home = tmp_path / f"case{i}"
            home.mkdir()
            procs.append(start(args, clean_env(home / "var", **env), home))
        for proc, (args, _env, words) in zip(procs, cases, strict=True):
            line = assert_failed_in_one_line(*finish(proc), *words)
            assert "secret" not in line, (args, line)  # a password in a URL is never printed


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


# --- a running API: client commands, request fields, token revocation ------------------------------------

CACHE_S = 2.0


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    """An embedded API (no workers) whose token cache holds entries for CACHE_S seconds."""
    root = tmp_path_factory.mktemp("cli-errors")
    backend = Backend("embedded", {"MMDLM_HOME": str(root / "home")})
    with Platform(backend, root / "p", workers_queues=[], env={"MMDLM_TOKEN_CACHE_S": str(CACHE_S)}) as p:
        yield p


def cli_env(platform: Platform, **env: str) -> dict[str, str]:
    return {**platform.process_env({"MMDLM_API_URL": platform.url}), **env}


def test_client_commands_with_a_bad_token(api: Platform, tmp_path: Path) -> None:
    (tmp_path / "job.yaml").write_text("kind: probe\nsteps: 1\n")
    env = cli_env(api, MMDLM_TOKEN="mmdlm_not-a-real-token")
    for args in (["jobs"], ["status", "0" * 32], ["submit", "job.yaml"], ["logs", "-f", "0" * 32]):
        code, out, err = finish(start(args, env, tmp_path))
        assert_failed_in_one_line(
            code, out, err, "HTTP 401", "invalid, expired or revoked token", "check MMDLM_TOKEN"
        )


def test_unknown_request_fields_are_named(api: Platform) -> None:
    auth = {"Authorization": f"Bearer {api.token}"}
    cases = {
        "/v1/generate": {"model": "0" * 32, "num_samples": 1, "tempreature": 0.5},
        "/v1/completions": {"model": "0" * 32, "prompt": "The", "max_tokenz": 4},
        "/v1/jobs": {"kind": "probe", "stepz": 3},
    }
    for path, body in cases.items():
        response = httpx.post(api.url + path, json=body, headers=auth, timeout=30)
        assert response.status_code == 422, (path, response.text)
        [error] = response.json()["errors"]
        unknown = next(k for k in body if k not in ("model", "num_samples", "prompt", "kind"))
        assert error["field"] == unknown and error["message"] == f"unknown field {unknown!r}", error
        assert "spec" not in response.json()["detail"], response.text


def test_revoking_a_token_holds_on_every_api_process_within_the_cache_time(
    api: Platform, tmp_path: Path
) -> None:
    """Revocation writes the database; `api` (cache CACHE_S) must refuse the token at most CACHE_S after
    it cached it, and a second API process with MMDLM_TOKEN_CACHE_S=0 on its very next request."""
    port = free_port()
    uncached_log = tmp_path / "api-uncached.log"
    with uncached_log.open("wb") as handle:
        uncached = subprocess.Popen(
            [sys.executable, "-m", "services.cli", "serve", "--host", "127.0.0.1", "--port", str(port)],
            env=api.process_env({"MMDLM_TOKEN_CACHE_S": "0"}), cwd=REPO, stdout=handle,
            stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        token = api.create_token("bob")
        cached = Client(api.url, token, timeout_s=30)
        direct = Client(f"http://127.0.0.1:{port}", token, timeout_s=30)
        deadline = time.monotonic() + 60
        while True:  # the second API up
            assert uncached.poll() is None, tail(uncached_log)
            try:
                direct.jobs()
                break
            except Exception:
                assert time.monotonic() < deadline, tail(uncached_log)
                time.sleep(0.2)
        cached.jobs()  # works, and is now in `api`'s token cache
        cached_at = time.monotonic()

        code, out, err = finish(start(["token", "revoke", "--user", "bob"], cli_env(api), tmp_path))
        assert code == 0 and "revoked 1 token(s) of 'bob'" in out, out + err
        assert f"within {CACHE_S:g}s (MMDLM_TOKEN_CACHE_S)" in out, out

        assert _status(direct) == 401  # no cache: refused at once
        while (status := _status(cached)) == 200:  # poll: refused once the cached entry expires
            assert time.monotonic() - cached_at < CACHE_S + 1.0, "still accepted past the cache time"
            time.sleep(0.05)
        assert status == 401
        assert time.monotonic() - cached_at < CACHE_S + 1.0
        cached.close()
        direct.close()
    finally:
        stop_process_group(uncached)  # type: ignore[arg-type]

    code, out, err = finish(start(["token", "revoke", "--user", "nobody"], cli_env(api), tmp_path))
    assert_failed_in_one_line(code, out, err, "no user named 'nobody'")


def _status(client: Client) -> int:
    from services.common.client import ApiError

    try:
        client.jobs(limit=1)
    except ApiError as exc:
        return exc.status
    return 200


# --- a cancelled training job, followed ------------------------------------------------------------------


@pytest.mark.slow
def test_logs_follow_of_a_cancelled_train_job_ends_cleanly(
    make_backend: Callable[[str], Backend], platform_factory: Callable[..., Platform], tmp_path: Path
) -> None:
    from mmdlm.training.debug import prepare_debug_dataset
    from tests.integration.trainer.conftest import TRAIN_ENV, publish_local_artifact, train_spec

    data = prepare_debug_dataset(tmp_path / "data", seq_len=32, vocab_size=512, documents_per_part=60)
    p = platform_factory(make_backend("embedded"), workers_queues=[["train"]], env=TRAIN_ENV)
    dataset = publish_local_artifact(p, data, kind="dataset")
    job = p.client.submit(train_spec(dataset, steps=5000, log={"interval": 1, "console": True}))
    p.wait_progress(job["id"], 3, timeout_s=120)  # both ranks training
    follow = start(["logs", "--follow", job["id"]], cli_env(p, MMDLM_TOKEN=p.token), tmp_path)
    time.sleep(1.0)  # it is streaming the live job
    assert follow.poll() is None
    p.client.cancel(job["id"])
    code, out, err = finish(follow, timeout_s=120)
    assert "Traceback" not in out + err, out[-4000:] + err
    assert out.strip().splitlines()[-1] == f"job {job['id']} cancelled", out[-2000:]
    assert code == 3, (code, err)  # 0 succeeded, 1 failed, 3 cancelled
    assert err == "", err
    assert any("[rank0]" in line for line in out.splitlines()), "the ranks' log was followed"
