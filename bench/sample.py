"""Sampling speed and network calls of the discrete families on a CPU preset.

For each family the same untrained-but-random network (the zero-initialised output layers are filled with
noise so the denoiser has preferences) draws `--num-samples` sequences of `--seq-len` tokens, one at a time
(batch 1, as the MDLM README measures), with `--steps` reverse steps:

  mdlm        time-independent denoiser, uncached (baseline) and cached (skip the call when z is unchanged):
              the cached run must return identical tokens with at most 20% of the calls at 1,000 steps;
  mdlm-t      time-conditioned denoiser, uncached and cached (cached reuses the prediction of an earlier t,
              an approximation: tokens differ, calls drop the same way);
  gidd, hdlm  uncached ancestral sampling (their exact posteriors change z at most steps);
  ar          the `ar` family's KV-cache generation through the same `generate` API, when it is registered.

Reported per row: network calls (nfe) per sample, nfe relative to the family's uncached run, median seconds per
sample, tokens/s. Writes a table to stdout and JSON to bench/results/sample.json.

    python bench/sample.py [--steps 1000] [--seq-len 128] [--num-samples 2] [--preset cpu-micro] [--vocab 8192]
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

import numpy as np  # noqa: E402
import torch  # noqa: E402

import mmdlm  # noqa: E402
from mmdlm.clusters import compute_clusters  # noqa: E402
from mmdlm.config.sample import SampleConfig  # noqa: E402
from mmdlm.data.vocab import VocabInfo  # noqa: E402
from mmdlm.families import Built, get_family, names  # noqa: E402


def randomise_zero_layers(built: Built, seed: int) -> None:
    """Fill the adaLN-zero / zero-init layers with noise: an all-zero head would make every draw uniform."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in built.model.parameters():
            if torch.count_nonzero(p) == 0:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    built.model.eval()


def run(family: str, built: Built, cfg: SampleConfig, num_samples: int) -> dict:
    """Draw samples one at a time (seeds 0..n-1); returns tokens, calls per sample and median seconds."""
    fam = get_family(family)
    tokens, nfe, seconds = [], [], []
    for seed in range(num_samples):
        out = fam.generate(built, cfg.model_copy(update={"seed": seed, "num_samples": 1}))
        tokens.append(out.tokens)
        nfe.append(out.nfe)
        seconds.append(out.elapsed_s)
    return {"tokens": torch.cat(tokens), "nfe": statistics.mean(nfe), "seconds": statistics.median(seconds)}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--num-samples", type=int, default=2)
    parser.add_argument("--preset", default="cpu-micro")
    parser.add_argument("--vocab", type=int, default=8192, help="tokenizer vocabulary size V")
    parser.add_argument("--clusters", type=int, default=64, help="HDLM cluster count")
    parser.add_argument("--families", default="mdlm,mdlm-t,gidd,hdlm,ar")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 suits these tiny models)")
    parser.add_argument("--compile", action="store_true", help="SampleConfig.compile: torch.compile the network")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "sample.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    vocab = VocabInfo(vocab_size=args.vocab, pad_id=0, mask_id=args.vocab - 1, bos_id=1, eos_id=2)
    model = {"preset": args.preset, "max_seq_len": max(args.seq_len, 128)}
    base = SampleConfig(steps=args.steps, seq_len=args.seq_len, num_samples=1, compile=args.compile)
    wanted = args.families.split(",")
    rows: list[dict] = []

    def add(name: str, sampler: str, result: dict, baseline: dict | None, identical: bool | None) -> None:
        rows.append(
            {
                "family": name,
                "sampler": sampler,
                "nfe_per_sample": result["nfe"],
                "nfe_vs_uncached": result["nfe"] / baseline["nfe"] if baseline else 1.0,
                "median_s_per_sample": result["seconds"],
                "tokens_per_s": args.seq_len / result["seconds"],
                "identical_to_uncached": identical,
            }
        )

    with tempfile.TemporaryDirectory() as tmp:
        for name in wanted:
            family = name.removesuffix("-t")
            if family not in names():
                continue
            spec: dict = {"family": family, "model": dict(model)}
            if family in ("mdlm", "gidd", "hdlm"):
                spec["model"]["time_conditioning"] = name != "mdlm"  # `mdlm`: time-independent denoiser
            if family == "hdlm":
                emb = np.random.default_rng(0).normal(size=(args.vocab, 16)).astype(np.float32)
                clusters = compute_clusters(
                    emb, args.clusters, source={"kind": "random"}, exclude_ids=[args.vocab - 1]
                )
                spec["clusters"] = str(clusters.save(Path(tmp) / "clusters"))
            if family == "ar":
                from mmdlm.config.ar import ARSpec

                spec = ARSpec.model_validate(spec)
            built = get_family(family).build(spec, vocab)
            randomise_zero_layers(built, seed=0)
            plain = run(family, built, base, args.num_samples)
            add(name, "ancestral" if family != "ar" else "kv-cache", plain, None, None)
            if family == "mdlm":
                cached = run(family, built, base.model_copy(update={"cached": True}), args.num_samples)
                same = bool(torch.equal(plain["tokens"], cached["tokens"]))
                add(name, "cached", cached, plain, same)

    protocol = {
        "preset": args.preset,
        "vocab_size": args.vocab,
        "hdlm_clusters": args.clusters,
        "steps": args.steps,
        "seq_len": args.seq_len,
        "samples": args.num_samples,
        "batch_size": 1,
        "float64_sampling": base.float64,
        "threads": args.threads,
        "compile": args.compile,
        "weights": "random (untrained)",
        "device": "cpu",
        "torch": torch.__version__,
        "machine": platform.processor() or platform.machine(),
        "mmdlm_version": mmdlm.__version__,
    }
    cached_rows = [r for r in rows if r["family"] == "mdlm" and r["sampler"] == "cached"]
    target = {
        "cached_nfe_ratio_max": 0.2,
        "met": bool(cached_rows)
        and all(r["nfe_vs_uncached"] <= 0.2 and r["identical_to_uncached"] for r in cached_rows),
    }
    header = f"{'family':8} {'sampler':10} {'nfe/sample':>10} {'vs uncached':>11} {'s/sample':>9} {'tok/s':>8} identical"
    print(
        f"sampling: {args.preset}, V={args.vocab}, T={args.steps}, L={args.seq_len}, batch 1, "
        f"{args.num_samples} samples, {args.threads} threads"
    )
    print(header)
    for r in rows:
        same = "" if r["identical_to_uncached"] is None else str(r["identical_to_uncached"])
        print(
            f"{r['family']:8} {r['sampler']:10} {r['nfe_per_sample']:>10.1f} {r['nfe_vs_uncached']:>11.3f} "
            f"{r['median_s_per_sample']:>9.3f} {r['tokens_per_s']:>8.1f} {same}"
        )
    print(
        f"target: cached MDLM <= 20% of uncached calls with identical output: {'met' if target['met'] else 'NOT met'}"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "protocol": protocol,
        "rows": rows,
        "target": target,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    args.out.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
