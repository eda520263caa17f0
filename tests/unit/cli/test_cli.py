"""The ML commands (`mmdlm.cli:app`) and the torchrun entry: clear errors for bad input, real runs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml
from typer.testing import CliRunner

from mmdlm.cli import app
from mmdlm.training.debug import debug_train_config

runner = CliRunner()


def test_bad_config_prints_fields_without_traceback(debug_dataset: Path) -> None:
    result = runner.invoke(
        app,
        ["train", "cpu-nano/mdlm", "--set", f"data.dataset={debug_dataset}", "--set", "model.model.n_heads=3",
         "--set", "optimizer.lr=-1", "--set", "steps=many"],
    )  # fmt: skip
    assert result.exit_code == 2
    assert "model.mdlm.model: hidden_size (64) must be divisible by n_heads (3)" in result.output
    assert "optimizer.lr: Input should be greater than 0" in result.output
    assert "steps: Input should be a valid integer" in result.output
    assert "Traceback" not in result.output


def test_preset_placeholders_and_unknown_presets_are_named() -> None:
    result = runner.invoke(app, ["train", "small/hdlm-64"])
    assert result.exit_code == 2 and "data.dataset" in result.output and "model.clusters" in result.output
    result = runner.invoke(app, ["train", "small/nope"])
    assert result.exit_code == 2 and "no config file or preset named 'small/nope'" in result.output
    assert "small/mdlm" in result.output  # the message lists what exists


def test_dry_run_resolves_a_preset(debug_dataset: Path) -> None:
    result = runner.invoke(
        app,
        ["train", "tiny/gidd", "--set", f"data.dataset={debug_dataset}", "--set", "steps=10", "--dry-run"],
    )
    assert result.exit_code == 0, result.output
    config = json.loads(result.output)
    assert config["model"]["family"] == "gidd" and config["model"]["model"]["hidden_size"] == 512
    assert config["steps"] == 10 and config["precision"] == "bf16"


def test_train_sample_eval_roundtrip(debug_dataset: Path, tmp_path: Path) -> None:
    config = tmp_path / "ar.yaml"
    cfg = debug_train_config("ar", debug_dataset, tmp_path / "run", overrides={"steps": 3})
    config.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    result = runner.invoke(app, ["train", str(config), "--set", "data.batch_size=8"])
    assert result.exit_code == 0, result.output
    final = tmp_path / "run" / "final"
    assert (final / "config.json").is_file()

    result = runner.invoke(
        app, ["sample", str(final), "-n", "2", "--seq-len", "12", "--json", "--prompt", "The"]
    )
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert len(lines) == 2 and all(len(line["ids"]) == 12 for line in lines)

    report = tmp_path / "report.json"
    result = runner.invoke(
        app, ["eval", str(final), "--data", str(debug_dataset), "--max-batches", "2", "--no-generative",
              "--out", str(report)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    data = json.loads(report.read_text())
    assert data["nll"]["protocol"]["estimator"] == "exact" and data["nll"]["tokens"] > 0
    assert "nats/token" in result.output

    result = runner.invoke(app, ["sample", str(tmp_path / "missing")])
    assert result.exit_code == 2 and "config.json is missing" in result.output
    result = runner.invoke(app, ["sample", str(final), "--temperature", "-1"])
    assert result.exit_code == 2 and "temperature" in result.output


def test_clusters_command(debug_dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "clusters"
    result = runner.invoke(
        app, ["clusters", "--data", str(debug_dataset), "--num-clusters", "8", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["num_clusters"] == 8
    result = runner.invoke(app, ["clusters", "--num-clusters", "8", "--out", str(tmp_path / "other")])
    assert result.exit_code == 2 and "--data" in result.output


def test_torchrun_entry_reports_bad_config(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: {family: nope}\ndata: {dataset: x}\n")
    proc = subprocess.run(
        [sys.executable, "-m", "mmdlm.training", "--config", str(bad)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "model: Input tag 'nope' found using 'family' does not match" in proc.stderr
    assert "Traceback" not in proc.stderr
