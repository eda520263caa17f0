"""Training throughput per family, fp32 vs bf16 autocast, and MFU against the matmul peak of THIS machine.

For each family (mdlm, gidd, hdlm, ar) at a size preset (default `tiny`: d=512, 8 blocks) and sequence
length (default 512), the real training step (`Trainer._train_step`: forward, backward, gradient rescale,
clipping, fused AdamW) runs on GPT-2-tokenized rows of the bundled corpus (V = 50,259, so the DiT has
V_r = 50,304 rows, HDLM 64 clusters more). Timed steps follow warm-up steps; medians are reported.

Peak: the same run times `torch.matmul` of two n x n matrices (n = --gemm-size) in bf16 and in fp32 and
takes 2 n^3 / t (median of repeats) as that precision's peak; it is re-measured right before and after each
row and the highest value kept (a shared machine's load drifts). MFU = model FLOP/s / peak of the same
precision.

FLOPs per training step (`mmdlm.training.flops`, counted with hooks, not estimated from parameter counts):
    3 x F_linear + 3 x F_attention, F_linear = every nn.Linear call of one forward (2 x in x out x rows),
    F_attention = 4 B L^2 d per block; i.e. 6 N tokens + 12 n_layers d L tokens for a plain transformer.

    python bench/train.py [--size tiny --seq-len 512 --batch-size 4 --steps 4 --families mdlm,ar]
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

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

import mmdlm  # noqa: E402
from mmdlm.config.data import PrepareDataConfig  # noqa: E402
from mmdlm.data import prepare_dataset  # noqa: E402
from mmdlm.training.debug import debug_train_config  # noqa: E402
from mmdlm.training.flops import matmul_peak_flops, sync, train_step_flops  # noqa: E402
from mmdlm.training.trainer import Trainer  # noqa: E402


def step_flops(trainer: Trainer, batch: dict[str, torch.Tensor]) -> float:
    cfg = trainer.config.model.model
    return train_step_flops(trainer.raw_model, trainer.objective, batch, cfg.hidden_size, cfg.n_blocks)


def bench_family(family: str, args: argparse.Namespace, dataset: Path, clusters: Path | None, precision: str,
                 workdir: Path, device: str) -> dict:  # fmt: skip
    extra = {"clusters": str(clusters)} if family == "hdlm" else {}
    cfg = debug_train_config(
        family, dataset, workdir / f"{family}-{precision}", size=args.size, max_seq_len=args.seq_len,
        overrides={"precision": precision, "device": device, "data": {"batch_size": args.batch_size},
                   "compile": args.compile, "save_final": False, "steps": 10**6},
        **extra,
    )  # fmt: skip
    trainer = Trainer(cfg, logger=_Null())
    batch = next(trainer.train_loader)
    flops = step_flops(trainer, batch)
    for _ in range(args.warmup):
        trainer._train_step([next(trainer.train_loader)])
    sync(trainer.device)
    times = []
    for _ in range(args.steps):
        micro = [next(trainer.train_loader)]
        t0 = time.perf_counter()
        out = trainer._train_step(micro)
        out["grad_norm"].item()  # wait for the step
        sync(trainer.device)
        times.append(time.perf_counter() - t0)
    t = statistics.median(times)
    tokens = args.batch_size * args.seq_len
    params = sum(p.numel() for p in trainer.raw_model.parameters())
    return {
        "family": family,
        "precision": precision,
        "params": params,
        "step_s": t,
        "tokens_per_s": tokens / t,
        "flops_per_step": flops,
        "flops_per_s": flops / t,
    }


class _Null:
    def log(self, record: dict) -> None:
        pass

    def close(self) -> None:
        pass


def prepare(workdir: Path, seq_len: int, families: list[str]) -> tuple[Path, Path | None]:
    dataset = workdir / "gpt2-data"
    config = PrepareDataConfig.model_validate(
        {"source": {"type": "bundled", "parts": ["wiki"]}, "tokenizer": "gpt2", "seq_len": seq_len,
         "max_documents": 800, "validation_fraction": 0.05}
    )  # fmt: skip
    prepare_dataset(config, dataset)
    clusters = None
    if "hdlm" in families:
        import numpy as np

        from mmdlm.clusters import compute_clusters
        from mmdlm.data import TokenDataset

        vocab = TokenDataset.open(dataset).vocab
        # throughput does not depend on which tokens share a cluster: random 64-cluster assignment
        emb = np.random.default_rng(0).normal(size=(vocab.vocab_size, 8)).astype(np.float32)
        clusters = compute_clusters(
            emb, 64, source={"kind": "random"}, exclude_ids=[vocab.mask_id], max_iters=2
        )
        clusters = clusters.save(workdir / "clusters")
    return dataset, clusters


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", default="tiny")
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--steps", type=int, default=4, help="timed steps per configuration")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--families", default="mdlm,gidd,hdlm,ar")
    parser.add_argument("--precisions", default="fp32,bf16")
    parser.add_argument("--gemm-size", type=int, default=2048)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default="bench/results/train.json")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    families = [f for f in args.families.split(",") if f]
    precisions = [p for p in args.precisions.split(",") if p]

    peaks = {
        "bf16": matmul_peak_flops(torch.bfloat16, args.gemm_size, 5, device),
        "fp32": matmul_peak_flops(torch.float32, args.gemm_size, 5, device),
    }
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        dataset, clusters = prepare(workdir, args.seq_len, families)
        for family in families:
            for precision in precisions:
                dtype = torch.bfloat16 if precision == "bf16" else torch.float32
                # the machine may be shared: measure the peak right before and after this row, keep the best
                before = matmul_peak_flops(dtype, args.gemm_size, 5, device)
                row = bench_family(family, args, dataset, clusters, precision, workdir, args.device)
                row["peak_flops"] = max(
                    before, matmul_peak_flops(dtype, args.gemm_size, 5, device), peaks[precision]
                )
                row["mfu"] = row["flops_per_s"] / row["peak_flops"]
                rows.append(row)
                print(
                    f"{family:5s} {precision:5s} {row['tokens_per_s']:9.0f} tok/s  "
                    f"{row['flops_per_s'] / 1e9:8.1f} GFLOP/s  MFU {100 * row['mfu']:5.1f}%",
                    flush=True,
                )
    print()
    print(f"matmul peak ({args.gemm_size}^3): bf16 {peaks['bf16'] / 1e9:.1f} GFLOP/s, "
          f"fp32 {peaks['fp32'] / 1e9:.1f} GFLOP/s; {args.size}, seq {args.seq_len}, batch {args.batch_size}")  # fmt: skip
    print(f"{'family':6s} {'prec':5s} {'params':>10s} {'tok/s':>9s} {'bf16/fp32':>9s} {'MFU':>6s}")
    for row in rows:
        fp32 = next((r for r in rows if r["family"] == row["family"] and r["precision"] == "fp32"), None)
        speedup = (
            f"{row['tokens_per_s'] / fp32['tokens_per_s']:.2f}x"
            if fp32 and row["precision"] == "bf16"
            else ""
        )
        print(f"{row['family']:6s} {row['precision']:5s} {row['params'] / 1e6:9.1f}M {row['tokens_per_s']:9.0f} "
              f"{speedup:>9s} {100 * row['mfu']:5.1f}%")  # fmt: skip
    result = {
        "benchmark": "train",
        "mmdlm_version": mmdlm.__version__,
        "torch": torch.__version__,
        "machine": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "args": vars(args),
        "flop_formula": "3 x (forward nn.Linear FLOPs, hooked) + 3 x 4 B L^2 d n_blocks (attention)",
        "peaks_flops": peaks,
        "rows": rows,
        "target": "bf16 tiny seq 512: MFU >= 0.35 of the measured bf16 matmul peak",
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
