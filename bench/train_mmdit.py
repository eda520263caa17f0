"""Benchmark MMDiT training throughput (tokens/s, MFU) through the real training loop, against the MDLM DiT
of the same width and depth trained on the same rows in the same process.

Data: the bundled corpus (Wikipedia leads, KJV Bible, Shakespeare: say so next to any number), prepared with
a BPE tokenizer, `packing: pad`, then `--rows` train rows encoded with MiniLM (bf16) into a latent dataset.
Runs (same width/depth/heads/batch/precision):
  mdlm   DiT + masked diffusion on the token dataset (the baseline, 1.0x)
  mmdit  MMDiT in `mixture` mode (joint / t2l / l2t per sample) on the latent dataset
Each run trains `--warmup` steps, then `--steps` timed steps (`Trainer`, bf16 autocast on CPU or CUDA);
tokens/s is the loop's own count of non-pad text tokens. MFU = achieved FLOP/s / peak, with FLOPs per token
= 6 x (matmul parameters a token passes) + 12 x blocks x context x attention width (forward + backward),
and the peak: nominal dense bf16 for known GPUs, or on CPU a large bf16 matmul measured in this process.

    python bench/train_mmdit.py [--device cpu|cuda] [--steps 20] [--out bench/results/train_mmdit.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

import mmdlm  # noqa: E402
from mmdlm.config.data import PrepareDataConfig  # noqa: E402
from mmdlm.config.latent import EncodeConfig  # noqa: E402
from mmdlm.config.train import TrainConfig  # noqa: E402
from mmdlm.data.latent import encode_dataset  # noqa: E402
from mmdlm.data.prepare import prepare_dataset  # noqa: E402
from mmdlm.training.trainer import Trainer  # noqa: E402

GPU_PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12, "A10": 125e12}

SIZES = {
    "cpu": {"hidden_size": 256, "n_blocks": 4, "n_heads": 4, "cond_dim": 128, "seq_len": 64, "batch": 16},
    "cuda": {"hidden_size": 768, "n_blocks": 12, "n_heads": 12, "cond_dim": 256, "seq_len": 128, "batch": 64},
}


def peak_flops(device: torch.device) -> tuple[float, str]:
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, value in GPU_PEAK_BF16.items():
            if key in name:
                return value, f"nominal dense bf16 of {name}"
        return float("nan"), f"unknown GPU {name}"
    a = torch.randn(2048, 2048, dtype=torch.bfloat16)
    a @ a
    start = time.perf_counter()
    for _ in range(5):
        a @ a
    seconds = (time.perf_counter() - start) / 5
    return 2 * 2048**3 / seconds, "measured 2048^3 bf16 matmul on this CPU"


def flops_per_token(hidden: int, blocks: int, vocab: int, seq_len: int, mmdit: bool) -> float:
    """Training FLOPs per text token (6N rule + attention), latent tokens counted in for mmdit."""
    per_block = 4 * hidden * hidden + 8 * hidden * hidden  # qkv + out, 4x MLP
    n = blocks * per_block + hidden * vocab  # + output projection
    context = seq_len + (1 if mmdit else 0)
    attention = 12 * blocks * context * hidden
    tokens_per_text_token = context / seq_len
    return (6 * n + attention) * tokens_per_text_token


def run(config: dict) -> dict:
    trainer = Trainer(TrainConfig.model_validate(config))
    result = trainer.train()
    metrics = [json.loads(x) for x in (Path(config["run_dir"]) / "metrics.jsonl").read_text().splitlines()]
    windows = [m for m in metrics if "tokens_per_s" in m and m.get("split") != "validation"][
        1:
    ]  # skip warmup
    interval = config["log"]["interval"]
    seconds = sum(interval / m["steps_per_s"] for m in windows)
    tokens = sum(m["tokens_per_s"] * interval / m["steps_per_s"] for m in windows)
    return {
        "tokens_per_s": tokens / seconds,
        "steps_per_s": interval * len(windows) / seconds,
        "final_step": result.step,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--rows", type=int, default=2048)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("bench/results/train_mmdit.json"))
    args = parser.parse_args()
    if args.warmup < 1 or args.steps % args.warmup:
        parser.error("--steps must be a multiple of --warmup (log windows of --warmup steps are timed)")
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    size = SIZES["cuda" if device.type == "cuda" else "cpu"]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        tokens = root / "tokens"
        prepare_dataset(
            PrepareDataConfig(
                tokenizer={"type": "bpe", "vocab_size": 4096}, seq_len=size["seq_len"], packing="pad",
                max_documents=4000,
            ),
            tokens,
        )  # fmt: skip
        encode_dataset(
            EncodeConfig(
                max_rows=args.rows, encoder={"precision": "bf16", "batch_size": 128, "device": args.device}
            ),
            tokens,
            root / "latents",
        )
        dims = {k: size[k] for k in ("hidden_size", "n_blocks", "n_heads", "cond_dim")}
        common = {
            "steps": args.warmup + args.steps,
            "schedule": {"kind": "constant", "warmup_steps": 0},
            "precision": "bf16",
            "device": "cuda" if device.type == "cuda" else "cpu",
            "log": {"interval": args.warmup, "console": False},  # the first window is the warmup
            "eval": {"interval": 10**9},
            "checkpoint": {"interval": 10**9, "keep_best": False},
            "save_final": False,
            "resume": None,
        }
        rows = []
        for name in ("mdlm", "mmdit"):
            if name == "mdlm":
                model = {"family": "mdlm", "model": {**dims, "max_seq_len": size["seq_len"]}}
                data = str(tokens)
            else:
                model = {
                    "family": "mmdit",
                    "model": {**dims, "max_seq_len": size["seq_len"], "latent_dim": 384},
                }
                data = str(root / "latents")
            config = {
                "model": model,
                "data": {"dataset": data, "batch_size": size["batch"]},
                "run_dir": str(root / f"run-{name}"),
                **common,
            }
            stats = run(config)
            vocab = 4096 + (-4096) % 128
            fpt = flops_per_token(
                size["hidden_size"], size["n_blocks"], vocab, size["seq_len"], name == "mmdit"
            )
            rows.append({"model": name, **stats, "flops_per_token": fpt})
    peak, peak_source = peak_flops(device)
    base = rows[0]["tokens_per_s"]
    for row in rows:
        row["speed_vs_mdlm"] = row["tokens_per_s"] / base
        row["mfu"] = row["tokens_per_s"] * row["flops_per_token"] / peak
    print(f"{'model':<8} {'tokens/s':>10} {'steps/s':>8} {'vs mdlm':>8} {'MFU':>7}")
    for row in rows:
        print(
            f"{row['model']:<8} {row['tokens_per_s']:>10.1f} {row['steps_per_s']:>8.3f} "
            f"{row['speed_vs_mdlm']:>7.2f}x {100 * row['mfu']:>6.2f}%"
        )
    print(f"peak: {peak / 1e12:.2f} TFLOP/s ({peak_source}); bundled corpus (wiki + bible + shakespeare)")
    result = {
        "benchmark": "train_mmdit",
        "device": str(device),
        "size": size,
        "timed_steps": args.steps,
        "warmup_steps": args.warmup,
        "rows": rows,
        "peak_flops": peak,
        "peak_source": peak_source,
        "data": "bundled corpus, bpe-4096, packing pad; latents minilm bf16",
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "cpus": os.cpu_count(),
        },
        "torch": torch.__version__,
        "mmdlm_version": mmdlm.__version__,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
