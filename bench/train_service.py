"""Trainer service benchmark: dispatch latency and the job system's overhead on training throughput.

Runs the SAME training twice on this machine:
  direct   `python -m torch.distributed.run --standalone --nproc_per_node=N -m mmdlm.training --config C`
  service  the same config as a `train` job through a real embedded platform (uvicorn API, Celery worker,
           SQLite job table, local store): torchrun under the worker, metrics tailed, checkpoints synced
and reports
  dispatch latency   submit -> end of the first optimizer step (the step-1 line of rank 0's metrics.jsonl)
  tokens/s           median of the per-log-interval `tokens_per_s` after the first 5 lines (both runs)
  overhead ratio     service / direct tokens/s (target >= 0.95)
Results: a table and bench/results/train_service.json. Timings on a shared 2-core machine are noisy:
quote medians from a quiet machine.

    python bench/train_service.py                       # CPU: cpu-nano MDLM, 2 gloo ranks, fp32
    python bench/train_service.py --device cuda --precision bf16 --nproc 8 --size small --steps 200
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")


def _args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--family", default="mdlm")
    p.add_argument("--size", default="cpu-nano", help="DiT preset (cpu-nano, cpu-micro, tiny, small, ...)")
    p.add_argument("--nproc", type=int, default=2)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"])
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=64)
    p.add_argument("--mode", default="both", choices=["both", "service", "direct"])
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "train_service.json")
    return p.parse_args()


def _spec(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "model": {
            "family": args.family,
            "model": {"preset": args.size, "max_seq_len": max(args.seq_len, 32)},
        },
        "data": {"batch_size": args.batch_size, "shuffle": True},
        "optimizer": {"lr": 1e-3},
        "schedule": {"kind": "cosine", "warmup_steps": 5},
        "steps": args.steps,
        "precision": args.precision,
        "device": args.device,
        "checkpoint": {"interval": max(args.steps // 3, 1), "keep_last": 2},
        "eval": {"interval": args.steps, "batches": 2},
        "log": {"interval": 2, "console": False},
        "seed": 0,
    }


def _tokens_per_s(metrics_path: Path) -> tuple[float, float]:
    lines = [json.loads(x) for x in metrics_path.read_text().splitlines() if x.strip()]
    train = [r for r in lines if "tokens_per_s" in r]
    steady = [r["tokens_per_s"] for r in train[5:]] or [r["tokens_per_s"] for r in train]
    first = next(r["time"] for r in train if r["step"] >= 1)
    return statistics.median(steady), first


def run_direct(args: argparse.Namespace, dataset: Path, work: Path) -> dict[str, Any]:
    from mmdlm.config.train import TrainConfig

    spec = _spec(args)
    run_dir = work / "direct-run"
    config = TrainConfig.model_validate(
        {**spec, "data": {**spec["data"], "dataset": str(dataset)}, "run_dir": str(run_dir)}
    )
    config.to_file(work / "direct.json")
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // args.nproc))}
    t0 = time.time()
    subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={args.nproc}",
         "-m", "mmdlm.training", "--config", str(work / "direct.json")],
        check=True, env=env, cwd=work, stdout=subprocess.DEVNULL,
    )  # fmt: skip
    wall = time.time() - t0
    tps, first = _tokens_per_s(run_dir / "metrics.jsonl")
    return {"tokens_per_s": tps, "wall_s": wall, "launch_to_first_step_s": first - t0}


def run_service(args: argparse.Namespace, dataset: Path, work: Path) -> dict[str, Any]:
    from tests.integration.trainer.conftest import publish_local_artifact
    from tests.utils.harness import Backend, Platform

    backend = Backend("embedded", {"MMDLM_HOME": str(work / "backend")})
    env = {"MMDLM_KEEP_SCRATCH": "true", "MMDLM_TRAIN_MAX_PROCS": str(max(8, args.nproc)),
           "MMDLM_LEASE_TTL_S": "30", "MMDLM_HEARTBEAT_INTERVAL_S": "0.5"}  # fmt: skip
    with Platform(backend, work / "platform", workers_queues=[["train"]], env=env) as p:
        dataset_id = publish_local_artifact(p, dataset, kind="dataset")
        t0 = time.time()
        job = p.client.submit(
            {"kind": "train", "dataset": dataset_id, "nproc_per_node": args.nproc, **_spec(args)}
        )
        done = p.wait(job["id"], timeout_s=3600)
        wall = time.time() - t0
        if done["status"] != "succeeded":
            raise SystemExit(f"service run ended {done['status']}: {done['error']}")
        assert p.settings.work_dir is not None
        metrics = p.settings.work_dir / "jobs" / job["id"] / "run" / "metrics.jsonl"
        tps, first = _tokens_per_s(metrics)
        api_tps = p.client.metrics(job["id"], ["tokens_per_s"])["series"]["tokens_per_s"]["values"]
    return {
        "tokens_per_s": tps, "wall_s": wall, "dispatch_latency_s": first - t0, "job_id": job["id"],
        "api_tokens_per_s_points": len(api_tps),
    }  # fmt: skip


def main() -> None:
    args = _args()
    from mmdlm.training.debug import prepare_debug_dataset

    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        work = Path(tmp)
        dataset = prepare_debug_dataset(
            work / "data", seq_len=args.seq_len, vocab_size=1024, documents_per_part=200
        )
        results: dict[str, Any] = {"config": vars(args) | {"out": str(args.out)}, "protocol": {
            "dataset": "bundled corpus slice (wiki+bible+shakespeare, 200 docs each), BPE 1024", "seq_len": args.seq_len,
            "tokens_per_s": "median over log lines after the first 5 (rank 0 metrics.jsonl, global tokens)",
            "dispatch_latency": "POST /v1/jobs -> end of optimizer step 1", "machine": f"{os.cpu_count()} CPUs",
        }}  # fmt: skip
        if args.mode in ("both", "direct"):
            results["direct"] = run_direct(args, dataset, work)
        if args.mode in ("both", "service"):
            results["service"] = run_service(args, dataset, work)
    if "direct" in results and "service" in results:
        results["overhead_ratio"] = results["service"]["tokens_per_s"] / results["direct"]["tokens_per_s"]
    print(f"{'run':<10}{'tokens/s':>12}{'wall s':>10}{'to step 1 s':>14}")
    for name in ("direct", "service"):
        if name in results:
            r = results[name]
            first = r.get("dispatch_latency_s", r.get("launch_to_first_step_s"))
            print(f"{name:<10}{r['tokens_per_s']:>12.0f}{r['wall_s']:>10.1f}{first:>14.2f}")
    if "overhead_ratio" in results:
        print(f"service / direct tokens/s = {results['overhead_ratio']:.3f} (target >= 0.95)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
