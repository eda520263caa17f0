"""Both image-MMDiT variants (continuous: Gaussian diffusion on pixels; discrete: masked diffusion on 17
grey levels) trained at EQUAL steps on the captioned sklearn digits through the real training loop
(`mmdlm.demo_image`, the learning test's code), then scored by `mmdlm.eval.images` with ONE judge
classifier (trained once on the real train split) and equal sampler steps for both.

Table: t2i accuracy (and its unconditional baseline, the judge's ceiling), Fréchet distance on the judge's
features (and the unconditional / real-train values), caption accuracy (and the image-hidden baseline),
samples/s of t2i generation (conditional + unconditional calls, the same batch for both variants, one
process, CPU). Writes var/bench/image_variants.json and a PNG grid per variant
(var/bench/image_grid_<variant>.png: one row per digit zero..nine, the t2i samples for its captions).

Default 1000 steps: at 400 the discrete variant has learnt text -> image only partly and image -> text
not at all (measured 2026-12-06: t2i 0.26 vs 0.06, captions 0.07 vs 0.11 hidden), while the continuous one
(x0-prediction) already has both (t2i 0.81 vs 0.12, captions 0.64 vs 0.12).

    python bench/image_variants.py [--steps 1000] [--eval-images 100] [--eval-steps 20] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from mmdlm.data.png import save_png_grid  # noqa: E402
from mmdlm.demo_image import run  # noqa: E402

VARIANTS = ("continuous", "discrete")


def grid_by_label(images: np.ndarray, labels: np.ndarray, per_row: int = 8) -> np.ndarray:
    """Rows of `per_row` samples per label 0..9 (fewer when the eval set has fewer of a label)."""
    rows = []
    for label in range(10):
        picked = images[labels == label][:per_row]
        pad = np.full((per_row - len(picked), *images.shape[1:]), -1.0, dtype=np.float32)
        rows.append(np.concatenate([picked.astype(np.float32), pad]))
    return np.concatenate(rows)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--eval-images", type=int, default=100)
    parser.add_argument("--eval-steps", type=int, default=20)
    parser.add_argument("--guidance", type=float, default=3.0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("var/bench"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    results, judge = {}, None
    with tempfile.TemporaryDirectory() as tmp:
        for variant in VARIANTS:
            r = run(
                Path(tmp) / variant, variant=variant, steps=args.steps, eval_images=args.eval_images,
                eval_steps=args.eval_steps, guidance=args.guidance, threads=args.threads, seed=args.seed,
                classifier=judge,
            )  # fmt: skip
            judge = r["classifier_model"]
            grid = grid_by_label(r["samples"]["t2i"], r["samples"]["t2i_labels"])
            png = save_png_grid(grid, args.out / f"image_grid_{variant}.png", nrow=8, padding=1, scale=4)
            results[variant] = {
                "t2i_accuracy": r["t2i"]["accuracy"],
                "t2i_unconditional_accuracy": r["t2i"]["unconditional_accuracy"],
                "classifier_accuracy": r["t2i"]["classifier_accuracy"],
                "frechet": r["frechet"]["distance"],
                "frechet_unconditional": r["frechet"]["unconditional_distance"],
                "frechet_real_train": r["frechet"]["real_train_distance"],
                "caption_accuracy": r["i2t"]["accuracy"],
                "caption_accuracy_image_hidden": r["i2t"]["unconditional_accuracy"],
                "samples_per_s": r["t2i"]["images_per_s"],
                "captions_per_s": r["i2t"]["captions_per_s"],
                "train_s": r["train"]["seconds"],
                "train_steps": r["train"]["steps"],
                "png_grid": str(png),
                "protocols": {k: r[k]["protocol"] for k in ("t2i", "frechet", "i2t")},
                "classifier": r["classifier"],
                "caption_examples": r["i2t"]["examples"],
            }
    header = (f"{'variant':<11} {'t2i acc':>8} {'uncond':>7} {'ceiling':>8} {'Fréchet':>8} {'uncond':>7} "
              f"{'real':>6} {'capt acc':>9} {'hidden':>7} {'img/s':>7} {'train s':>8}")  # fmt: skip
    print(header)
    for variant, r in results.items():
        print(f"{variant:<11} {r['t2i_accuracy']:>8.3f} {r['t2i_unconditional_accuracy']:>7.3f} "
              f"{r['classifier_accuracy']:>8.3f} {r['frechet']:>8.2f} {r['frechet_unconditional']:>7.2f} "
              f"{r['frechet_real_train']:>6.2f} {r['caption_accuracy']:>9.3f} "
              f"{r['caption_accuracy_image_hidden']:>7.3f} {r['samples_per_s']:>7.1f} {r['train_s']:>8.1f}")  # fmt: skip
    base = results["continuous"]["samples_per_s"]
    for r in results.values():
        r["samples_per_s_vs_continuous"] = r["samples_per_s"] / base
    out = {
        "bench": "image_variants",
        "data": "sklearn digits 8x8, captions 'a handwritten seven' etc., validation split",
        "args": {k: str(v) for k, v in vars(args).items()},
        "machine": {"platform": platform.platform(), "torch": torch.__version__, "threads": args.threads},
        "results": results,
    }
    path = args.out / "image_variants.json"
    path.write_text(json.dumps(out, indent=2))
    print(f"wrote {path} and " + ", ".join(r["png_grid"] for r in results.values()))


if __name__ == "__main__":
    main()
