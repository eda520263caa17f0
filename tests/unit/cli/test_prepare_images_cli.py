"""`mmdlm prepare-images`: digits and a folder of images through the typer app, config from a YAML file,
flags and `--set`, and every kind of bad input as one `error:` line with exit status 2 (no traceback)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mmdlm.cli import app
from tests.unit.data.image_folders import write_folder

runner = CliRunner()


def test_digits_and_a_folder_from_a_config_file_and_flags(tmp_path: Path) -> None:
    done = runner.invoke(app, ["prepare-images", str(tmp_path / "digits"), "--validation-fraction", "0.2"])
    assert done.exit_code == 0, done.output
    assert "image dataset, 8x8x1" in done.output and "validation 359" in done.output
    assert json.loads((tmp_path / "digits" / "manifest.json").read_text())["splits"]["train"] == 1438

    write_folder(tmp_path / "src")
    (tmp_path / "images.yaml").write_text(
        f"source: {{type: folder, path: {tmp_path / 'src'}}}\nresolution: 12\n"
    )
    out = tmp_path / "folder"
    args = ["prepare-images", str(out), "--config", str(tmp_path / "images.yaml"), "--channels", "3"]
    folder = runner.invoke(app, [*args, "--set", "caption_len=8"])
    assert folder.exit_code == 0, folder.output
    assert "image dataset, 12x12x3" in folder.output and "6 bad image(s) skipped" in folder.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["caption_len"] == 8 and manifest["source"]["type"] == "folder"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--channels", "2"], "channels"),
        (["--source", "idx", "--path", "{tmp}/nowhere"], "source.path"),
        (["--source", "pictures"], "source"),
        (["--source", "folder", "--path", "{tmp}/src", "--on-bad-image", "refuse"], "6 bad image(s)"),
        (["--source", "folder", "--path", "{tmp}/src", "--on-bad-image", "maybe"], "on_bad_image"),
        (["--validation-fraction", "0.5", "--test-fraction", "0.45"], "leaves too little for train"),
        (["--set", "resolution"], "must look like key.sub=value"),
        (["--config", "{tmp}/missing.yaml"], "config file not found"),
        (["--config", "{tmp}/broken.yaml"], "not valid YAML"),
    ],
)
def test_bad_input_is_one_line_without_a_traceback(tmp_path: Path, args: list[str], message: str) -> None:
    write_folder(tmp_path / "src")
    (tmp_path / "broken.yaml").write_text("source: [digits\n")
    result = runner.invoke(
        app, ["prepare-images", str(tmp_path / "out"), *[a.replace("{tmp}", str(tmp_path)) for a in args]]
    )
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
    assert result.output.startswith("error: ") or "Usage" in result.output
    assert not (tmp_path / "out").exists()


def test_a_non_empty_output_folder_is_refused(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    result = runner.invoke(app, ["prepare-images", str(tmp_path / "out")])
    assert result.exit_code == 2 and "already exists and is not empty" in result.output
    assert (tmp_path / "out" / "keep.txt").read_text() == "mine"
