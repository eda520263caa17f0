"""Latent-dataset artifact: manifest and checksums, shard workers, loader/DDP sharding, no validation
leakage, and the latent-dimension check that runs before training."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from mmdlm.config.latent import EncoderConfig
from mmdlm.data.latent import LatentDataset, check_latent_dim, encode_dataset, plan_shards, worker_shard_range
from mmdlm.data.loader import BatchLoader
from mmdlm.data.tokens import TokenDataset
from mmdlm.encoders import load_encoder

from .conftest import CONFIG


def test_manifest_records_encoder_and_source(latent_dataset: tuple[Path, Path]) -> None:
    _, out = latent_dataset
    ds = LatentDataset.open(out)
    m = ds.manifest
    assert m.format == "mmdlm.latents/v1" and m.kind == "latent-dataset" and m.dim == 384
    assert m.encoder["name"] == "minilm" and m.encoder["recipe"]["pooling"] == "mean"
    assert m.encoder["revision"] == "local" and m.normalization.unit_norm
    assert m.source_dataset["format"] == "mmdlm.tokens/v1" and m.source_dataset["packing"] == "pad"
    assert m.source["type"] == "folder"
    source = TokenDataset.open(out / "source")
    for split in ("train", "validation"):
        assert m.splits[split].rows == len(source.split(split)) == len(ds.split(split))
        assert m.splits[split].documents == source.manifest.splits[split].documents
    assert ds.vocab == source.vocab and ds.seq_len == 16


def test_rows_tokens_texts_and_latents_agree(latent_dataset: tuple[Path, Path]) -> None:
    _, out = latent_dataset
    ds = LatentDataset.open(out)
    source = TokenDataset.open(out / "source")
    split = ds.split("train")
    batch = split.get_batch(np.arange(len(split)))
    np.testing.assert_array_equal(
        batch["input_ids"], source.split("train").get_batch(np.arange(len(split)))["input_ids"]
    )
    assert batch["latent"].dtype == np.float32 and batch["latent"].shape == (len(split), 384)
    assert batch["attention_mask"].dtype == bool
    texts = split.texts()
    tokenizer = ds.tokenizer()
    first = batch["input_ids"][0][batch["attention_mask"][0]]
    assert texts[0] == tokenizer.decode(first.tolist(), skip_special_tokens=True).strip()
    again = load_encoder("minilm").encode(texts[:5])
    np.testing.assert_allclose(batch["latent"][:5], again, atol=1e-5)
    item = split[3]
    assert set(item) == {"input_ids", "attention_mask", "latent"} and item["latent"].shape == (384,)


def test_stats_are_fitted_on_train_only(latent_dataset: tuple[Path, Path]) -> None:
    _, out = latent_dataset
    ds = LatentDataset.open(out)
    train = ds.split("train").latents().astype(np.float64)
    mean, std = ds.stats()
    np.testing.assert_allclose(mean, train.mean(0), atol=1e-6)
    expected = train.std(0, ddof=1)
    live = expected > 1e-3 * np.median(expected)
    np.testing.assert_allclose(std[live], expected[live], rtol=1e-4)
    assert (std > 0).all()  # near-constant dimensions get a floor, never a zero
    assert ds.manifest.normalization.stats.count == len(train)


def test_no_validation_leakage(latent_dataset: tuple[Path, Path]) -> None:
    _, out = latent_dataset
    ds = LatentDataset.open(out)
    train, val = set(ds.split("train").texts()), set(ds.split("validation").texts())
    assert train and val and not train & val
    # each document is whole in one split: its number appears only on one side
    doc = lambda text: text.split()[1]  # noqa: E731 - "document <i> is about ..."
    train_docs = {doc(t) for t in train if t.startswith("document")}
    val_docs = {doc(t) for t in val if t.startswith("document")}
    assert val_docs and not train_docs & val_docs


def test_checksums_detect_corruption_and_rerun_repairs(
    latent_dataset: tuple[Path, Path], tmp_path: Path
) -> None:
    root, out = latent_dataset
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    target = copy / "train" / "shard-00000.latents.npy"
    data = np.load(target)
    data[0, 0] += 1.0
    np.save(target, data)
    with pytest.raises(ValueError, match=r"shard-00000\.latents\.npy does not match its sha256"):
        LatentDataset.open(copy)
    result = encode_dataset(CONFIG, copy / "source", copy)  # the prepared source, now a dataset folder
    assert result.shards_encoded == [0] and result.manifest is not None
    LatentDataset.open(copy)


def test_shard_workers_skip_done_shards_and_match_one_pass(
    latent_dataset: tuple[Path, Path], tmp_path: Path
) -> None:
    root, out = latent_dataset
    source = out / "source"
    plan = plan_shards({"train": len(LatentDataset.open(out).split("train")), "validation": 6}, 8)
    assert [p.row_start for p in plan if p.split == "train"][:2] == [0, 8]
    workers = tmp_path / "workers"
    total = encode_dataset(CONFIG, source, workers, shard_range=(0, 1)).shards_total
    first = encode_dataset(CONFIG, source, workers, shard_range=(0, 2))
    assert first.shards_skipped == [0] and first.shards_encoded == [1] and first.manifest is None
    with pytest.raises(FileNotFoundError, match="not finished"):
        LatentDataset.open(workers)
    last = encode_dataset(CONFIG, source, workers, shard_range=(2, total))
    assert last.manifest is not None
    one_pass, split_pass = LatentDataset.open(out), LatentDataset.open(workers)
    for name in ("train", "validation"):
        np.testing.assert_array_equal(one_pass.split(name).latents(), split_pass.split(name).latents())
    with pytest.raises(ValueError, match="shard_range"):
        encode_dataset(CONFIG, source, workers, shard_range=(0, total + 5))


def test_job_with_other_config_refused(latent_dataset: tuple[Path, Path], tmp_path: Path) -> None:
    root, out = latent_dataset
    encode_dataset(CONFIG, out / "source", tmp_path / "job", shard_range=(0, 1))
    other = CONFIG.model_copy(update={"encoder": EncoderConfig(precision="bf16")})
    with pytest.raises(ValueError, match="different source or config"):
        encode_dataset(other, out / "source", tmp_path / "job", shard_range=(0, 1))


def test_ddp_sharded_batches_are_disjoint(latent_dataset: tuple[Path, Path]) -> None:
    _, out = latent_dataset
    split = LatentDataset.open(out).split("train")
    loaders = [BatchLoader(split, 4, rank=r, world_size=2, seed=3) for r in range(2)]
    seen = [set(), set()]
    for rank, loader in enumerate(loaders):
        for b in range(len(loader)):
            idx = loader.indices(0, b)
            seen[rank].update(idx.tolist())
        batch = next(loader)
        assert batch["latent"].shape == (4, 384) and batch["input_ids"].shape == (4, 16)
    assert not seen[0] & seen[1]
    assert len(seen[0] | seen[1]) == len(loaders[0]) * 8


def test_latent_dim_mismatch_names_both_dims_and_encoder(latent_dataset: tuple[Path, Path]) -> None:
    _, out = latent_dataset
    ds = LatentDataset.open(out)
    with pytest.raises(ValueError, match=r"model\.latent_dim=1024 .* dimension 384 \(encoder 'minilm'"):
        check_latent_dim(1024, ds, "mmdit")
    check_latent_dim(384, ds, "mmdit")


def test_open_refuses_token_dataset(latent_dataset: tuple[Path, Path]) -> None:
    _, out = latent_dataset
    with pytest.raises(ValueError, match="not a latent dataset"):
        LatentDataset.open(out / "source")
    record = json.loads((out / "train" / "shard-00000.json").read_text())
    assert record["rows"] == 8 and len(record["latents"]["sha256"]) == 64


def test_worker_blocks_cover_the_job_once() -> None:
    """Spec §13: N = 10, W = 3 -> [0, 3), [3, 6), [6, 10)."""
    assert [worker_shard_range(10, r, 3) for r in range(3)] == [(0, 3), (3, 6), (6, 10)]
    covered = [i for r in range(4) for i in range(*worker_shard_range(9, r, 4))]
    assert covered == list(range(9))
    with pytest.raises(ValueError, match="rank"):
        worker_shard_range(10, 3, 3)
