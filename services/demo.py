"""`mmdlm demo` (`make demo`): the main job on the embedded default, end to end, with no server to set up.

It starts the API (uvicorn, a free port) and one worker for all queues as subprocesses, creates a token,
then runs the demo STEPS in order and stops its subprocesses. Each step is a function of a shared
`DemoContext` (HTTP client, produced artifact ids, console). Later capabilities extend the demo by
appending a `DemoStep` to `STEPS`, reading what earlier steps left in `ctx.artifacts` (e.g. the
`dataset` id) and recording their own outputs there:

    def train_step(ctx: DemoContext) -> None:
        job = ctx.run_job({"kind": "train", "dataset": ctx.artifacts["dataset"], ...}, title="train")
        ctx.artifacts["model"] = job["artifacts"][0]

    STEPS.append(DemoStep("train", train_step, "train a tiny MDLM on the dataset"))
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from services.common.auth import create_token
from services.common.client import Client, ClientError
from services.common.db import Database
from services.common.follow import follow_job
from services.common.migrate import upgrade
from services.common.settings import Settings


@dataclass
class DemoContext:
    client: Client
    token: str
    settings: Settings
    console: Console
    artifacts: dict[str, str] = field(default_factory=dict)  # role ("dataset", "model", ...) -> id
    jobs: dict[str, str] = field(default_factory=dict)  # step name -> job id

    def run_job(self, spec: dict[str, Any], *, title: str) -> dict[str, Any]:
        """Submit, follow with a progress bar, and return the finished job; raise if it did not succeed."""
        job = self.client.submit(spec)
        self.jobs[title] = job["id"]
        self.console.rule(f"[bold]{title}[/bold]  job {job['id']}")
        done = follow_job(self.client, job["id"], self.console, show_logs=True)
        if done["status"] != "succeeded":
            raise DemoFailed(f"{title} job {job['id']} ended {done['status']}: {done.get('error')}")
        return done


@dataclass(frozen=True)
class DemoStep:
    name: str
    run: Callable[[DemoContext], None]
    description: str


class DemoFailed(Exception):
    pass


# --- steps ---------------------------------------------------------------------------------------------------


def prepare_data_step(ctx: DemoContext) -> None:
    spec = {"kind": "prepare-data", "source": "bundled", "tokenizer": "gpt2", "seq_len": 128}
    job = ctx.run_job(spec, title="prepare-data")
    dataset_id = job["artifacts"][0]
    ctx.artifacts["dataset"] = dataset_id
    artifact = ctx.client.artifact(dataset_id)
    manifest_bytes = ctx.client.download(dataset_id, "manifest.json")
    verified = hashlib.sha256(manifest_bytes).hexdigest() == artifact["sha256"]
    manifest = json.loads(manifest_bytes)
    meta = artifact["metadata"]
    table = Table("split", "documents", "tokens", "rows", "shards", title=f"dataset {dataset_id}")
    for name, split in manifest["splits"].items():
        table.add_row(
            name, str(split["documents"]), str(split["tokens"]), str(split["rows"]), str(len(split["shards"]))
        )
    ctx.console.print(table)
    tok = meta["tokenizer"]
    ctx.console.print(
        f"tokenizer {tok['name']} (vocab {tok['vocab_size']}), seq_len {meta['seq_len']}, "
        f"{artifact['bytes'] / 1e6:.1f} MB in {len(artifact['files'])} files",
        highlight=False,
    )
    ctx.console.print(f"manifest sha256 {artifact['sha256']}  [{'green' if verified else 'red'}]"
                      f"{'verified' if verified else 'MISMATCH'}[/]")  # fmt: skip
    for f in artifact["files"]:
        if f["path"].endswith(".npy"):
            ctx.console.print(
                f"  {f['path']}  {f['bytes']} bytes  sha256 {f['sha256'][:16]}…", highlight=False
            )
    if not verified:
        raise DemoFailed("the downloaded manifest does not match the artifact checksum")


DEMO_TRAIN = {  # CPU-sized: ~1-2 minutes on 2 cores, 2 gloo ranks (the GPU path differs only in size)
    "kind": "train", "model": {"family": "mdlm", "model": "cpu-nano"}, "data": {"batch_size": 4},
    "optimizer": {"lr": 1e-3}, "schedule": {"kind": "cosine", "warmup_steps": 5}, "steps": 40,
    "precision": "bf16", "checkpoint": {"interval": 20, "keep_last": 2}, "eval": {"interval": 20, "batches": 2},
    "log": {"interval": 2}, "nproc_per_node": 2,
}  # fmt: skip


def train_step(ctx: DemoContext) -> None:
    """Train a tiny MDLM through the `train` job kind (torchrun, 2 ranks) and show the model artifact."""
    job = ctx.run_job({**DEMO_TRAIN, "dataset": ctx.artifacts["dataset"]}, title="train")
    model_id = next(a for a in job["artifacts"] if ctx.client.artifact(a)["kind"] == "model")
    ctx.artifacts["model"] = model_id
    artifact = ctx.client.artifact(model_id)
    series = ctx.client.metrics(job["id"], ["loss", "val_nll", "tokens_per_s"])["series"]
    table = Table("metric", "first", "last", "points", title=f"train job {job['id']}")
    for name, s in series.items():
        values = [v for v in s["values"] if v is not None]
        if values:
            table.add_row(name, f"{values[0]:.4g}", f"{values[-1]:.4g}", str(len(values)))
    ctx.console.print(table)
    meta = artifact["metadata"]
    ctx.console.print(
        f"model artifact {model_id}: {meta['family']} trained {meta['step']} steps on {meta['world_size']} ranks "
        f"({meta['precision']}), {artifact['bytes'] / 1e6:.1f} MB in {len(artifact['files'])} files; "
        f"reload with mmdlm.pipeline.load_pretrained after `mmdlm artifact download`",
        highlight=False,
    )


DEMO_SAMPLE = {"steps": 64, "temperature": 1.0, "top_p": 0.95, "seed": 0}
DEMO_EVALUATE = {  # small: 8 samples of 128 tokens, 32 steps (+ a sweep at 8 and 32), 4 NLL batches
    "kind": "evaluate", "batch_size": 16, "max_batches": 4, "num_time_samples": 2, "seed": 0,
    "generative": {"sample": {"num_samples": 8, "steps": 32, "seed": 0}, "steps_sweep": [8, 32],
                   "reference_batch_size": 8, "num_examples": 2},
}  # fmt: skip


def generate_step(ctx: DemoContext) -> None:
    """Samples through the REST API (gateway -> sampler service): a prompt continued by the model, its
    sampling numbers, and the same request as an OpenAI-style completion."""
    model = ctx.artifacts["model"]
    ctx.console.rule("[bold]generate[/bold]  POST /v1/generate")
    out = ctx.client.request(
        "POST",
        "/v1/generate",
        json={"model": model, "prompt": "In the beginning", "num_samples": 3, **DEMO_SAMPLE},
    )
    for sample in out["samples"]:
        ctx.console.print(f"  [{sample['index']}] {sample['text'][:160]!r}", highlight=False)
    ctx.console.print(
        f"{out['family']} {out['mode']}: {out['tokens']} tokens in {out['elapsed_s']:.2f}s "
        f"({out['tokens_per_s']:.0f} tokens/s), {out['steps']} steps, {out['nfe']} network calls, "
        f"seed {out['seed']}, {out['settings']['sampler_precision']} sampler, batch of {out['batch_requests']}",
        highlight=False,
    )
    completion = ctx.client.request(
        "POST", "/v1/completions",
        json={"model": model, "prompt": "The king said", "max_tokens": 24, "n": 1, "seed": 1, "steps": 32},
    )  # fmt: skip
    choice = completion["choices"][0]
    ctx.console.print(
        f"POST /v1/completions: {choice['text'][:160]!r} (finish {choice['finish_reason']}, "
        f"usage {completion['usage']})",
        highlight=False,
    )


def evaluate_step(ctx: DemoContext) -> None:
    """An `evaluate` job: validation NLL/PPL, generative PPL with its entropy under the reference LM, the
    same on real validation rows, a steps sweep; every number printed with its protocol."""
    spec = {**DEMO_EVALUATE, "model": ctx.artifacts["model"], "dataset": ctx.artifacts["dataset"]}
    job = ctx.run_job(spec, title="evaluate")
    [evaluation] = [a for a in job["artifacts"] if ctx.client.artifact(a)["kind"] == "evaluation"]
    ctx.artifacts["evaluation"] = evaluation
    document = json.loads(ctx.client.download(evaluation))
    report, summary = document["report"], document["summary"]
    gen = report["generative"]
    proto = gen["protocol"]
    table = Table(
        "metric", "value", "protocol", title=f"evaluation {evaluation} of model {document['model']}"
    )
    if "nll" in report:
        nll = report["nll"]["protocol"]
        table.add_row("validation PPL", f"{summary['val_ppl']:.2f}",
                      f"{nll['estimator']} bound, {nll['num_time_samples']} time samples, {nll['split']} split, "
                      f"context {nll['context_length']}")  # fmt: skip
    table.add_row("generative PPL", f"{summary['gen_ppl']:.2f}",
                  f"{proto['num_samples']} samples, {proto['sampling_steps']} steps, {proto['sampler_precision']} "
                  f"sampler, {proto['precision']} network")  # fmt: skip
    table.add_row("  sample entropy", f"{summary['gen_entropy']:.3f} nats", "unigram, per sample (mean)")
    if "data_gen_ppl" in summary:
        table.add_row("real rows: gen PPL", f"{summary['data_gen_ppl']:.2f}",
                      f"entropy {summary['data_entropy']:.3f} nats (what data scores under this reference)")  # fmt: skip
    for row in report.get("sweep", {}).get("rows", []):
        steps = row["protocol"]["sampling_steps"]
        table.add_row(
            f"  sweep {steps} steps", f"{row['gen_ppl']:.2f}", f"entropy {row['unigram_entropy']:.3f} nats"
        )
    ctx.console.print(table)
    ctx.console.print(f"reference model: {proto['reference_model']}", highlight=False)
    for note in proto.get("notes", []):
        ctx.console.print(f"note: {note}", style="dim", highlight=False)


STEPS: list[DemoStep] = [
    DemoStep("prepare-data", prepare_data_step, "tokenize the bundled English corpus (gpt2, seq_len 128)"),
    DemoStep("train", train_step, "train a tiny MDLM as a `train` job: torchrun, 2 ranks, live progress"),
    DemoStep("generate", generate_step, "sample the model through the REST API (gateway -> sampler service)"),
    DemoStep(
        "evaluate", evaluate_step, "an `evaluate` job: NLL, generative PPL + entropy, steps sweep, protocol"
    ),
]


# --- orchestration -------------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawn(args: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    log.parent.mkdir(parents=True, exist_ok=True)
    handle = log.open("ab")
    return subprocess.Popen(
        [sys.executable, "-m", "services.cli", *args], stdout=handle, stderr=subprocess.STDOUT, env=env,
        start_new_session=True,  # its own process group: stopping it stops its children too
    )  # fmt: skip


def _stop(proc: subprocess.Popen[bytes], timeout_s: float = 15.0) -> None:
    if proc.poll() is not None:
        return
    try:
        # SIGTERM to the leader only: uvicorn and Celery then shut their children down in order.
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)
    except ProcessLookupError:
        pass


def _wait_ready(client: Client, procs: list[subprocess.Popen[bytes]], timeout_s: float = 90.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for proc in procs:
            if proc.poll() is not None:
                raise DemoFailed(f"a demo process exited early (code {proc.returncode}); see var/demo/*.log")
        try:
            client.request("GET", "/readyz")
            return
        except ClientError:
            time.sleep(0.3)
    raise DemoFailed(f"the API did not become ready within {timeout_s:.0f}s; see var/demo/api.log")


def run_demo(console: Console, steps: list[DemoStep] | None = None, settings: Settings | None = None) -> int:
    """Run the demo; returns the process exit code (0 = every step succeeded)."""
    settings = settings or Settings()
    if not settings.is_sqlite:
        console.print(
            f"[yellow]note:[/yellow] using the configured database {settings.redacted()['database_url']}"
        )
    upgrade(settings.database_url)
    with Database(settings.database_url).begin() as session:
        _, token = create_token(session, "demo", token_name="mmdlm demo")
    port = _free_port()
    sampler_port = _free_port()
    logs = settings.home / "demo"
    env = {**os.environ, "MMDLM_HOME": str(settings.home), "MMDLM_API_PORT": str(port),
           "MMDLM_SAMPLER_PORT": str(sampler_port), "MMDLM_SAMPLER_URL": f"http://127.0.0.1:{sampler_port}",
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}  # fmt: skip
    console.print(f"[bold]MM-DLM demo[/bold]: embedded API on 127.0.0.1:{port}, files under {settings.home}")
    procs = [
        _spawn(["serve", "--host", "127.0.0.1", "--port", str(port)], logs / "api.log", env),
        _spawn(["worker", "--queues", "encode,train,sample"], logs / "worker.log", env),
        _spawn(["serve-sampler", "--host", "127.0.0.1"], logs / "sampler.log", env),
    ]
    client = Client(f"http://127.0.0.1:{port}", token, timeout_s=60)
    ctx = DemoContext(client=client, token=token, settings=settings, console=console)
    started = time.monotonic()
    try:
        _wait_ready(client, procs)
        for step in steps if steps is not None else STEPS:
            console.print(f"[bold cyan]step {step.name}[/bold cyan]: {step.description}")
            step.run(ctx)
    except (DemoFailed, ClientError) as exc:
        console.print(f"[red]demo failed:[/red] {exc}", highlight=False)
        return 1
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/yellow]")
        return 130
    finally:
        client.close()
        for proc in reversed(procs):
            _stop(proc)
    console.print(f"[bold green]demo finished[/bold green] in {time.monotonic() - started:.0f}s; "
                  f"artifacts: {json.dumps(ctx.artifacts)}")  # fmt: skip
    return 0
