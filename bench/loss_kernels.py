"""Fused loss kernels, eager against compiled (`mmdlm.diffusion.fused.compiled_kernels`), in ONE process.

Each cell is one forward + backward of a fused loss reduction on (rows x vocab) logits at the issue-12 config
(16 x 128 positions, GPT-2 vocabulary padded to 50,304 columns), eager and compiled alternated inside every
round (a shared machine's speed drifts), median over rounds; the first compiled call (the compile) is timed
separately. Eager is also timed at `--baseline-chunk-rows` (the CPU chunk size before issue 12's last change,
128) against the current `fused.CHUNK_ROWS`, in the same rounds. Functions: gidd_row_terms (GIDD+, every row), text_log_prob (MDLM: [MASK] rows, half at uniform t),
cluster_row_terms (HDLM, 64 clusters, half the rows).

    python bench/loss_kernels.py [--rounds 7] [--precisions fp32,bf16] [--out var/bench/loss_kernels.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

from mmdlm.diffusion import fused
from mmdlm.diffusion.fused import cluster_row_terms, compiled_kernels, gidd_row_terms, text_log_prob

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def cases(rows: int, vocab: int, text_ids: int, dtype: torch.dtype) -> dict[str, Callable[[], None]]:
    """name -> one forward + backward on fresh-gradient logits of `dtype`."""
    g = torch.Generator().manual_seed(0)
    logits = (torch.randn(rows, vocab, generator=g) * 3).to(dtype).requires_grad_()
    text = torch.zeros(vocab, dtype=torch.bool)
    text[:text_ids] = True
    x = torch.randint(0, text_ids, (rows,), generator=g)
    z = torch.randint(0, text_ids, (rows,), generator=g)
    k = torch.rand(rows, generator=g) * 1e4
    half = torch.rand(rows, generator=g) < 0.5
    segment = torch.randint(0, 64, (vocab,), generator=g)
    sel = segment[x]

    def backward(*terms: Tensor) -> None:
        logits.grad = None
        torch.stack([t.sum() for t in terms]).sum().backward()

    return {
        "gidd_row_terms": lambda: backward(*gidd_row_terms(logits, x, z, k, text)),
        "text_log_prob": lambda: backward(text_log_prob(logits, x, text, half)),
        "cluster_row_terms": lambda: backward(*cluster_row_terms(logits, x, sel, segment, text, rows=half)),
    }


def timed(fn: Callable[[], None], compiled: bool, chunk_rows: int | None = None) -> float:
    """Seconds of one call, compiled or eager, at `chunk_rows` rows per CPU chunk (the default if None)."""
    default = fused.CHUNK_ROWS
    fused.CHUNK_ROWS = chunk_rows or default
    try:
        with compiled_kernels(compiled):
            t0 = time.perf_counter()
            fn()
            return time.perf_counter() - t0
    finally:
        fused.CHUNK_ROWS = default


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=16 * 128)
    parser.add_argument("--vocab", type=int, default=50304, help="logit columns (padded vocabulary)")
    parser.add_argument("--text-ids", type=int, default=50257)
    parser.add_argument("--precisions", default="fp32,bf16")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--baseline-chunk-rows", type=int, default=128, help="eager chunk size to compare with"
    )
    parser.add_argument("--out", type=Path, default=Path("var/bench/loss_kernels.json"))
    args = parser.parse_args(argv)
    if (
        args.rounds < 1
        or args.rows < 1
        or args.baseline_chunk_rows < 1
        or not 0 < args.text_ids <= args.vocab
    ):
        parser.error("--rounds, --rows and --baseline-chunk-rows must be >= 1 and 0 < --text-ids <= --vocab")
    precisions = [p for p in args.precisions.split(",") if p]
    if not precisions or not set(precisions) <= set(DTYPES):
        parser.error(f"--precisions must name some of {sorted(DTYPES)}")
    torch.set_num_threads(args.threads)
    results = []
    base = args.baseline_chunk_rows
    print(f"| function | precision | eager s | compiled s | speed-up | first compiled call s | eager s, {base} rows "
          f"| {fused.CHUNK_ROWS} rows vs {base} |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    for precision in precisions:
        for name, fn in cases(args.rows, args.vocab, args.text_ids, DTYPES[precision]).items():
            timed(fn, False)  # warm-up
            compile_s = timed(fn, True)
            eager, compiled, baseline = [], [], []
            for _ in range(args.rounds):
                eager.append(timed(fn, False))
                compiled.append(timed(fn, True))
                baseline.append(timed(fn, False, base))
            row = {
                "function": name, "precision": precision, "eager_s": statistics.median(eager),
                "compiled_s": statistics.median(compiled), "first_compiled_call_s": compile_s,
            }  # fmt: skip
            row["speedup"] = row["eager_s"] / row["compiled_s"]
            row["eager_baseline_chunk_s"] = statistics.median(baseline)
            row["chunk_speedup"] = row["eager_baseline_chunk_s"] / row["eager_s"]
            results.append(row)
            print(
                f"| {name:18s} | {precision} | {row['eager_s']:.3f} | {row['compiled_s']:.3f} | "
                f"{row['speedup']:.2f}x | {compile_s:.1f} | {row['eager_baseline_chunk_s']:.3f} | "
                f"{row['chunk_speedup']:.2f}x |",
                flush=True,
            )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"chunk_rows": fused.CHUNK_ROWS, "baseline_chunk_rows": base, "rows": args.rows, "vocab": args.vocab, "threads": args.threads, "rounds": args.rounds,
            "torch": torch.__version__, "cpu": torch.backends.cpu.get_cpu_capability(),
            "machine": platform.machine()}  # fmt: skip
    args.out.write_text(json.dumps({"meta": meta, "results": results}, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
