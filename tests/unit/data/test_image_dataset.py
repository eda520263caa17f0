"""`prepare_images` + `ImageDataset`: folders of captioned images in any size and mode (JSONL and COCO
captions), bad images reported by name or refused, confinement, checksums, splits, and the digits."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from mmdlm.config.images import PrepareImagesConfig
from mmdlm.confine import PathNotAllowed, PathRoots
from mmdlm.data.image_dataset import ImageDataset
from mmdlm.data.image_prepare import prepare_images
from mmdlm.data.images import DigitsDataset, open_image_dataset
from tests.unit.data.image_folders import write_folder


def test_jsonl_folder_of_mixed_images_becomes_a_dataset(tmp_path: Path) -> None:
    write_folder(tmp_path / "src")
    config = PrepareImagesConfig(
        source={"type": "folder", "path": str(tmp_path / "src")}, resolution=8, channels=3, caption_len=8,
        validation_fraction=0.25,
    )  # fmt: skip
    manifest = prepare_images(config, tmp_path / "out")
    skipped = {s.name: s.reason for s in manifest.skipped}
    assert set(skipped) == {
        "corrupt.png",
        "truncated.png",
        "empty.png",
        "wide.tiff",
        "missing.png",
        "../outside.png",
    }
    assert skipped["empty.png"].startswith("empty file") and "unsupported mode I" in skipped["wide.tiff"]
    assert skipped["truncated.png"].startswith(("truncated", "corrupt")), skipped
    assert skipped["../outside.png"] == "not a file inside source.path"
    # 25% of the 18 listed images are chosen for validation by hash, before the bad ones drop out
    assert sum(manifest.splits.values()) == 12 and manifest.splits["validation"] >= 1
    n_train = manifest.splits["train"]
    assert manifest.labels == ["blue", "green", "red"] and manifest.levels == 256

    data = ImageDataset.open(tmp_path / "out")  # verifies every checksum
    assert set(data.manifest.checksums) >= {
        "train/images.npy",
        "validation/captions.jsonl",
        "tokenizer/tokenizer.json",
    }
    assert (data.resolution, data.channels, data.seq_len, data.labels) == (8, 3, 8, ["blue", "green", "red"])
    train = data.split("train")
    batch = train.get_batch(range(len(train)))
    assert batch["image"].shape == (n_train, 3, 8, 8) and batch["image"].dtype == np.float32
    assert batch["image"].min() >= -1 and batch["image"].max() <= 1
    assert batch["pixels"].shape == (n_train, 192) and batch["pixels"].max() <= 255
    assert batch["input_ids"].dtype == np.int64 and batch["attention_mask"].dtype == bool
    assert set(batch["label"].tolist()) <= {0, 1, 2}
    texts = train.captions()
    assert all(t.startswith("A ") for t in texts)
    decoded = data.tokenizer().batch_decode(batch["input_ids"], skip_special_tokens=True)
    assert decoded == [" ".join(t.lower().split()[:6]) for t in texts]  # caption_len 8 = BOS + 6 words + EOS
    assert data.vocab.pad_id == 0 and data.vocab.mask_id == 1
    # every good image is centre-cropped: black on the left, white on the right (RGB: all channels)
    halves = [i for i, t in enumerate(texts) if not t.endswith("number 10")]  # 10 is a 16-bit gradient
    rgb = np.asarray(train.images)[halves]
    assert (rgb[:, :, :, 0] < 60).all() and (rgb[:, :, :, -1] > 195).all(), rgb[:, 0]


def test_split_is_by_image_name_whatever_the_order(tmp_path: Path) -> None:
    records = write_folder(tmp_path / "a", bad=False)
    write_folder(tmp_path / "b", bad=False)
    with open(tmp_path / "b" / "captions.jsonl", "w") as handle:
        handle.writelines(json.dumps(r) + "\n" for r in reversed(records))
    out = {}
    for name in ("a", "b"):
        cfg = PrepareImagesConfig(
            source={"type": "folder", "path": str(tmp_path / name)}, resolution=6, seed=3
        )
        prepare_images(cfg, tmp_path / f"out-{name}")
        out[name] = sorted(ImageDataset.open(tmp_path / f"out-{name}").split("validation").captions())
    assert out["a"] == out["b"] and len(out["a"]) == 1


def test_coco_captions_several_per_image_and_grey(tmp_path: Path) -> None:
    src = tmp_path / "coco"
    write_folder(src, bad=False)
    images = [{"id": 100 + i, "file_name": f"img/{i:02d}.{'jpg' if i == 6 else 'png'}"} for i in range(12)]
    notes = [{"image_id": 100 + i, "caption": f"photo {k} of item {i}"} for i in range(12) for k in range(3)]
    (src / "annotations.json").write_text(json.dumps({"images": images, "annotations": notes}))
    config = PrepareImagesConfig(
        source={"type": "folder", "path": str(src), "captions": "annotations.json"}, resolution=16,
        max_captions_per_image=2, validation_fraction=0.2, test_fraction=0.1,
    )  # fmt: skip
    manifest = prepare_images(config, tmp_path / "out")
    assert manifest.split_images == {"train": 9, "validation": 2, "test": 1}
    assert manifest.splits == {"train": 18, "validation": 4, "test": 2} and manifest.labels is None
    assert manifest.source["format"] == "coco" and not manifest.skipped
    data = ImageDataset.open(tmp_path / "out", levels=17)
    val = data.split("validation")
    batch = val.get_batch([0, 1])
    assert batch["image"].shape == (2, 1, 16, 16) and batch["pixels"].max() <= 16
    assert (batch["label"] == -1).all()
    assert np.array_equal(batch["image"][0], batch["image"][1])  # two captions, one image
    assert val.captions([0, 1])[0].startswith("photo 0") and val.captions([0, 1])[1].startswith("photo 1")


def test_refuse_names_the_bad_images_and_leaves_nothing(tmp_path: Path) -> None:
    write_folder(tmp_path / "src")
    config = PrepareImagesConfig(
        source={"type": "folder", "path": str(tmp_path / "src")}, on_bad_image="refuse"
    )
    with pytest.raises(ValueError, match="6 bad image") as info:
        prepare_images(config, tmp_path / "out")
    assert "corrupt.png" in str(info.value) and "empty.png" in str(info.value)
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out*"))
    # skipping instead: the split is drawn among the 12 readable images, so bad files never empty one
    manifest = prepare_images(config.model_copy(update={"on_bad_image": "skip"}), tmp_path / "out")
    assert manifest.splits == {"train": 11, "validation": 1} and len(manifest.skipped) == 6


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (['{"file": "a.png"}'], "captions.jsonl:1: no field 'caption'"),
        (["not json"], "captions.jsonl:1: not valid JSON"),
        (['{"file": "a.png", "caption": ""}'], "captions.jsonl:1: the caption must be"),
        (['{"file": "a.png", "caption": "x", "label": 1}', '{"file": "b.png", "caption": "y", "label": "z"}'],
         "labels must be all integers or all strings"),
        (['{"file": "a.png", "caption": "x"}', '{"file": "a.png", "caption": "y"}'], "at least 2"),
    ],
)  # fmt: skip
def test_bad_captions_files_are_refused_with_the_line(tmp_path: Path, lines: list[str], message: str) -> None:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "captions.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=message):
        prepare_images(
            PrepareImagesConfig(source={"type": "folder", "path": str(tmp_path / "src")}), tmp_path / "o"
        )


def test_confinement_refuses_a_folder_or_symlink_outside_the_roots(tmp_path: Path) -> None:
    root, outside = tmp_path / "data", tmp_path / "secret"
    write_folder(root / "mine", bad=False)
    write_folder(outside, bad=False)
    roots = PathRoots.of([root])
    for path in (str(outside), "../secret", "mine/../../secret"):
        with pytest.raises(PathNotAllowed) as info:
            prepare_images(
                PrepareImagesConfig(source={"type": "folder", "path": path}), tmp_path / "o", roots=roots
            )
        assert info.value.field == "source.path"
    (root / "mine" / "leak.png").symlink_to(outside / "img" / "00.png")
    with pytest.raises(PathNotAllowed):  # the folder holds a link out of the roots: refused whole
        prepare_images(
            PrepareImagesConfig(source={"type": "folder", "path": "mine"}), tmp_path / "o", roots=roots
        )
    (root / "mine" / "leak.png").unlink()
    manifest = prepare_images(
        PrepareImagesConfig(source={"type": "folder", "path": "mine"}, resolution=4),
        tmp_path / "o",
        roots=roots,
    )
    assert manifest.source["path"] == "mine" and sum(manifest.splits.values()) == 12


def test_tampered_files_fail_verification(tmp_path: Path) -> None:
    write_folder(tmp_path / "src", bad=False)
    prepare_images(
        PrepareImagesConfig(source={"type": "folder", "path": str(tmp_path / "src")}), tmp_path / "o"
    )
    captions = np.load(tmp_path / "o" / "train" / "captions.npy")
    captions[0, 1] += 1
    np.save(tmp_path / "o" / "train" / "captions.npy", captions)
    with pytest.raises(ValueError, match="train/captions.npy does not match"):
        ImageDataset.open(tmp_path / "o")
    assert (
        len(ImageDataset.open(tmp_path / "o", verify=False).split("train")) == 11
    )  # 12 images, floor(12 * 0.1) = 1 held out


def test_config_bounds_every_size() -> None:
    for bad in ({"resolution": 1024}, {"caption_len": 2}, {"channels": 2}, {"max_images": 10**9},
                {"resolution": 512, "channels": 3}, {"validation_fraction": 0.5, "test_fraction": 0.45},
                {"source": {"type": "folder", "path": ""}}):  # fmt: skip
        with pytest.raises(ValidationError):
            PrepareImagesConfig.model_validate(bad)
    assert PrepareImagesConfig.model_validate({"source": "digits"}).resolved_resolution() == 8


def test_digits_in_the_format_match_the_in_memory_digits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MMDLM_CACHE_DIR", str(tmp_path / "cache"))
    data = open_image_dataset("sklearn:digits")
    old = DigitsDataset.open("sklearn:digits", root=tmp_path / "old")
    assert data.manifest.splits == {"train": 1618, "validation": 179} and data.levels == 17
    assert data.labels is not None and data.labels[7] == "seven"
    for split in ("train", "validation"):
        new_rows, old_rows = data.split(split), old.split(split)
        a, b = new_rows.get_batch(range(len(new_rows))), old_rows.get_batch(range(len(old_rows)))
        assert np.array_equal(a["pixels"], b["pixels"]) and np.array_equal(a["label"], b["label"])
        assert np.abs(a["image"] - b["image"]).max() < 0.01
        assert new_rows.captions()[:3] == [
            old.tokenizer().decode(r, skip_special_tokens=True) for r in b["input_ids"][:3]
        ]
    # a directory given to the old entry point opens the prepared folder
    assert isinstance(DigitsDataset.open(str(data.root)), ImageDataset)
    with pytest.raises(ValueError, match="neither"):
        open_image_dataset(tmp_path / "nothing")


def _write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 8, array.ndim]) + np.asarray(array.shape, dtype=">i4").tobytes()
    data = header + array.astype(np.uint8).tobytes()
    if path.suffix == ".gz":
        import gzip

        data = gzip.compress(data)
    path.write_bytes(data)


def test_idx_files_like_mnist_become_a_dataset(tmp_path: Path) -> None:
    src = tmp_path / "mnist"
    src.mkdir()
    rng = np.random.default_rng(0)
    train, test = rng.integers(0, 256, (30, 28, 28)), rng.integers(0, 256, (10, 28, 28))
    _write_idx(src / "train-images-idx3-ubyte.gz", train)
    _write_idx(src / "train-labels-idx1-ubyte.gz", np.arange(30) % 10)
    _write_idx(src / "t10k-images-idx3-ubyte", test)
    _write_idx(src / "t10k-labels-idx1-ubyte", np.arange(10) % 3)
    manifest = prepare_images(PrepareImagesConfig(source={"type": "idx", "path": str(src)}), tmp_path / "o")
    assert manifest.resolution == 28 and manifest.labels[3] == "three"
    # the official t10k files are the test split, whole and in their order; train is split by hash
    assert manifest.splits["test"] == 10 and manifest.splits["train"] + manifest.splits["validation"] == 30
    assert manifest.source["test_split"] == "t10k"
    data = ImageDataset.open(tmp_path / "o")
    official = data.split("test")
    assert np.array_equal(np.asarray(official.images)[:, 0], test.astype(np.uint8))
    assert list(official.labels) == (np.arange(10) % 3).tolist()
    assert official.captions([2]) == ["a two written by hand"]
    rows = {}
    for split in ("train", "validation"):
        part = data.split(split)
        for caption, pixels, label in zip(part.captions(), np.asarray(part.images), part.labels, strict=True):
            rows[pixels.tobytes()] = (caption, int(label))
    assert len(rows) == 30
    index = 7  # train image 7: label 7, the 4th template
    assert rows[train[index].astype(np.uint8)[None].tobytes()] == ("an image of a seven", 7)

    pooled = PrepareImagesConfig(source={"type": "idx", "path": str(src), "test_prefix": None})
    manifest = prepare_images(pooled, tmp_path / "pooled")  # the old behaviour: every pair split by hash
    assert "test" not in manifest.splits and sum(manifest.splits.values()) == 40
    only_test = tmp_path / "only-t10k"
    only_test.mkdir()
    for name in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        (only_test / name).write_bytes((src / name).read_bytes())
    with pytest.raises(ValueError, match="0 readable image.*10 in the source's own test set"):
        prepare_images(PrepareImagesConfig(source={"type": "idx", "path": str(only_test)}), tmp_path / "x")

    config = PrepareImagesConfig(
        source={"type": "idx", "path": str(src), "label_names": ["a", "b", "c", "d", "e", "f", "g", "h", "i", "j"],
                "templates": ["a photo of {}"]},
        resolution=14, channels=3,
    )  # fmt: skip
    manifest = prepare_images(config, tmp_path / "small")
    assert ImageDataset.open(tmp_path / "small").split("train").get_batch([0])["image"].shape == (
        1,
        3,
        14,
        14,
    )
    assert ImageDataset.open(tmp_path / "small").split("train").captions([0])[0].startswith("a photo of ")

    (src / "t10k-labels-idx1-ubyte").write_bytes(b"\x00\x00\x08\x03" + b"\x00" * 20)
    with pytest.raises(ValueError, match="t10k-labels-idx1-ubyte: not an IDX file"):
        prepare_images(PrepareImagesConfig(source={"type": "idx", "path": str(src)}), tmp_path / "bad")
    with pytest.raises(ValidationError):
        PrepareImagesConfig(source={"type": "idx", "path": "x", "templates": ["no slot"]})
