"""bench/families.py runs end to end on a micro config and writes every family's fields (no timing checks)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
TRAIN_FIELDS = {"tokens_per_s", "share_of_matmul_peak", "flops_per_step", "peak_memory_mb", "compile_s"}
SAMPLE_FIELDS = {"tokens_per_s", "step_cost_over_forward", "network_calls", "peak_memory_mb", "compile_s"}


@pytest.mark.slow  # a subprocess importing torch and transformers: ~20 s CPU, minutes on a loaded machine
def test_families_bench_quick_writes_every_family_and_field(tmp_path: Path) -> None:
    out = tmp_path / "families.json"
    cmd = [sys.executable, str(ROOT / "bench" / "families.py"), "--quick", "--compile", "off",
           "--hidden", "32", "--heads", "2", "--blocks", "1", "--vocab", "509", "--clusters", "4",
           "--sample-rows", "2", "--train-batch", "2", "--out", str(out)]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert set(result["matmul_peak_flops"]) == {"fp32", "bf16"}
    train = {(r["family"], r["precision"]): r for r in result["train"]}
    assert set(train) == {(f, p) for f in ("mdlm", "gidd", "hdlm", "ar") for p in ("fp32", "bf16")}
    for row in train.values():
        assert TRAIN_FIELDS <= set(row) and row["tokens_per_s"] > 0 and row["share_of_matmul_peak"] > 0
    sample = {(r["family"], r["precision"]): r for r in result["sample"]}
    names = ("mdlm", "gidd", "hdlm", "ar", "ar-f32", "hf-generate")
    assert set(sample) == {(f, p) for f in names for p in ("fp32", "bf16")}
    for (family, _), row in sample.items():
        assert SAMPLE_FIELDS <= set(row) and row["tokens_per_s"] > 0
        if family in ("mdlm", "gidd", "hdlm"):
            assert row["step_cost_over_forward"] > 0 and row["network_calls"] == 2  # --quick: 2 steps
    for precision in ("fp32", "bf16"):
        assert sample[("ar-f32", precision)]["ratio_vs_hf_generate"] > 0
    assert "| training tok/s, compile off" in proc.stdout
