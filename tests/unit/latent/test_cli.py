"""`mmdlm encode` and the latent branch of `mmdlm sample`, through the typer app."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from typer.testing import CliRunner

from mmdlm.cli import app

runner = CliRunner()


def test_encode_command_in_two_shard_ranges(latent_dataset: tuple[Path, Path], tmp_path: Path) -> None:
    _, done = latent_dataset
    out = tmp_path / "lat"
    args = ["encode", str(done / "source"), str(out), "--shard-rows", "8", "--batch-size", "16"]
    first = runner.invoke(app, [*args, "--shard-range", "0:1"])
    assert first.exit_code == 0, first.output
    assert "not complete yet" in first.output
    second = runner.invoke(app, args)
    assert second.exit_code == 0, second.output
    assert "latent dataset, encoder minilm (384-d)" in second.output
    assert (out / "manifest.json").is_file()


def test_encode_command_reports_bad_input(tmp_path: Path) -> None:
    bad = runner.invoke(app, ["encode", str(tmp_path), str(tmp_path / "o"), "--shard-range", "x"])
    assert bad.exit_code == 2 and "--shard-range must look like START:STOP" in bad.output
    missing = runner.invoke(app, ["encode", str(tmp_path / "nope"), str(tmp_path / "o")])
    assert missing.exit_code == 2 and "does not exist" in missing.output
    unknown = runner.invoke(app, ["encode", str(tmp_path), str(tmp_path / "o"), "--encoder", "word2vec"])
    assert unknown.exit_code == 2 and "encoder.name" in unknown.output


def test_sample_modes(model_dir: Path, tmp_path: Path) -> None:
    base = ["sample", str(model_dir), "--steps", "3", "--latent-steps", "3", "--device", "cpu"]
    joint = runner.invoke(app, [*base, "-n", "2", "--json"])
    assert joint.exit_code == 0, joint.output
    lines = [json.loads(x) for x in joint.stdout.splitlines() if x.startswith("{")]
    assert len(lines) == 2 and lines[0]["mode"] == "joint" and len(lines[0]["latent"]) == 384
    saved = tmp_path / "z.npy"
    t2l = runner.invoke(
        app, [*base, "--mode", "t2l", "--text", "a river", "--text", "a castle", "--save-latents", str(saved)]
    )
    assert t2l.exit_code == 0, t2l.output
    assert np.load(saved).shape == (2, 384)
    l2t = runner.invoke(app, [*base, "--mode", "l2t", "--latent", str(saved), "--guidance-scale", "2"])
    assert l2t.exit_code == 0 and "2 samples (l2t)" in l2t.output
    from_text = runner.invoke(app, [*base, "--mode", "l2t", "--text", "a river in a forest"])
    assert from_text.exit_code == 0 and "1 samples (l2t)" in from_text.output
    bad = runner.invoke(app, [*base, "--mode", "t2l"])
    assert bad.exit_code == 2 and "needs texts" in bad.output
