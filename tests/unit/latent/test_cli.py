"""`mmdlm encode` and the latent branch of `mmdlm sample`, through the typer app."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from mmdlm.cli import app
from mmdlm.config.latent import MMDiTConfig, MMDiTSpec
from mmdlm.families import get_family
from mmdlm.pipeline import save_model_folder

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


@pytest.fixture(scope="module")
def model_dir(latent_dataset: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    _, data_dir = latent_dataset
    family = get_family("mmdit")
    spec = MMDiTSpec(
        model=MMDiTConfig(hidden_size=32, n_blocks=1, n_heads=2, cond_dim=32, max_seq_len=16, latent_dim=384)
    )
    data = family.open_dataset(spec, data_dir)
    built = family.build(spec, data.vocab)
    family.bind_dataset(built, data)
    return save_model_folder(
        tmp_path_factory.mktemp("m") / "model", spec=spec, vocab=data.vocab, state_dict=built.model.state_dict(),
        tokenizer_dir=data_dir / "tokenizer", extras=built.extras,
    )  # fmt: skip


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
    torch.manual_seed(0)
