"""`mmdlm demo` (`make demo`): the main jobs on the embedded default, end to end, with no server to set up.

It starts the API (uvicorn, a free port), one worker for all queues and the sampler service as
subprocesses, creates a token, then runs the demo STEPS in order and stops its subprocesses:

  discrete  prepare-data (bundled corpus, BPE 2048, 32-token rows) -> clusters (HDLM) -> `train` jobs for a
            CPU-sized MDLM, HDLM and the AR baseline -> samples through the REST API -> one `evaluate` job
            per model under one protocol -> one table from GET /v1/models/compare;
  latent    encode (MiniLM) -> `train` an MMDiT in mixture mode -> `evaluate`: t2l cosine vs the
            mean-latent baseline, l2t round trip vs unconditional samples;
  summary   every headline number next to its baseline, also written to <MMDLM_HOME>/demo/summary.json.

Every step keeps its protocol but its size comes from a `DemoScale`: `full` fits 10 minutes on 2 CPU
cores; `smoke` (`mmdlm demo --quick`, MMDLM_DEMO_SCALE=smoke) runs every step with a few steps and rows,
for the end-to-end test. Each step is a function of a shared `DemoContext` (HTTP client, produced
artifact ids, console, scale, results); a step reads what earlier ones left in `ctx.artifacts` (e.g. the
`dataset` id) and records its own outputs there:

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
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from mmdlm.config.base import load_mapping
from mmdlm.config.presets import preset_path
from mmdlm.demo_latent import L2T_GUIDANCE
from mmdlm.demo_latent import MODEL as LATENT_MODEL
from mmdlm.demo_latent import OBJECTIVE as LATENT_OBJECTIVE
from services.common.auth import create_token
from services.common.client import Client, ClientError
from services.common.db import Database
from services.common.follow import follow_job
from services.common.migrate import upgrade
from services.common.settings import Settings


@dataclass(frozen=True)
class DemoScale:
    """How big each step is; the steps themselves (and their protocols) are the same at every scale."""

    name: str
    max_documents: int | None  # prepare-data: first N bundled documents (None: the whole corpus)
    lm_steps: int  # MDLM / HDLM / AR train steps (same for the three, so tokens seen match)
    lm_batch_size: int  # per rank
    lm_ranks: int
    eval_batches: int  # validation NLL batches of 64 rows
    eval_samples: int  # generative PPL samples per model
    sampling_steps: int  # diffusion sampling steps of the generative evaluation
    encode_rows: int  # train rows encoded with MiniLM (validation: an eighth, at least 2 x latent_eval_rows)
    latent_steps: int
    latent_batch_size: int
    latent_eval_rows: int  # held-out rows for t2l cosine and the l2t round trip


SCALES = {
    # 284 s measured on 2 idle CPU cores (AVX-512, no bf16 units); leaves room for a shared machine
    "full": DemoScale("full", None, 120, 32, 2, 4, 16, 32, 1536, 200, 32, 48),
    # every step with a handful of rows/steps: the end-to-end test (tests/integration/test_demo.py)
    "smoke": DemoScale("smoke", 600, 6, 8, 2, 1, 4, 8, 256, 6, 16, 8),
}
SCALE_ENV = "MMDLM_DEMO_SCALE"


def get_scale(name: str | None = None) -> DemoScale:
    """`name`, else MMDLM_DEMO_SCALE, else `full`."""
    name = name or os.environ.get(SCALE_ENV) or "full"
    if name not in SCALES:
        raise ValueError(f"{SCALE_ENV}: unknown demo scale {name!r}; choose one of {', '.join(SCALES)}")
    return SCALES[name]


@dataclass
class DemoContext:
    client: Client
    token: str
    settings: Settings
    console: Console
    scale: DemoScale = field(default_factory=lambda: SCALES["full"])
    artifacts: dict[str, str] = field(default_factory=dict)  # role ("dataset", "model", ...) -> id
    jobs: dict[str, str] = field(default_factory=dict)  # step name -> job id
    results: dict[str, Any] = field(default_factory=dict)  # what the summary prints (and summary.json holds)

    def run_job(self, spec: dict[str, Any], *, title: str) -> dict[str, Any]:
        """Submit, follow with a progress bar, and return the finished job; raise if it did not succeed."""
        job = self.client.submit(spec)
        self.jobs[title] = job["id"]
        self.console.rule(f"[bold]{title}[/bold]  job {job['id']}")
        done = follow_job(self.client, job["id"], self.console, show_logs=True)
        if done["status"] != "succeeded":
            raise DemoFailed(f"{title} job {job['id']} ended {done['status']}: {done.get('error')}")
        return done

    def artifact_of(self, job: dict[str, Any], kind: str) -> str:
        """The job's (first) artifact of `kind`."""
        for artifact_id in job["artifacts"]:
            if self.client.artifact(artifact_id)["kind"] == kind:
                return artifact_id
        raise DemoFailed(f"job {job['id']} published no {kind!r} artifact")


@dataclass(frozen=True)
class DemoStep:
    name: str
    run: Callable[[DemoContext], None]
    description: str


class DemoFailed(Exception):
    pass


# --- steps ---------------------------------------------------------------------------------------------------

# One dataset for every model: the latent recipe's rows (mmdlm/demo_latent.py: byte-level BPE 2048 trained on
# the train split, 32-token rows, packing `pad` so that a row starts a document or continues one). A small
# vocabulary keeps the discrete models' output layer CPU-sized, and all models then read the same rows.
DEMO_DATA = {"kind": "prepare-data", "source": "bundled", "tokenizer": {"type": "bpe", "vocab_size": 2048},
             "seq_len": 32, "packing": "pad"}  # fmt: skip
BUNDLED_NOTE = (
    "bundled corpus: Wikipedia leads + King James Bible + Shakespeare (encyclopedic and Early Modern English); "
    "tiny models trained for minutes on CPU: a smoke test of the pipeline, not results to quote"
)


def prepare_data_step(ctx: DemoContext) -> None:
    spec = dict(DEMO_DATA)
    if ctx.scale.max_documents is not None:
        spec["max_documents"] = ctx.scale.max_documents
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
    if not verified:
        raise DemoFailed("the downloaded manifest does not match the artifact checksum")


DEMO_CLUSTERS = 64  # the `hdlm-64` variant


def clusters_step(ctx: DemoContext) -> None:
    """HDLM's token clusters of the dataset's tokenizer, as a `clusters` artifact."""
    if "clusters" not in {k["name"] for k in ctx.client.kinds()}:
        ctx.console.print("[yellow]skipped:[/yellow] this deployment has no `clusters` job kind, so no HDLM")
        return
    spec = {"kind": "clusters", "dataset": ctx.artifacts["dataset"], "num_clusters": DEMO_CLUSTERS}
    job = ctx.run_job(spec, title="clusters")
    ctx.artifacts["clusters"] = job["artifacts"][0]
    meta = ctx.client.artifact(ctx.artifacts["clusters"])["metadata"]
    ctx.console.print(f"clusters artifact {ctx.artifacts['clusters']}: "
                      f"{json.dumps({k: v for k, v in meta.items() if not isinstance(v, dict | list)})}",
                      highlight=False)  # fmt: skip


# The three discrete models: the `cpu-nano` presets (d=64, 2 blocks) of the variants mdlm, hdlm-64 and ar,
# trained with the same data, steps, batch and optimizer, so their tokens seen are equal.
LM_VARIANTS = {"mdlm": "mdlm", "hdlm": "hdlm-64", "ar": "ar"}


def lm_model(variant: str, clusters: str | None = None) -> dict[str, Any]:
    """The `model` section of the `cpu-nano/<variant>` preset (HDLM: `clusters` = the artifact id)."""
    model = load_mapping(preset_path(f"cpu-nano/{variant}"))["model"]
    if "clusters" in model:
        model["clusters"] = clusters
    return model


def lm_train_spec(ctx: DemoContext, family: str) -> dict[str, Any]:
    s = ctx.scale
    return {
        "kind": "train", "dataset": ctx.artifacts["dataset"],
        "model": lm_model(LM_VARIANTS[family], ctx.artifacts.get("clusters")),
        "data": {"batch_size": s.lm_batch_size}, "steps": s.lm_steps,
        "optimizer": {"lr": 3e-3}, "schedule": {"kind": "cosine", "warmup_steps": min(20, s.lm_steps - 1),
                                                "min_lr_ratio": 0.1},
        "precision": "fp32",  # see train_latent_step
        "checkpoint": {"interval": max(1, s.lm_steps // 2), "keep_last": 1},
        "eval": {"interval": max(1, s.lm_steps // 2), "batches": 2},
        "log": {"interval": max(1, s.lm_steps // 10)}, "nproc_per_node": s.lm_ranks,
    }  # fmt: skip


def _show_training(ctx: DemoContext, job: dict[str, Any], model_id: str) -> None:
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
        f"model artifact {model_id}: {meta['family']} trained {meta['step']} steps on {meta['world_size']} rank(s) "
        f"({meta['precision']}), {artifact['bytes'] / 1e6:.1f} MB in {len(artifact['files'])} files",
        highlight=False,
    )


def train_lm_step(family: str) -> Callable[[DemoContext], None]:
    def run(ctx: DemoContext) -> None:
        if family == "hdlm" and "clusters" not in ctx.artifacts:
            ctx.console.print("[yellow]skipped:[/yellow] HDLM needs the clusters step's artifact")
            return
        job = ctx.run_job(lm_train_spec(ctx, family), title=f"train {family}")
        model_id = ctx.artifact_of(job, "model")
        ctx.artifacts[f"model:{family}"] = model_id
        if family == "mdlm":
            ctx.artifacts["model"] = model_id
        _show_training(ctx, job, model_id)

    run.__doc__ = f"Train the cpu-nano {LM_VARIANTS[family]} model through the `train` job kind."
    return run


DEMO_SAMPLE = {"steps": 32, "temperature": 1.0, "top_p": 0.95, "seed": 0}


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
        json={"model": model, "prompt": "The king said", "max_tokens": 16, "n": 1, "seed": 1, "steps": 16},
    )  # fmt: skip
    choice = completion["choices"][0]
    ctx.console.print(
        f"POST /v1/completions: {choice['text'][:160]!r} (finish {choice['finish_reason']}, "
        f"usage {completion['usage']})",
        highlight=False,
    )


def lm_evaluate_spec(ctx: DemoContext, family: str, *, data_reference: bool) -> dict[str, Any]:
    """One protocol for every discrete model: the same rows, time samples, sample count, sampling steps,
    sampler settings and reference LM (only AR, which has no sampling steps, differs there)."""
    s = ctx.scale
    generative: dict[str, Any] = {
        "sample": {"num_samples": s.eval_samples, "steps": s.sampling_steps, "seed": 0},
        "reference_batch_size": 8, "num_examples": 1, "data_reference": data_reference,
    }  # fmt: skip
    return {"kind": "evaluate", "model": ctx.artifacts[f"model:{family}"], "dataset": ctx.artifacts["dataset"],
            "batch_size": 64, "max_batches": s.eval_batches, "num_time_samples": 2, "seed": 0,
            "generative": generative}  # fmt: skip


def _print_evaluation(ctx: DemoContext, evaluation: str, document: dict[str, Any]) -> None:
    report, summary = document["report"], document["summary"]
    table = Table("metric", "value", "protocol", title=f"evaluation {evaluation} of {document['family']} model "
                  f"{document['model']}")  # fmt: skip
    if "nll" in report:
        nll = report["nll"]["protocol"]
        bound = (
            "exact"
            if nll["estimator"] == "exact"
            else f"{nll['estimator']} bound, {nll['num_time_samples']} time samples"
        )
        table.add_row("validation PPL", f"{summary['val_ppl']:.2f}",
                      f"{bound}, {nll['split']} split, context {nll['context_length']}")  # fmt: skip
    if gen := report.get("generative"):
        proto = gen["protocol"]
        steps = f"{proto['sampling_steps']} steps" if proto.get("sampling_steps") else "left to right"
        table.add_row("generative PPL", f"{summary['gen_ppl']:.2f}",
                      f"{proto['num_samples']} samples, {steps}, {proto['sampler_precision']} sampler, "
                      f"{proto['precision']} network")  # fmt: skip
        table.add_row("  sample entropy", f"{summary['gen_entropy']:.3f} nats", "unigram, per sample (mean)")
    if "data_gen_ppl" in summary:
        table.add_row("real rows: gen PPL", f"{summary['data_gen_ppl']:.2f}",
                      f"entropy {summary['data_entropy']:.3f} nats (what data scores under this reference)")  # fmt: skip
    for row in report.get("sweep", {}).get("rows", []):
        table.add_row(f"  sweep {row['protocol']['sampling_steps']} steps", f"{row['gen_ppl']:.2f}",
                      f"entropy {row['unigram_entropy']:.3f} nats")  # fmt: skip
    ctx.console.print(table)
    if gen := report.get("generative"):
        for example in gen.get("examples", [])[:1]:
            ctx.console.print(f"  sample: {example[:160]!r}", highlight=False)


def _evaluate(ctx: DemoContext, spec: dict[str, Any], *, title: str) -> dict[str, Any]:
    job = ctx.run_job(spec, title=title)
    evaluation = ctx.artifact_of(job, "evaluation")
    document = json.loads(ctx.client.download(evaluation))
    document["artifact"] = evaluation
    return document


def evaluate_step(ctx: DemoContext) -> None:
    """An `evaluate` job per discrete model: validation NLL/PPL, generative PPL with its entropy under the
    reference LM, the same on real validation rows (first model), a steps sweep (MDLM)."""
    first = True
    for family in LM_VARIANTS:
        if f"model:{family}" not in ctx.artifacts:
            continue
        spec = lm_evaluate_spec(ctx, family, data_reference=first)
        if family == "mdlm":
            spec["generative"]["steps_sweep"] = sorted(
                {max(1, ctx.scale.sampling_steps // 4), ctx.scale.sampling_steps}
            )
        document = _evaluate(ctx, spec, title=f"evaluate {family}")
        ctx.artifacts[f"evaluation:{family}"] = document["artifact"]
        _print_evaluation(ctx, document["artifact"], document)
        if first:
            proto = document["report"]["generative"]["protocol"]
            ctx.console.print(f"reference model: {proto['reference_model']}", highlight=False)
            for note in proto.get("notes", []):
                ctx.console.print(f"note: {note}", style="dim", highlight=False)
            ctx.results["data_reference"] = {
                k: document["summary"][k] for k in ("data_gen_ppl", "data_entropy")
            }
            ctx.results["reference_model"] = proto["reference_model"]
        first = False


COMPARE_COLUMNS = {"val_ppl": "val PPL", "gen_ppl": "gen PPL", "gen_entropy": "entropy (nats)"}


def compare_step(ctx: DemoContext) -> None:
    """GET /v1/models/compare over the discrete models: their latest evaluations side by side, each metric
    group flagged where the protocols differ (AR's NLL is exact where diffusion's is a bound, and AR has no
    sampling steps)."""
    families = [f for f in LM_VARIANTS if f"model:{f}" in ctx.artifacts]
    ids = [ctx.artifacts[f"model:{f}"] for f in families]
    ctx.console.rule("[bold]compare[/bold]  GET /v1/models/compare")
    out = ctx.client.request("GET", "/v1/models/compare", params={"ids": ",".join(ids)})
    table = Table(
        "model", *COMPARE_COLUMNS.values(), "not comparable on", title="discrete models, one protocol"
    )
    rows = {}
    for family, row in zip(families, out["rows"], strict=True):
        values = {k: row["values"].get(k) for k in COMPARE_COLUMNS}
        rows[family] = {**values, "model": row["model"], "not_comparable": row["not_comparable"]}
        flags = sorted({f for fields in row["not_comparable"].values() for f in fields})
        table.add_row(f"{family} ({LM_VARIANTS[family]})", *(f"{v:.2f}" if v is not None else "-" for v in values.values()),
                      ", ".join(flags) or "-")  # fmt: skip
    if data := ctx.results.get("data_reference"):
        table.add_row(
            "real validation rows", "", f"{data['data_gen_ppl']:.2f}", f"{data['data_entropy']:.3f}", ""
        )
    ctx.console.print(table)
    for group, entry in out["groups"].items():
        if group not in ("nll", "generative"):
            continue
        if entry.get("mismatches"):
            for name, per_model in entry["mismatches"].items():
                by_family = {
                    f: per_model.get(m) for f, m in zip(families, ids, strict=True) if m in per_model
                }
                ctx.console.print(f"{group}: protocol field {name} differs: {json.dumps(by_family, default=str)}",
                                  highlight=False)  # fmt: skip
        else:
            ctx.console.print(f"{group}: one protocol for {', '.join(families)}", highlight=False)
    if "mdlm" in families and "hdlm" in families:
        pair = ctx.client.request("GET", "/v1/models/compare", params={"ids": f"{ids[0]},{ids[1]}"})
        verdict = {g: pair["groups"][g]["comparable"] for g in ("nll", "generative") if g in pair["groups"]}
        ctx.results["diffusion_comparable"] = verdict
        ctx.console.print(
            f"mdlm vs hdlm alone: {', '.join(f'{g} ' + ('comparable' if v else 'NOT comparable') for g, v in verdict.items())} "
            "(same estimator, time samples, rows, sampling steps, sampler and reference LM)",
            highlight=False,
        )
    ar = rows.get("ar", {}).get("not_comparable", {})
    ctx.results["ar_differs_on"] = {
        group: sorted({f for column, fields in ar.items() if column.startswith(prefix) for f in fields})
        for group, prefix in (("nll", "val_"), ("generative", "gen_"))
    }
    ctx.console.print(
        "AR differs only where it must: its NLL is exact (diffusion: an ELBO upper bound, which can only "
        "overstate its PPL), and it samples left to right (no sampling steps); the reference LM, sample count and "
        "sampler settings are shared.",
        highlight=False,
    )
    ctx.results["discrete"] = rows


def encode_step(ctx: DemoContext) -> None:
    """MiniLM latents of the dataset's rows (an `encode` job with its `encode-shard` tasks)."""
    s = ctx.scale
    spec = {"kind": "encode", "dataset": ctx.artifacts["dataset"],
            "encoder": {"name": "minilm", "precision": "bf16", "batch_size": 128},
            "max_rows": s.encode_rows, "max_validation_rows": max(s.encode_rows // 8, 2 * s.latent_eval_rows),
            "shard_rows": s.encode_rows}  # fmt: skip
    job = ctx.run_job(spec, title="encode")
    latent_id = ctx.artifact_of(job, "latent-dataset")
    ctx.artifacts["latent-dataset"] = latent_id
    artifact = ctx.client.artifact(latent_id)
    meta = artifact["metadata"]
    ctx.console.print(
        f"latent-dataset {latent_id}: {json.dumps({k: v for k, v in meta.items() if not isinstance(v, dict | list)})}",
        highlight=False,
    )


def train_latent_step(ctx: DemoContext) -> None:
    """An MMDiT (the tuned recipe of mmdlm/demo_latent.py) trained in mixture mode as a `train` job."""
    s = ctx.scale
    # fp32, not the recipe's bf16: CPUs without bf16 units (AVX-512 but no AVX512_BF16, as on the machine the
    # demo was sized on) emulate bf16 autocast; 20 MMDiT steps took 85 s in bf16 and 71 s in fp32 there.
    spec = {
        "kind": "train", "dataset": ctx.artifacts["latent-dataset"],
        "model": {"family": "mmdit", "model": LATENT_MODEL, "objective": LATENT_OBJECTIVE},
        "data": {"batch_size": s.latent_batch_size}, "steps": s.latent_steps,
        "optimizer": {"lr": 2e-3, "weight_decay": 0.0},
        "schedule": {"kind": "cosine", "warmup_steps": min(40, s.latent_steps - 1), "min_lr_ratio": 0.1},
        "precision": "fp32", "checkpoint": {"interval": s.latent_steps, "keep_last": 1, "keep_best": False},
        "eval": {"interval": s.latent_steps, "batches": 2}, "log": {"interval": max(1, s.latent_steps // 10)},
        "nproc_per_node": 1,
    }  # fmt: skip
    job = ctx.run_job(spec, title="train mmdit")
    model_id = ctx.artifact_of(job, "model")
    ctx.artifacts["model:mmdit"] = model_id
    _show_training(ctx, job, model_id)


def evaluate_latent_step(ctx: DemoContext) -> None:
    """t2l cosine (model latents of held-out texts vs the encoder's) against the train-mean latent, and the
    l2t round trip (encoder(text generated from z) vs z) against unconditional samples."""
    s = ctx.scale
    spec = {"kind": "evaluate", "model": ctx.artifacts["model:mmdit"], "dataset": ctx.artifacts["latent-dataset"],
            "batch_size": 32, "max_batches": 2, "num_time_samples": 1, "seed": 0, "generative": None,
            "latent": {"num_rows": s.latent_eval_rows, "batch_size": s.latent_eval_rows,
                       "sample": {"text_steps": 32, "latent_steps": 25, "seed": 0},
                       "l2t_guidance_scale": L2T_GUIDANCE}}  # fmt: skip
    document = _evaluate(ctx, spec, title="evaluate mmdit")
    ctx.artifacts["evaluation:mmdit"] = document["artifact"]
    t2l, l2t = document["latent"]["t2l"], document["latent"]["l2t"]
    sample = t2l["protocol"]["sample"]
    table = Table("metric", "model", "baseline", "protocol", title=f"evaluation {document['artifact']} of mmdit model "
                  f"{document['model']}")  # fmt: skip
    table.add_row("t2l cosine (1 draw)", f"{t2l['t2l_cosine']:.3f}", f"{t2l['mean_latent_cosine']:.3f} mean latent",
                  f"{t2l['num_rows']} held-out rows, {sample['latent_steps']} DDIM steps")  # fmt: skip
    table.add_row(f"t2l cosine ({t2l['num_draws']}-draw mean)", f"{t2l['t2l_mean_cosine']:.3f}",
                  f"{t2l['mean_latent_cosine']:.3f} mean latent", "same rows")  # fmt: skip
    table.add_row("l2t round-trip cosine", f"{l2t['l2t_round_trip_cosine']:.3f}",
                  f"{l2t['unconditional_cosine']:.3f} unconditional",
                  f"{l2t['num_rows']} rows, {sample['text_steps']} text steps, guidance {L2T_GUIDANCE:g}, "
                  f"win rate {l2t['win_rate']:.2f}")  # fmt: skip
    if "val_ppl" in document["summary"]:
        table.add_row(
            "text PPL given z", f"{document['summary']['val_ppl']:.2f}", "", "elbo bound, -log p(x | z)"
        )
    ctx.console.print(table)
    for example in l2t.get("examples", [])[:1]:
        ctx.console.print(f"  reference:     {example['reference'][:120]!r}", highlight=False)
        ctx.console.print(f"  from its z:    {example['conditional'][:120]!r}", highlight=False)
        ctx.console.print(f"  unconditional: {example['unconditional'][:120]!r}", highlight=False)
    ctx.results["latent"] = {
        "t2l_cosine": t2l["t2l_cosine"], "t2l_mean_cosine": t2l["t2l_mean_cosine"],
        "t2l_baseline_mean_latent": t2l["mean_latent_cosine"], "l2t_round_trip_cosine": l2t["l2t_round_trip_cosine"],
        "l2t_baseline_unconditional": l2t["unconditional_cosine"], "l2t_win_rate": l2t["win_rate"],
        "rows": l2t["num_rows"], "num_draws": t2l["num_draws"],
    }  # fmt: skip


def _delta(value: float, baseline: float) -> str:
    return f"{value - baseline:+.3f}, {'above' if value > baseline else 'NOT above'} baseline"


def summary_step(ctx: DemoContext) -> None:
    """Every headline number next to its baseline and protocol, in one table (and summary.json)."""
    s = ctx.scale
    table = Table(
        "model", "metric", "value", "baseline / reference", title=f"MM-DLM demo summary ({s.name} scale)"
    )
    for family, row in ctx.results.get("discrete", {}).items():
        tokens = s.lm_steps * s.lm_batch_size * s.lm_ranks * 32
        name = f"{family} ({tokens:,} tokens)"
        bound = "exact" if family == "ar" else "<= (ELBO bound)"
        data = ctx.results.get("data_reference", {})
        table.add_row(name, "val PPL", f"{row['val_ppl']:.1f}", bound)
        table.add_row(
            "", "gen PPL", f"{row['gen_ppl']:.1f}", f"real rows {data.get('data_gen_ppl', float('nan')):.1f}"
        )
        table.add_row(
            "",
            "entropy",
            f"{row['gen_entropy']:.3f}",
            f"real rows {data.get('data_entropy', float('nan')):.3f}",
        )
    if latent := ctx.results.get("latent"):
        table.add_row("mmdit (mixture)", "t2l cosine", f"{latent['t2l_cosine']:.3f}",
                      f"mean latent {latent['t2l_baseline_mean_latent']:.3f} ({_delta(latent['t2l_cosine'], latent['t2l_baseline_mean_latent'])})")  # fmt: skip
        table.add_row("", f"t2l cosine ({latent['num_draws']}-draw mean)", f"{latent['t2l_mean_cosine']:.3f}",
                      f"mean latent {latent['t2l_baseline_mean_latent']:.3f} ({_delta(latent['t2l_mean_cosine'], latent['t2l_baseline_mean_latent'])})")  # fmt: skip
        table.add_row("", "l2t round trip", f"{latent['l2t_round_trip_cosine']:.3f}",
                      f"unconditional {latent['l2t_baseline_unconditional']:.3f} ({_delta(latent['l2t_round_trip_cosine'], latent['l2t_baseline_unconditional'])})")  # fmt: skip
    ctx.console.print(table)
    ctx.console.print(
        f"protocol: validation split of the same dataset, {s.eval_batches} x 64 rows for NLL; {s.eval_samples} samples "
        f"({s.sampling_steps} steps for diffusion) scored by {ctx.results.get('reference_model', 'the reference LM')}; "
        f"latent figures on {ctx.results.get('latent', {}).get('rows', '?')} held-out rows",
        highlight=False,
    )
    ctx.console.print(f"note: {BUNDLED_NOTE}", style="dim", highlight=False)


STEPS: list[DemoStep] = [
    DemoStep("prepare-data", prepare_data_step, "tokenize the bundled corpus (BPE 2048, 32-token rows)"),
    DemoStep("clusters", clusters_step, f"{DEMO_CLUSTERS} HDLM token clusters of that tokenizer"),
    DemoStep("train-mdlm", train_lm_step("mdlm"), "train a cpu-nano MDLM as a `train` job (live progress)"),
    DemoStep("train-hdlm", train_lm_step("hdlm"), "train a cpu-nano HDLM (64 clusters) as a `train` job"),
    DemoStep("train-ar", train_lm_step("ar"), "train the cpu-nano AR baseline as a `train` job"),
    DemoStep("generate", generate_step, "sample the MDLM through the REST API (gateway -> sampler service)"),
    DemoStep(
        "evaluate", evaluate_step, "an `evaluate` job per model: NLL, generative PPL + entropy, protocol"
    ),
    DemoStep(
        "compare", compare_step, "the models side by side (GET /v1/models/compare flags protocol differences)"
    ),
    DemoStep("encode", encode_step, "MiniLM latents of the dataset rows (an `encode` job -> latent-dataset)"),
    DemoStep("train-mmdit", train_latent_step, "train a CPU-sized MMDiT in mixture mode as a `train` job"),
    DemoStep("evaluate-mmdit", evaluate_latent_step, "t2l cosine and l2t round trip next to their baselines"),
    DemoStep("summary", summary_step, "every headline number next to its baseline"),
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


def run_demo(
    console: Console,
    steps: list[DemoStep] | None = None,
    settings: Settings | None = None,
    scale: DemoScale | str | None = None,
    keep: bool = False,
) -> int:
    """Run the demo; returns the process exit code (0 = every step succeeded). What it measured is also
    written to <home>/demo/summary.json (scale, per-step seconds, artifact ids, results, status).
    It ends by printing the dashboard's URL; with `keep` the stack stays up (for a look at the jobs in the
    dashboard) until Ctrl-C, with the demo user's token in <home>/demo/token (mode 0600)."""
    settings = settings or Settings()
    scale = scale if isinstance(scale, DemoScale) else get_scale(scale)
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
    console.print(f"[bold]MM-DLM demo[/bold] ({scale.name} scale): embedded API on 127.0.0.1:{port}, "
                  f"files under {settings.home}")  # fmt: skip
    procs = [
        _spawn(["serve", "--host", "127.0.0.1", "--port", str(port)], logs / "api.log", env),
        _spawn(["worker", "--queues", "encode,train,sample"], logs / "worker.log", env),
        _spawn(["serve-sampler", "--host", "127.0.0.1"], logs / "sampler.log", env),
    ]
    client = Client(f"http://127.0.0.1:{port}", token, timeout_s=120)
    ctx = DemoContext(client=client, token=token, settings=settings, console=console, scale=scale)
    started = time.monotonic()
    seconds: dict[str, float] = {}
    status, code = "failed", 1
    try:
        try:
            _wait_ready(client, procs)
            seconds["start"] = round(time.monotonic() - started, 1)
            for step in steps if steps is not None else STEPS:
                console.print(f"[bold cyan]step {step.name}[/bold cyan]: {step.description}")
                step_started = time.monotonic()
                step.run(ctx)
                seconds[step.name] = round(time.monotonic() - step_started, 1)
            status, code = "succeeded", 0
        except (DemoFailed, ClientError) as exc:
            console.print(f"[red]demo failed:[/red] {exc}", highlight=False)
            ctx.results["error"] = str(exc)
        except KeyboardInterrupt:
            console.print("[yellow]interrupted[/yellow]")
            status, code = "interrupted", 130
        finally:
            client.close()
            total = time.monotonic() - started
            summary = {"status": status, "scale": asdict(scale), "seconds": {**seconds, "total": round(total, 1)},
                       "artifacts": ctx.artifacts, "jobs": ctx.jobs, "results": ctx.results}  # fmt: skip
            logs.mkdir(parents=True, exist_ok=True)
            (logs / "summary.json").write_text(
                json.dumps(summary, indent=2, default=str) + "\n", encoding="utf-8"
            )
        if code == 0:
            console.print(f"[bold green]demo finished[/bold green] in {total:.0f}s "
                          f"({', '.join(f'{k} {v:.0f}s' for k, v in seconds.items())}); summary in {logs / 'summary.json'}")  # fmt: skip
        if status != "interrupted":
            _show_dashboard(console, port, token, logs, procs, keep=keep)
    finally:
        for proc in reversed(procs):
            _stop(proc)
    return code


DASHBOARD_PATH = "/ui"


def _show_dashboard(
    console: Console, port: int, token: str, logs: Path, procs: list[subprocess.Popen[bytes]], *, keep: bool
) -> None:
    """Print the dashboard's URL; with `keep`, hold the stack up until Ctrl-C (or SIGTERM, or one of its
    processes exiting). The token goes to a 0600 file, never to the console or a log."""
    url = f"http://127.0.0.1:{port}{DASHBOARD_PATH}"
    if not keep:
        console.print(f"dashboard: {url} (stopped with the demo: `mmdlm demo --keep` or "
                      "`make demo ARGS=--keep` leaves the stack up for a look)", highlight=False)  # fmt: skip
        return
    token_file = logs / "token"
    token_file.unlink(missing_ok=True)
    fd = os.open(token_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(token + "\n")

    def interrupt(*_: object) -> None:
        raise KeyboardInterrupt("SIGTERM")

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        console.print(f"[bold]dashboard:[/bold] {url}", highlight=False)
        console.print(f"sign in with the demo user's token: `cat {token_file}`; the stack stays up until Ctrl-C",
                      highlight=False)  # fmt: skip
        while all(proc.poll() is None for proc in procs):
            time.sleep(0.5)
        console.print("[yellow]a demo process exited; stopping the stack[/yellow] (see its log in "
                      f"{logs})", highlight=False)  # fmt: skip
    except KeyboardInterrupt:
        console.print("stopping the demo stack")
    finally:
        signal.signal(signal.SIGTERM, previous)
