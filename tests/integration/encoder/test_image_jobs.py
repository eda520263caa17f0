"""`prepare-images` jobs on the real platform (embedded backend, one worker for queues encode and train): a
user's folder of captioned images (mixed sizes and modes, bad files among them) becomes an
`image-dataset` artifact that names the bad files, `on_bad_image: refuse` fails the job naming them,
paths outside the user's data folder are 422 naming `source.path`, and the bundled digits train an
`image-mmdit` model (a few steps) with the artifact as `dataset`, its shape checked at submit.
E3's tests/integration/sampler/test_image_end_to_end.py covers generate/sample/evaluate on both backends."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from services.common.client import ApiError
from tests.unit.data.image_folders import BAD_FILES, write_folder
from tests.utils.harness import Platform

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TRAIN_ENV = {"MMDLM_TRAIN_OMP_THREADS": "1", "MMDLM_TRAIN_SYNC_INTERVAL_S": "0.3"}
NETWORK = {"variant": "continuous", "hidden_size": 32, "n_blocks": 1, "n_heads": 2, "cond_dim": 32}
TRAIN: dict[str, Any] = {
    "kind": "train", "data": {"batch_size": 8}, "optimizer": {"lr": 1e-3}, "schedule": {"kind": "constant"},
    "steps": 3, "precision": "fp32", "device": "cpu", "checkpoint": {"interval": 1000},
    "eval": {"interval": 1000, "batches": 1}, "log": {"interval": 1, "console": False}, "nproc_per_node": 1,
}  # fmt: skip


def finished(p: Platform, spec: dict[str, Any], timeout_s: float = 240) -> dict[str, Any]:
    return p.wait(p.client.submit(spec)["id"], timeout_s=timeout_s)


def refused_field(p: Platform, spec: dict[str, Any]) -> list[str]:
    with pytest.raises(ApiError) as info:
        p.client.submit(spec)
    assert info.value.status == 422, info.value.detail
    return [e["field"] for e in info.value.body["errors"]]


def test_prepare_images_from_a_folder_and_the_digits_then_train(
    make_backend: Any, platform_factory: Any, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    write_folder(data / "alice" / "pics")
    write_folder(data / "bob" / "pics", bad=False)
    p: Platform = platform_factory(
        make_backend("embedded"),
        workers_queues=[["encode", "train"]],
        env={**TRAIN_ENV, "MMDLM_DATA_ROOTS": f"{data}/{{user}}"},
    )
    folder = {"kind": "prepare-images", "source": {"type": "folder", "path": "pics"}, "resolution": 16,
              "channels": 3, "caption_len": 12, "validation_fraction": 0.25}  # fmt: skip
    for path in ("../bob/pics", str(data / "bob" / "pics"), "/etc", "pics/../../bob/pics"):
        assert refused_field(p, {**folder, "source": {"type": "folder", "path": path}}) == ["source.path"]
    assert "resolution" in refused_field(p, {**folder, "resolution": 4096})

    done = finished(p, folder)
    assert done["status"] == "succeeded", f"{done}\n{p.logs()}"
    [artifact_id] = done["artifacts"]
    artifact = p.client.artifact(artifact_id)
    meta = artifact["metadata"]
    assert artifact["kind"] == "image-dataset" and meta["format"] == "image-dataset"
    assert (meta["resolution"], meta["channels"], meta["caption_len"]) == (16, 3, 12)
    assert meta["skipped"] == len(BAD_FILES) and set(meta["skipped_names"]) == set(BAD_FILES)
    assert sum(meta["splits"].values()) == 12 and meta["labels"] == ["blue", "green", "red"]
    assert meta["source"] == {
        "type": "folder",
        "path": "pics",
        "captions": "captions.jsonl",
        "format": "jsonl",
    }
    manifest = json.loads(p.client.download(artifact_id, "manifest.json"))
    assert {s["name"] for s in manifest["skipped"]} == set(BAD_FILES) and str(data) not in json.dumps(
        manifest
    )
    assert {f["path"] for f in artifact["files"]} - {"manifest.json"} == set(manifest["checksums"])

    refused = finished(p, {**folder, "on_bad_image": "refuse"})
    assert refused["status"] == "failed" and refused["attempt"] == 1, refused
    assert "corrupt.png" in refused["error"] and "on_bad_image" in refused["error"], refused["error"]

    digits = finished(p, {"kind": "prepare-images", "source": "digits"})
    assert digits["status"] == "succeeded", f"{digits}\n{p.logs()}"
    [digits_id] = digits["artifacts"]
    digits_meta = p.client.artifact(digits_id)["metadata"]
    assert (digits_meta["resolution"], digits_meta["channels"], digits_meta["levels"]) == (8, 1, 17)
    assert digits_meta["splits"] == {"train": 1618, "validation": 179}

    model = {"family": "image-mmdit", "model": {**NETWORK, "max_seq_len": 16}}
    wrong = {**model, "model": {**NETWORK, "max_seq_len": 16, "image_size": 16}}
    assert refused_field(p, {**TRAIN, "dataset": digits_id, "model": wrong}) == ["model.model.image_size"]
    three = {**model, "model": {**NETWORK, "max_seq_len": 16, "channels": 3}}
    assert refused_field(p, {**TRAIN, "dataset": digits_id, "model": three}) == ["model.model.channels"]
    assert refused_field(p, {**TRAIN, "dataset": artifact_id, "model": model}) == ["model.model.image_size"]

    trained = finished(p, {**TRAIN, "dataset": digits_id, "model": model}, timeout_s=300)
    assert trained["status"] == "succeeded", f"{trained}\n{p.logs()}"
    [model_id] = trained["artifacts"]
    produced = p.client.artifact(model_id)
    assert produced["kind"] == "model" and produced["metadata"]["step"] == 3
