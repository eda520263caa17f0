"""bench/loss_kernels.py runs end to end on small logits and writes every function and precision (no timing
checks); bad arguments are a usage error, not a traceback."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
SCRIPT = ROOT / "bench" / "loss_kernels.py"


@pytest.mark.slow  # compiles the kernels in a fresh process
def test_loss_kernels_bench_writes_every_function_and_precision(tmp_path: Path) -> None:
    out = tmp_path / "kernels.json"
    cmd = [sys.executable, str(SCRIPT), "--rows", "64", "--vocab", "384", "--text-ids", "380", "--rounds", "1", "--baseline-chunk-rows", "16",
           "--out", str(out)]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads(out.read_text())["results"]
    names = {"gidd_row_terms", "text_log_prob", "cluster_row_terms"}
    assert {(r["function"], r["precision"]) for r in rows} == {
        (n, p) for n in names for p in ("fp32", "bf16")
    }
    for row in rows:
        assert row["eager_s"] > 0 and row["compiled_s"] > 0 and row["speedup"] > 0
        assert row["eager_baseline_chunk_s"] > 0 and row["chunk_speedup"] > 0


def test_loss_kernels_bench_rejects_bad_sizes() -> None:
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--text-ids", "0"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 2 and "--text-ids" in proc.stderr and "Traceback" not in proc.stderr
