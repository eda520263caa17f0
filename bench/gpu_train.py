"""GPU training check: the `small` preset (d=768, 12 blocks, ~170M parameters with GPT-2's vocabulary) in
bf16 for a few hundred steps on one GPU, through the real training loop; prints tokens/s and MFU against
the GPU's dense bf16 peak (H100 SXM / H200: 989 TFLOP/s; H100 PCIe: 756) and against a matmul peak
measured in the same run.

Data: the bundled corpus tokenized with GPT-2 (prepared here, ~1 min), rows of --seq-len tokens.
FLOPs: `mmdlm.training.flops` (3 x hooked forward matmul FLOPs + attention). Throughput is the median over
the log windows after the first (torch.compile and warm-up land in the first window).

    python bench/gpu_train.py                                   # GPU: small, 300 steps, batch 32, seq 512
    python bench/gpu_train.py --device cpu --size cpu-nano --steps 6 --batch-size 2 --seq-len 64 --no-compile
"""

from __future__ import annotations

import argparse
import json
import os
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
from mmdlm.clusters import modulo_clusters  # noqa: E402
from mmdlm.config.data import PrepareDataConfig  # noqa: E402
from mmdlm.data import prepare_dataset  # noqa: E402
from mmdlm.data.tokens import TokenDataset  # noqa: E402
from mmdlm.training.debug import debug_train_config  # noqa: E402
from mmdlm.training.flops import matmul_peak_flops, train_step_flops  # noqa: E402
from mmdlm.training.metrics import read_metrics  # noqa: E402
from mmdlm.training.trainer import Trainer  # noqa: E402

DENSE_BF16_PEAK = {"H200": 989e12, "H100 PCIe": 756e12, "H100": 989e12, "A100": 312e12}


def spec_peak(name: str) -> tuple[str, float] | None:
    for key, value in DENSE_BF16_PEAK.items():  # ordered: "H100 PCIe" before "H100"
        if all(part in name for part in key.split()):
            return key, value
    return None


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--family", default="mdlm", choices=["mdlm", "gidd", "hdlm", "ar"])
    parser.add_argument("--clusters", type=int, default=64, help="HDLM: clusters `id mod C` (cost only)")
    parser.add_argument("--size", default="small")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--no-compile", dest="compile", action="store_false")
    parser.add_argument("--max-documents", type=int, default=None, help="limit the corpus (CPU smoke runs)")
    parser.add_argument("--out", default="bench/results/gpu_train.json")
    args = parser.parse_args()
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    log_every = max(1, min(25, args.steps // 4))
    torch.backends.cuda.matmul.allow_tf32 = True

    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        t0 = time.perf_counter()
        max_docs = args.max_documents or (300 if device.type == "cpu" else None)
        prepare_dataset(
            PrepareDataConfig.model_validate(
                {"source": "bundled", "tokenizer": "gpt2", "seq_len": args.seq_len, "max_documents": max_docs}
            ),
            data,
        )
        print(f"prepared data in {time.perf_counter() - t0:.0f} s", flush=True)
        family_fields = {}
        if args.family == "hdlm":
            ds = TokenDataset.open(data, verify=False)
            clusters = modulo_clusters(ds.tokenizer(), args.clusters, [ds.vocab.mask_id])
            family_fields["clusters"] = str(clusters.save(Path(tmp) / "clusters"))
        cfg = debug_train_config(
            args.family, data, Path(tmp) / "run", size=args.size, max_seq_len=args.seq_len, **family_fields,
            overrides={
                "steps": args.steps, "precision": "bf16", "device": args.device, "compile": args.compile,
                "data": {"batch_size": args.batch_size}, "optimizer": {"lr": 3e-4},
                "schedule": {"kind": "cosine", "warmup_steps": min(100, args.steps // 10)},
                "log": {"interval": log_every, "console": True}, "eval": {"interval": 10**9, "batches": 5},
                "checkpoint": {"interval": 10**9}, "save_final": False,
            },
        )  # fmt: skip
        trainer = Trainer(cfg)
        ran = trainer.config.precision
        batch = next(iter(trainer.train_loader))
        model_cfg = cfg.model.model
        flops_per_step = train_step_flops(
            trainer.raw_model, trainer.objective, batch, model_cfg.hidden_size, model_cfg.n_blocks
        )
        params = sum(p.numel() for p in trainer.raw_model.parameters())
        t0 = time.perf_counter()
        trainer.train()
        wall = time.perf_counter() - t0
        lines = [r for r in read_metrics(Path(tmp) / "run" / "metrics.jsonl") if "split" not in r]
        val = [r for r in read_metrics(Path(tmp) / "run" / "metrics.jsonl") if r.get("split") == "validation"]

    windows = lines[1:] or lines
    tokens_per_s = statistics.median(r["tokens_per_s"] for r in windows)
    steps_per_s = statistics.median(r["steps_per_s"] for r in windows)
    achieved = flops_per_step * steps_per_s
    # the peak of the precision that ran: bf16, or fp32 where bf16 is not native (mmdlm.precision)
    dtype = torch.bfloat16 if ran == "bf16" else torch.float32
    measured = matmul_peak_flops(dtype, 8192 if device.type == "cuda" else 1024, 10, device)
    known = spec_peak(name)
    result = {
        "benchmark": "gpu_train",
        "device": name,
        "mmdlm_version": mmdlm.__version__,
        "torch": torch.__version__,
        "args": vars(args),
        "params": params,
        "precision": ran,
        "flops_per_step": flops_per_step,
        "tokens_per_s": tokens_per_s,
        "achieved_flops": achieved,
        "matmul_peak_flops": measured,
        "mfu_vs_measured_matmul": achieved / measured,
        "spec_peak": known[0] if known else None,
        "mfu_vs_spec_peak": achieved / known[1] if known else None,
        "final_loss": lines[-1]["loss"] if lines else None,
        "validation_nll": val[-1]["nll"] if val else None,
        "wall_s": wall,
    }
    print(
        f"\n{name}: {args.family} {args.size} ({params / 1e6:.1f}M params), {ran}, batch {args.batch_size} x {args.seq_len}"
    )
    print(f"  tokens/s             {tokens_per_s:12,.0f}")
    print(f"  model FLOP/s         {achieved / 1e12:12.2f} T")
    print(
        f"  MFU vs measured {ran} matmul ({measured / 1e12:.1f} T): {100 * result['mfu_vs_measured_matmul']:.1f}%"
    )
    if known and ran == "bf16":
        print(
            f"  MFU vs {known[0]} dense bf16 peak ({known[1] / 1e12:.0f} T): {100 * result['mfu_vs_spec_peak']:.1f}%"
        )
    print(
        f"  loss {result['final_loss']}, validation NLL bound {result['validation_nll']}, wall {wall:.0f} s"
    )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
