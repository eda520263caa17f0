"""TokenDataset: verification against the manifest and row access across shards."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from mmdlm.data import TokenDataset, VocabInfo


@pytest.fixture
def copy(small_gpt2_dataset: Path, tmp_path: Path) -> Path:
    """A private copy that a test may damage."""
    return Path(shutil.copytree(small_gpt2_dataset, tmp_path / "ds"))


def test_open_exposes_manifest_vocab_and_splits(small_gpt2_dataset: Path) -> None:
    ds = TokenDataset.open(small_gpt2_dataset)
    assert ds.vocab == VocabInfo(vocab_size=50259, pad_id=50257, mask_id=50258, bos_id=50256, eos_id=50256)
    assert ds.split_names == ["train", "validation"] and ds.seq_len == 64
    train = ds.split("train")
    assert len(train) == ds.manifest.splits["train"].rows
    assert train.num_tokens == ds.manifest.splits["train"].tokens
    assert ds.tokenizer().mask_token_id == 50258
    with pytest.raises(KeyError, match="no split 'test'"):
        ds.split("test")


def test_rows_match_the_shard_bytes_across_shard_boundaries(small_gpt2_dataset: Path) -> None:
    ds = TokenDataset.open(small_gpt2_dataset)
    manifest, train = ds.manifest, ds.split("train")
    raw = np.concatenate([np.load(small_gpt2_dataset / s.path) for s in manifest.splits["train"].shards])
    first_rows = manifest.splits["train"].shards[0].rows
    picks = [0, first_rows - 1, first_rows, first_rows + 1, len(train) - 1]
    for i in picks:
        row = train[i]
        assert row["input_ids"].dtype == np.int64 and row["input_ids"].shape == (64,)
        assert row["attention_mask"].dtype == np.bool_
        np.testing.assert_array_equal(row["input_ids"], raw[i])
        np.testing.assert_array_equal(row["attention_mask"], raw[i] != 50257)
    np.testing.assert_array_equal(train[-1]["input_ids"], raw[-1])
    batch = train.get_batch(picks[::-1] + [3, 3])
    np.testing.assert_array_equal(batch["input_ids"], raw[picks[::-1] + [3, 3]])
    np.testing.assert_array_equal(batch["attention_mask"], raw[picks[::-1] + [3, 3]] != 50257)
    assert not batch["attention_mask"][:, 0].all() or raw[:, 0].min() != 50257
    with pytest.raises(IndexError):
        train[len(train)]
    with pytest.raises(IndexError):
        train.get_batch([len(train)])


def test_corrupted_shard_is_detected(copy: Path) -> None:
    shard = copy / "train" / "shard-00001.npy"
    data = bytearray(shard.read_bytes())
    data[-1] ^= 0xFF  # same size, different bytes
    shard.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"train/shard-00001\.npy does not match its sha256"):
        TokenDataset.open(copy)
    TokenDataset.open(copy, verify=False)  # explicitly skipped: sizes still agree


def test_truncated_or_missing_files_are_detected_even_without_verify(copy: Path) -> None:
    tokenizer_json = copy / "tokenizer" / "tokenizer.json"
    original = tokenizer_json.read_bytes()
    tokenizer_json.write_bytes(original[:-10])
    with pytest.raises(ValueError, match="tokenizer/tokenizer.json has .* bytes, the manifest says"):
        TokenDataset.open(copy, verify=False)
    tokenizer_json.write_bytes(original)
    (copy / "validation" / "shard-00000.npy").unlink()
    with pytest.raises(FileNotFoundError, match="validation/shard-00000.npy"):
        TokenDataset.open(copy, verify=False)


def test_unknown_format_and_missing_manifest(copy: Path, tmp_path: Path) -> None:
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["format"] = "mmdlm.tokens/v9"
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="unknown dataset format 'mmdlm.tokens/v9'"):
        TokenDataset.open(copy)
    with pytest.raises(FileNotFoundError, match="no manifest.json"):
        TokenDataset.open(tmp_path / "empty")


def test_shard_with_wrong_shape_is_refused(copy: Path) -> None:
    path = copy / "validation" / "shard-00000.npy"
    rows = np.load(path)
    np.save(path, rows[:, :32].copy())
    manifest = json.loads((copy / "manifest.json").read_text())
    shard = manifest["splits"]["validation"]["shards"][0]
    shard["bytes"] = path.stat().st_size
    (copy / "manifest.json").write_text(json.dumps(manifest))
    split = TokenDataset.open(copy, verify=False).split("validation")
    with pytest.raises(ValueError, match=r"expected int32 of shape \(\d+, 64\)"):
        split[0]
