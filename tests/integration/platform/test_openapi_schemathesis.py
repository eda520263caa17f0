"""The published OpenAPI is the truth: schemathesis fuzzes EVERY operation of the real gateway (API + an
`encode` worker + the sampler with a tiny MDLM model, on PostgreSQL, Redis and S3), authenticated with a real
token, and checks that no answer is a 5xx and that every status, content type and body is the declared one.

Bounded and reproducible: a fixed seed, derandomized generation, 20 examples per operation (explicit
examples + fuzzing; the stateful phase is off: FastAPI publishes no links). Path ids and body references
(`model`, `dataset`) are drawn half the time from real ids of the caller, so the fuzzer also reaches the
200/404/409 paths behind an existing job, artifact and model, not only the 404 of a random id.
Streaming routes: the job used for events is finished (its stream ends with `end` at once), generation
streams end after at most MMDLM_SAMPLER_MAX_STEPS=16 steps, and schemathesis reads at most
`max-stream-events` events with a bounded request timeout.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.integration.platform.conftest import EdgeStack

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.postgres, pytest.mark.redis]

CHECKS = "not_a_server_error,status_code_conformance,response_schema_conformance,content_type_conformance"
MAX_EXAMPLES = 20
SEED = 20261206
PHASES = os.environ.get("SCHEMATHESIS_PHASES", "examples,fuzzing")
"""The coverage phase (boundary and negative values) takes over 10 minutes here: run it on demand."""
EXTRA_ARGS = "SCHEMATHESIS_ARGS"
"""More `schemathesis run` options for a deeper local run, e.g. `--include-path-regex /v1/jobs`."""


def fuzz_config(stack: EdgeStack) -> str:
    """schemathesis.toml: real ids for half of the path ids and body references, everything else generated."""
    ids = {
        "jobs": [stack.job],
        "artifacts": [stack.output, stack.dataset, stack.model],
        "models": [stack.model],
    }
    bindings = {"path.job_id": "jobs", "path.artifact_id": "artifacts", "path.model_id": "models",
                "body.model": "models", "body.dataset": "artifacts"}  # fmt: skip
    lines = [
        f"seed = {SEED}",
        "request-timeout = 60",
        "max-stream-events = 40",
        "[generation]",
        f"max-examples = {MAX_EXAMPLES}",
        "deterministic = true",
        "[phases.stateful]",
        "enabled = false",
        "[parameters]",
        *(f'"{key}" = {{ dictionary = "{name}", probability = 0.5 }}' for key, name in bindings.items()),
    ]
    for name, values in ids.items():
        lines += [f"[dictionaries.{name}]", f"values = {json.dumps(values)}"]
    return "\n".join(lines) + "\n"


def test_every_operation_conforms_to_the_published_openapi(edge_stack: EdgeStack, tmp_path: Path) -> None:
    platform = edge_stack.platform
    for worker in list(platform.workers):  # past the stack's setup, submitted jobs only queue (no CPU)
        platform.stop_worker(worker)
    config = tmp_path / "schemathesis.toml"
    config.write_text(fuzz_config(edge_stack))
    command = [
        sys.executable, "-m", "schemathesis.cli", "--config-file", str(config), "run", f"{platform.url}/openapi.json",
        "--checks", CHECKS, "--phases", PHASES, "--workers", "1", *shlex.split(os.environ.get(EXTRA_ARGS, "")),
        "--header", f"Authorization: Bearer {platform.token}", "--no-color",
    ]  # fmt: skip
    run = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    report = run.stdout[-12000:] + run.stderr[-3000:]
    assert run.returncode == 0, f"schemathesis found failures:\n{report}\n{platform.logs()}"
    operations = sum(len(ops) for ops in httpx.get(f"{platform.url}/openapi.json").json()["paths"].values())
    if not os.environ.get(EXTRA_ARGS):
        assert f"Tested: {operations}" in run.stdout, report  # every operation of the gateway was fuzzed
    print(run.stdout[-2500:])  # the summary (operations, phases, test cases) for the CI log
