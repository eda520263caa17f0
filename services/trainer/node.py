"""The node agent of `launcher: kubeflow` pods: `python -m services.trainer.node --job-id J --attempt N
-- torchrun <c10d options> -m services.trainer.rank --config <node dir>/train.json`.

It reads the attempt's bundle from the object store, stages the dataset (and clusters) and the newest
committed checkpoint into the node's job dir, runs the torchrun command, and meanwhile uploads what
appears in the run dir: checkpoints (commit marker last, keep last M + best), metrics.jsonl, this node's
rank logs, and at the end `final/` (commit marker last). Only the node hosting global rank 0 ever has
checkpoints, metrics or `final/`, so every node runs the same code without knowing its node rank.
Needs only the object store (MMDLM_STORE_* / MMDLM_S3_*), never the job table.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from services.common.artifacts import scan_directory
from services.common.settings import Settings
from services.common.store import ObjectStore, StoreError, open_store
from services.trainer import kubeflow
from services.trainer.sync import CheckpointSync, RunStore

logger = logging.getLogger("services.trainer.node")


def stage_files(store: ObjectStore, uri: str, files: list[dict[str, Any]], dest: Path) -> Path:
    for record in files:
        info = store.get_file(uri + record["path"], dest / record["path"])
        if info.sha256 != record["sha256"]:
            raise StoreError(f"{uri}{record['path']} is corrupt in the store (sha256 differs)")
    return dest


def upload_final(store: ObjectStore, job_id: str, final: Path) -> None:
    files = scan_directory(final)
    prefix = kubeflow.final_prefix(job_id)
    store.delete_prefix(prefix)
    for record in files:
        store.put_file(prefix + record.path, final / record.path)
    marker = {"files": [f.as_dict() for f in files], "uploaded_at": time.time()}
    store.put_bytes(kubeflow.final_marker_key(job_id), json.dumps(marker).encode())


# What the controllers inject (Kubeflow Trainer's torch plugin; the Training Operator's elastic policy)
# and torchrun reads: a `$(NAME)` Kubernetes could not expand means the runtime is not the torch one.
_UNEXPANDED = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


def unexpanded(command: list[str]) -> list[str]:
    """Variables referenced as `$(NAME)` in the command that Kubernetes left as they were (unset)."""
    return sorted({name for arg in command for name in _UNEXPANDED.findall(arg)})


def node_name() -> str:
    """`node-<rank>` from PET_NODE_RANK (Kubeflow Trainer), else the pod's host name (PyTorchJob pods
    are named <job>-worker-<i>), so each node's rank logs land in their own folder."""
    rank = os.environ.get("PET_NODE_RANK", "")
    return f"node-{rank}" if rank.isdigit() else os.uname().nodename


def resolve_paths(config: dict[str, Any], node_dir: Path) -> dict[str, Any]:
    """The bundle's config paths are relative to the node's job dir: make them absolute here."""
    config = json.loads(json.dumps(config))
    config["data"]["dataset"] = str(node_dir / config["data"]["dataset"])
    config["run_dir"] = str(node_dir / config["run_dir"])
    if isinstance(config.get("model"), dict) and isinstance(config["model"].get("clusters"), str):
        config["model"]["clusters"] = str(node_dir / config["model"]["clusters"])
    return config


def upload_logs(store: ObjectStore, run_store: RunStore, attempt: int, log_dir: Path) -> int:
    """torchrun's per-rank files (--log-dir, --redirects/--tee) to runs/<job>/logs/attempt-<n>/<node>/."""
    if not log_dir.is_dir():
        return 0
    prefix = f"{run_store.logs_prefix(attempt)}{node_name()}/"
    files = sorted(p for p in log_dir.rglob("*") if p.is_file())
    for path in files:
        store.put_file(prefix + path.relative_to(log_dir).as_posix(), path)
    return len(files)


def run_node(job_id: str, attempt: int, command: list[str], node_dir: Path, store: ObjectStore) -> int:
    missing = unexpanded(command)
    if missing:
        logger.error(
            "not set in this pod: %s (the torch runtime injects them; is the TrainJob's runtime "
            "`mlPolicy.torch`?); refusing to start torchrun",
            ", ".join(missing),
        )
        return 2
    node_dir = node_dir.resolve()
    bundle = json.loads(store.get_bytes(kubeflow.bundle_key(job_id, attempt)))
    config = resolve_paths(bundle["config"], node_dir)
    node_dir.mkdir(parents=True, exist_ok=True)
    stage_files(store, bundle["dataset"]["uri"], bundle["dataset"]["files"], Path(config["data"]["dataset"]))
    if bundle.get("clusters"):
        stage_files(
            store, bundle["clusters"]["uri"], bundle["clusters"]["files"], Path(config["model"]["clusters"])
        )
    run_dir = Path(config["run_dir"])
    run_store = RunStore(store, job_id)
    marker = run_store.restore(run_dir / "checkpoints")
    resume = marker.step if marker is not None else 0
    lines = [
        line for line in (run_store.metrics_lines() if marker else [])
        if line.strip() and json.loads(line).get("step", 0) <= resume and "event" not in json.loads(line)
    ]  # fmt: skip
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "metrics.jsonl").write_text("".join(line + "\n" for line in lines))
    (node_dir / "train.json").write_text(json.dumps(config, indent=2))
    logger.info(
        "job %s attempt %d: staged; resuming at step %d; running %s", job_id, attempt, resume, command
    )

    def before_commit() -> None:
        store.put_file(run_store.metrics_key, run_dir / "metrics.jsonl")

    sync = CheckpointSync(
        run_store, run_dir / "checkpoints", keep_last=bundle["checkpoint"]["keep_last"],
        keep_best=bundle["checkpoint"]["keep_best"], interval_s=5.0, before_commit=before_commit,
    ).start()  # fmt: skip
    metrics = run_dir / "metrics.jsonl"
    staged = metrics.stat().st_size

    def grew() -> bool:  # only the node of global rank 0 appends; the others must not upload their copy
        return metrics.is_file() and metrics.stat().st_size != staged

    proc = subprocess.Popen(command, cwd=node_dir, env=dict(os.environ))
    # the pod's SIGTERM reaches this process (tini's child): pass it on so torchrun stops the ranks
    with contextlib.suppress(ValueError):  # not the main thread (tests calling run_node)
        signal.signal(signal.SIGTERM, lambda *_: proc.send_signal(signal.SIGTERM))
    last_metrics = 0.0
    while proc.poll() is None:
        time.sleep(1.0)
        if grew() and time.monotonic() - last_metrics > 5.0:  # live curve for the worker
            store.put_file(run_store.metrics_key, metrics)
            last_metrics = time.monotonic()
    sync.stop()
    sync.sync_now()
    if grew():
        store.put_file(run_store.metrics_key, metrics)
    upload_logs(store, run_store, attempt, node_dir / "logs")
    if proc.returncode == 0 and (run_dir / "final" / "config.json").is_file():
        upload_final(store, job_id, run_dir / "final")
    return proc.returncode


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if "--" not in args:
        sys.stderr.write(
            "usage: python -m services.trainer.node --job-id J --attempt N [--dir D] -- torchrun ...\n"
        )
        return 2
    split = args.index("--")
    parser = argparse.ArgumentParser(prog="python -m services.trainer.node")
    parser.add_argument("--job-id", required=True)
    parser.add_argument("--attempt", type=int, required=True)
    parser.add_argument("--dir", default=kubeflow.NODE_DIR, help="the node's job dir (the bundle's paths)")
    opts = parser.parse_args(args[:split])
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    store = open_store(Settings())
    return run_node(opts.job_id, opts.attempt, args[split + 1 :], Path(opts.dir), store)


if __name__ == "__main__":
    sys.exit(main())
