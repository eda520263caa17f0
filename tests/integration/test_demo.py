"""`mmdlm demo` end to end, the README's first command: the real CLI in a fresh MMDLM_HOME (embedded
SQLite + local store, its own API, worker and sampler processes), at the `smoke` scale (`--quick`), which
keeps every step and protocol and only shrinks steps and rows. About 3-4 minutes on 2 CPU cores."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from services.demo import STEPS

pytestmark = [pytest.mark.integration, pytest.mark.slow]

DEMO_TIMEOUT_S = 600


def _finite(value: object) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


def test_demo_quick_runs_every_step_and_prints_each_figure_with_its_baseline(tmp_path: Path) -> None:
    env = {**os.environ, "MMDLM_HOME": str(tmp_path / "home"), "COLUMNS": "200"}
    env.pop("MMDLM_DEMO_SCALE", None)
    proc = subprocess.run(
        [sys.executable, "-m", "services.cli", "demo", "--quick"], env=env, capture_output=True, text=True,
        timeout=DEMO_TIMEOUT_S, check=False,
    )  # fmt: skip
    out = proc.stdout + proc.stderr
    logs = "\n".join(
        f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}"
        for p in (tmp_path / "home" / "demo").glob("*.log")
    )
    assert proc.returncode == 0, f"demo exited {proc.returncode}\n{out[-6000:]}\n{logs}"

    summary = json.loads((tmp_path / "home" / "demo" / "summary.json").read_text())
    assert summary["status"] == "succeeded"
    assert summary["scale"]["name"] == "smoke"
    assert [name for name in summary["seconds"] if name not in ("start", "total")] == [s.name for s in STEPS]

    # every job the demo submitted went through the platform, training included
    jobs = summary["jobs"]
    for title in ("prepare-data", "clusters", "train mdlm", "train hdlm", "train ar", "evaluate mdlm",
                  "evaluate hdlm", "evaluate ar", "encode", "train mmdit", "evaluate mmdit"):  # fmt: skip
        assert title in jobs, f"no {title!r} job in {sorted(jobs)}"
    artifacts = summary["artifacts"]
    for role in (
        "dataset",
        "clusters",
        "model:mdlm",
        "model:hdlm",
        "model:ar",
        "latent-dataset",
        "model:mmdit",
    ):
        assert role in artifacts, f"no {role!r} artifact in {sorted(artifacts)}"

    results = summary["results"]
    assert set(results["discrete"]) == {"mdlm", "hdlm", "ar"}
    for family, row in results["discrete"].items():
        for metric in ("val_ppl", "gen_ppl", "gen_entropy"):
            assert _finite(row[metric]) and row[metric] > 0, f"{family} {metric}: {row[metric]!r}"
        assert row["model"] == artifacts[f"model:{family}"]
    assert _finite(results["data_reference"]["data_gen_ppl"])
    # the diffusion models share every protocol field; AR differs only where it must (exact NLL, no steps)
    assert results["diffusion_comparable"] == {"nll": True, "generative": True}
    assert results["ar_differs_on"] == {
        "nll": ["estimator", "num_time_samples"],
        "generative": ["sampling_steps"],
    }

    latent = results["latent"]
    for metric in (
        "t2l_cosine",
        "t2l_baseline_mean_latent",
        "l2t_round_trip_cosine",
        "l2t_baseline_unconditional",
    ):
        assert _finite(latent[metric]) and -1.0 <= latent[metric] <= 1.0, f"{metric}: {latent[metric]!r}"

    # the printed summary holds each figure next to its baseline
    assert "MM-DLM demo summary (smoke scale)" in out
    for text in ("mdlm", "hdlm", "ar", "val PPL", "gen PPL", "entropy", "real rows", "t2l cosine", "mean latent",
                 "l2t round trip", "unconditional", "demo finished"):  # fmt: skip
        assert text in out, f"{text!r} not in the demo output"
    assert f"{latent['t2l_cosine']:.3f}" in out and f"{latent['l2t_round_trip_cosine']:.3f}" in out
    assert f"{results['discrete']['ar']['val_ppl']:.1f}" in out
