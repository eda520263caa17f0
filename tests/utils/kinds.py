"""Job kinds for tests: `probe` (queue encode), `probe-train` (train), `probe-sample` (sample).

They exercise the platform without ML: progress, logs, metrics, transient and permanent failures,
cancel (obeyed or ignored), staging an input artifact and publishing an output artifact. Processes
load them with `MMDLM_KIND_MODULES=tests.utils.kinds` (the platform harness sets it).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Literal

from pydantic import Field

from mmdlm.config.base import StrictModel
from services.common.context import JobContext
from services.common.crud import require_artifact
from services.common.errors import PermanentError
from services.common.kinds import JobKind, register


class ProbeSpec(StrictModel):
    steps: int = Field(default=3, ge=0, le=100_000)
    step_s: float = Field(default=0.0, ge=0, le=60)
    fail_attempts: int = Field(default=0, ge=0, description="attempts <= this raise a transient error")
    permanent_error: bool = False
    files: int = Field(default=0, ge=0, le=1000, description="publish an artifact with this many files")
    file_bytes: int = Field(default=1000, ge=0, le=64 << 20)
    marker_dir: str | None = Field(default=None, description="touch <job>-attempt-<n> here at each start")
    ignore_cancel: bool = False
    log_lines: int = Field(default=1, ge=0, le=100_000)
    dataset: str | None = Field(default=None, description="a `dataset` artifact id to stage first")


class Probe(ProbeSpec):
    kind: Literal["probe"] = "probe"


class ProbeTrain(ProbeSpec):
    kind: Literal["probe-train"] = "probe-train"


class ProbeSample(ProbeSpec):
    kind: Literal["probe-sample"] = "probe-sample"


def check(spec: ProbeSpec, session, user) -> None:  # noqa: ANN001 (the registry's CheckFn signature)
    if spec.dataset is not None:
        require_artifact(session, user, spec.dataset, field="dataset", kind="dataset")


def run(ctx: JobContext) -> None:
    spec = ctx.spec
    assert isinstance(spec, ProbeSpec)
    if spec.marker_dir:
        Path(spec.marker_dir, f"{ctx.job_id}-attempt-{ctx.attempt}-pid-{os.getpid()}").touch()
    if spec.dataset:
        staged = ctx.stage_artifact(spec.dataset, kind="dataset")
        ctx.log(f"staged {spec.dataset} at {staged}")
    for i in range(spec.log_lines):
        ctx.log(f"probe log line {i}")
    for step in range(1, spec.steps + 1):
        if not spec.ignore_cancel:
            ctx.check_cancelled()
        time.sleep(spec.step_s)
        ctx.progress(step, spec.steps, "probing")
        ctx.metrics(step, {"loss": 1.0 / step, "attempt": float(ctx.attempt)})
    if spec.ignore_cancel:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # a runner that does not stop: the platform must end it
            time.sleep(0.1)
    if ctx.attempt <= spec.fail_attempts:
        raise RuntimeError(f"probe failure on attempt {ctx.attempt}")
    if spec.permanent_error:
        raise PermanentError("probe: permanent_error was requested")
    if spec.files:
        out = ctx.scratch_dir / "out"
        out.mkdir(parents=True, exist_ok=True)
        for i in range(spec.files):
            (out / "part" / f"{i:03d}.bin").parent.mkdir(exist_ok=True)
            (out / "part" / f"{i:03d}.bin").write_bytes(os.urandom(spec.file_bytes))
        (out / "manifest.json").write_text(json.dumps({"job": ctx.job_id, "files": spec.files}))
        ctx.publish_directory(out, kind="probe", name="output", metadata={"files_requested": spec.files})


for _spec, _queue in ((Probe, "encode"), (ProbeTrain, "train"), (ProbeSample, "sample")):
    register(
        JobKind(
            name=_spec.model_fields["kind"].default,
            spec=_spec,
            queue=_queue,
            runner="tests.utils.kinds:run",
            check=check,
            description=f"test probe on queue {_queue}",
        )
    )
