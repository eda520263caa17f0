"""The production path from the images themselves: docker/Dockerfile.cpu and the slim docker/Dockerfile.api,
built without any registry (conftest.py), run as every role with a read-only root filesystem and no
capabilities against the host's PostgreSQL, Redis and a SeaweedFS S3 server. Through the containerised
gateway: prepare-data, a 2-rank train job, a generate call; then each container stops on SIGTERM with 0."""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from typing import Any

import pytest

from services.common.client import Client
from tests.containers.conftest import REPORT, need
from tests.containers.engine import Engine
from tests.utils.servers import S3Server, free_port, postgres_available, redis_available, redis_namespace

pytestmark = [pytest.mark.containers, pytest.mark.slow, pytest.mark.integration, pytest.mark.postgres,
              pytest.mark.redis, pytest.mark.timeout(2400)]  # fmt: skip

# The hardening a Kubernetes pod of the chart gets: read-only root, no capabilities, no privilege gain;
# /tmp is the only scratch outside the /var/lib/mmdlm and /cache volumes.
HARDENED = ["--network", "host", "--read-only", "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
            "--tmpfs", "/tmp:rw,nosuid,nodev,size=512m", "--shm-size", "256m"]  # fmt: skip
FAST = {"MMDLM_LEASE_S": "10", "MMDLM_HEARTBEAT_S": "1", "MMDLM_LOG_LEVEL": "INFO"}


class Stack:
    """Containers of one test run, each with its own named volumes; `rm` removes both."""

    def __init__(self, engine: Engine, env: dict[str, str]) -> None:
        self.engine = engine
        self.env = env
        self.prefix = f"mmdlm-t{secrets.token_hex(3)}"
        self.names: list[str] = []

    def _args(self, name: str, env: dict[str, str]) -> list[str]:
        volumes = ["-v", f"{name}-home:/var/lib/mmdlm", "-v", f"{name}-cache:/cache"]
        envs = [arg for key, value in {**self.env, **env}.items() for arg in ("-e", f"{key}={value}")]
        return ["--name", name, *HARDENED, *volumes, *envs]

    def once(self, image: str, role: str, *args: str, env: dict[str, str] | None = None) -> str:
        """Run a role to completion; its stdout (the exit code must be 0)."""
        name = f"{self.prefix}-{role}-{len(self.names)}"
        self.names.append(name)
        result = self.engine.run(
            "run", *self._args(name, env or {}), image, role, *args, check=False, timeout=300
        )
        assert result.returncode == 0, f"{role} {args} -> {result.returncode}\n{result.stdout}{result.stderr}"
        return result.stdout

    def start(self, image: str, role: str, *args: str, env: dict[str, str] | None = None) -> str:
        name = f"{self.prefix}-{role}"
        self.names.append(name)
        self.engine.run("run", "--detach", *self._args(name, env or {}), image, role, *args)
        return name

    def logs(self, name: str) -> str:
        result = self.engine.run("logs", "--tail", "60", name, check=False)
        return f"--- {name} ---\n{result.stdout}{result.stderr}"

    def wait_healthy(self, name: str, timeout_s: float = 120) -> str:
        """The image's own probe (`mmdlm-entrypoint healthcheck`, the role read from the entrypoint's state)."""
        deadline = time.monotonic() + timeout_s
        while True:
            state = self.engine.inspect(name)["State"]
            assert state["Running"], f"{name} exited {state['ExitCode']}\n{self.logs(name)}"
            probe = self.engine.run("exec", name, "mmdlm-entrypoint", "healthcheck", check=False, timeout=60)
            if probe.returncode == 0:
                return probe.stdout + probe.stderr
            assert time.monotonic() < deadline, (
                f"{name} unhealthy: {probe.stdout}{probe.stderr}\n{self.logs(name)}"
            )
            time.sleep(1)

    def stop(self, name: str) -> int:
        """SIGTERM (docker stop), then the exit code; a SIGKILL after the grace period would read 137."""
        self.engine.run("stop", "--time", "60", name, timeout=120)
        return int(self.engine.inspect(name)["State"]["ExitCode"])

    def rm(self) -> None:
        for name in self.names:
            self.engine.run("rm", "--force", "--volumes", name, check=False)
            self.engine.run("volume", "rm", "--force", f"{name}-home", f"{name}-cache", check=False)


@pytest.fixture
def backend_env(s3_server: S3Server, postgres_database: Callable[[], Any]) -> Iterator[dict[str, str]]:
    need(postgres_available(), "PostgreSQL is not running on 127.0.0.1:5432")
    need(redis_available(), "Redis is not running on 127.0.0.1:6379")
    with postgres_database() as db_url, redis_namespace() as (broker_url, prefix):
        yield {
            "MMDLM_DATABASE_URL": db_url,
            "MMDLM_BROKER_URL": broker_url,
            "MMDLM_BROKER_KEY_PREFIX": prefix,
            **s3_server.env(bucket=f"mmdlm-ctr-{secrets.token_hex(4)}"),
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            **FAST,
        }


def test_the_gateway_image_has_no_torch(engine: Engine, images: dict[str, str]) -> None:
    probe = (
        "import importlib.util as u; print(sorted(m for m in ('torch', 'transformers') if u.find_spec(m)))"
    )
    slim = engine.run("run", "--rm", "--entrypoint", "python", images["api"], "-c", probe).stdout.strip()
    full = engine.run("run", "--rm", "--entrypoint", "python", images["cpu"], "-c", probe).stdout.strip()
    assert slim == "[]", slim
    assert full == "['torch', 'transformers']", full  # the probe can see torch where there is one


def test_every_role_runs_hardened_and_serves_the_jobs(
    engine: Engine, images: dict[str, str], backend_env: dict[str, str]
) -> None:
    api_port, sampler_port = free_port(), free_port()
    env = {**backend_env, "MMDLM_API_PORT": str(api_port), "MMDLM_SAMPLER_PORT": str(sampler_port),
           "MMDLM_SAMPLER_HOST": "127.0.0.1", "MMDLM_SAMPLER_URL": f"http://127.0.0.1:{sampler_port}"}  # fmt: skip
    stack = Stack(engine, env)
    started = time.monotonic()
    with ExitStack() as cleanup:
        cleanup.callback(stack.rm)
        # migrate and a token from the slim image (the gateway's two roles that touch the schema)
        stack.once(images["api"], "migrate")
        token = (
            stack.once(images["api"], "mmdlm", "token", "create", "--user", "alice").strip().splitlines()[-1]
        )
        api = stack.start(images["api"], "api")
        sampler = stack.start(images["cpu"], "sampler")
        worker = stack.start(images["cpu"], "worker", "--queues", "encode,train", "--concurrency", "1")
        for name in (api, sampler, worker):
            stack.wait_healthy(name)
        REPORT["stack_ready_s"] = round(time.monotonic() - started, 1)

        client = Client(f"http://127.0.0.1:{api_port}", token, timeout_s=60)
        cleanup.callback(client.close)

        def run_job(spec: dict[str, Any], timeout_s: float) -> dict[str, Any]:
            job = client.wait(client.submit(spec)["id"], timeout_s=timeout_s)
            logs = "\n".join(stack.logs(n) for n in (api, worker))
            assert job["status"] == "succeeded", f"{job}\n{logs}"
            return job

        jobs_started = time.monotonic()
        # the demo's smoke-scale recipe: 600 bundled documents, BPE 2048, 32-token rows
        data_spec = {"kind": "prepare-data", "source": "bundled", "max_documents": 600, "seq_len": 32,
                     "packing": "pad", "tokenizer": {"type": "bpe", "vocab_size": 2048}}  # fmt: skip
        data = run_job(data_spec, 300)
        dataset = data["artifacts"][0]
        model_spec = {"family": "mdlm", "model": "cpu-nano"}
        train = run_job({"kind": "train", "dataset": dataset, "model": model_spec, "steps": 4,
                         "data": {"batch_size": 4}, "precision": "fp32", "nproc_per_node": 2,
                         "checkpoint": {"interval": 4, "keep_last": 1}, "log": {"interval": 2}}, 600)  # fmt: skip
        models = [a for a in train["artifacts"] if client.artifact(a)["kind"] == "model"]
        assert models, train
        model = client.artifact(models[0])
        assert model["metadata"]["world_size"] == 2 and model["metadata"]["step"] == 4, model["metadata"]

        out = client.request(
            "POST", "/v1/generate",
            json={"model": models[0], "prompt": "In the beginning", "num_samples": 2, "steps": 8, "seed": 0},
        )  # fmt: skip
        assert len(out["samples"]) == 2 and all(isinstance(s["text"], str) for s in out["samples"]), out
        assert out["tokens"] > 0, out
        REPORT["jobs_s"] = round(time.monotonic() - jobs_started, 1)

        # a clean shutdown: SIGTERM through tini to the role process, exit 0 (not 143, not a SIGKILL's 137)
        codes = {name: stack.stop(name) for name in (worker, sampler, api)}
        assert codes == dict.fromkeys(codes, 0), {n: (c, stack.logs(n)) for n, c in codes.items() if c}
