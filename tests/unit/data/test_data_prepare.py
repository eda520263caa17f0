"""prepare_dataset: artifact layout, row layouts (pack/pad), document split, determinism, bad input."""

from __future__ import annotations

import json
import random
import string
from pathlib import Path

import numpy as np
import pytest

from mmdlm.config.data import PrepareDataConfig
from mmdlm.data import DatasetManifest, TokenDataset, prepare_dataset
from mmdlm.data.manifest import sha256_file
from mmdlm.data.tokenizers import load_tokenizer

from .conftest import write_jsonl


def _shards(root: Path, manifest: DatasetManifest, split: str) -> np.ndarray:
    return np.concatenate([np.load(root / s.path) for s in manifest.splits[split].shards])


def test_artifact_layout_counts_and_checksums(small_gpt2_dataset: Path) -> None:
    root = small_gpt2_dataset
    raw = json.loads((root / "manifest.json").read_text())
    manifest = DatasetManifest.model_validate(raw)
    assert raw["format"] == "mmdlm.tokens/v1" and raw["mmdlm_version"]
    assert raw["special_tokens"] == {"pad": 50257, "mask": 50258, "bos": 50256, "eos": 50256}
    assert raw["tokenizer"]["kind"] == "gpt2" and raw["tokenizer"]["vocab_size"] == 50259
    assert raw["source"]["type"] == "bundled" and raw["seq_len"] == 64
    listed = {entry.path for entry in manifest.files()}
    on_disk = {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()} - {"manifest.json"}
    assert listed == on_disk
    for entry in manifest.files():
        assert sha256_file(root / entry.path) == entry.sha256
        assert (root / entry.path).stat().st_size == entry.bytes
    assert len(manifest.splits["train"].shards) >= 2  # shard_rows=2048 splits train
    assert all(s.rows <= 2048 for split in manifest.splits.values() for s in split.shards)
    assert manifest.splits["train"].documents + manifest.splits["validation"].documents == 400
    assert manifest.splits["validation"].documents == 40
    for split, info in manifest.splits.items():
        rows = _shards(root, manifest, split)
        assert rows.dtype == np.int32 and rows.shape == (info.rows, 64)
        assert int((rows != 50257).sum()) == info.tokens
        assert int((rows == 50256).sum()) == 2 * info.documents  # BOS and EOS are both <|endoftext|>
        assert rows.max() < 50259 and not (rows == 50258).any()  # no [MASK] in data
        # pack: only the very last row may hold padding, and only at its end
        assert not (rows[:-1] == 50257).any()
        last = rows[-1]
        assert (last[np.argmax(last == 50257) :] == 50257).all() or not (last == 50257).any()
    assert not list(root.parent.glob(".*tmp*"))


def test_tokenizer_folder_reloads_with_the_manifest_ids(small_gpt2_dataset: Path) -> None:
    manifest = DatasetManifest.read(small_gpt2_dataset)
    tokenizer = load_tokenizer(small_gpt2_dataset / manifest.tokenizer.dir)
    assert len(tokenizer) == manifest.tokenizer.vocab_size
    assert (tokenizer.pad_token_id, tokenizer.mask_token_id) == (
        manifest.special_tokens.pad,
        manifest.special_tokens.mask,
    )
    first = _shards(small_gpt2_dataset, manifest, "train")[0]
    assert tokenizer.decode(first[1:8]).startswith("In the beginning God created")


def test_pad_layout_has_no_extra_row_and_single_cls_sep(tmp_path: Path) -> None:
    """bert, pad: [CLS] + 14 words + [SEP] fills one row of 16 exactly; no all-PAD row follows (bug 17)."""
    seq_len = 16
    texts = [
        " ".join(["hello"] * (seq_len - 2)),  # exactly one row
        "short text",  # one padded row
        " ".join(["world"] * 30),  # 32 tokens: exactly two rows
        " ".join(["again"] * 40),  # 42 tokens: three rows, the last padded
    ] * 3
    write_jsonl(tmp_path / "c" / "d.jsonl", texts)
    config = PrepareDataConfig(
        source={"type": "folder", "path": str(tmp_path / "c")},
        tokenizer="bert-base-uncased",
        seq_len=seq_len,
        packing="pad",
        validation_fraction=0.25,
    )
    manifest = prepare_dataset(config, tmp_path / "out")
    total_rows = 0
    for split in ("train", "validation"):
        rows = _shards(tmp_path / "out", manifest, split)
        total_rows += len(rows)
        assert not (rows == 0).all(axis=1).any()  # no all-PAD row
        docs = manifest.splits[split].documents
        assert int((rows == 101).sum()) == docs and int((rows == 102).sum()) == docs
        assert not ((rows[:, :-1] == 101) & (rows[:, 1:] == 101)).any()  # never [CLS][CLS]
        assert not ((rows[:, :-1] == 102) & (rows[:, 1:] == 102)).any()  # never [SEP][SEP]
        for row in rows:  # padding only at the right end of a row
            pad = row == 0
            assert (pad[np.argmax(pad) :]).all() or not pad.any()
    assert total_rows == 3 * (1 + 1 + 2 + 3)


def _marker_documents(count: int) -> tuple[list[str], list[str]]:
    rng = random.Random(0)
    words = ["".join(rng.choices(string.ascii_lowercase, k=9)) for _ in range(count)]
    texts = [f"{word} " * 40 + "the end." for word in words]
    return words, texts


def test_validation_documents_never_appear_in_train(tmp_path: Path) -> None:
    words, texts = _marker_documents(60)
    write_jsonl(tmp_path / "c" / "d.jsonl", texts)
    seen = {}
    for seed in (0, 1):
        config = PrepareDataConfig(
            source={"type": "folder", "path": str(tmp_path / "c")},
            seq_len=32,
            packing="pad",
            validation_fraction=0.2,
            seed=seed,
        )
        out = tmp_path / f"out{seed}"
        manifest = prepare_dataset(config, out)
        tokenizer = load_tokenizer(out / "tokenizer")
        found = {}
        for split in ("train", "validation"):
            text = tokenizer.decode(_shards(out, manifest, split).ravel(), skip_special_tokens=True)
            found[split] = {w for w in words if w in text}
        assert not found["train"] & found["validation"]
        assert found["train"] | found["validation"] == set(words)
        assert len(found["validation"]) == manifest.splits["validation"].documents == 12
        seen[seed] = found["validation"]
    assert seen[0] != seen[1]  # the seed picks the documents


def test_bpe_learns_only_from_training_documents(tmp_path: Path) -> None:
    words, texts = _marker_documents(40)
    write_jsonl(tmp_path / "c" / "d.jsonl", texts)
    config = PrepareDataConfig(
        source={"type": "folder", "path": str(tmp_path / "c")},
        tokenizer={"type": "bpe", "vocab_size": 1500},
        seq_len=32,
        packing="pad",
        validation_fraction=0.25,
    )
    manifest = prepare_dataset(config, tmp_path / "out")
    tokenizer = TokenDataset.open(tmp_path / "out").tokenizer()
    assert manifest.vocab.vocab_size == len(tokenizer) and manifest.tokenizer.name == "bpe-1500"
    valid_rows = _shards(tmp_path / "out", manifest, "validation")
    valid_text = tokenizer.decode(valid_rows.ravel(), skip_special_tokens=True)
    for word in words:
        pieces = len(tokenizer(" " + word).input_ids)
        if word in valid_text:
            assert pieces > 1, f"{word} (validation only) became a single token"
        else:
            assert pieces == 1, f"{word} (train, 40 repeats) was not learned"


def test_same_config_gives_byte_identical_artifacts(tmp_path: Path) -> None:
    config = PrepareDataConfig(
        source={"type": "bundled", "parts": ["shakespeare"]},
        tokenizer={"type": "bpe", "vocab_size": 1000},
        max_documents=60,
        seq_len=32,
    )
    first = prepare_dataset(config, tmp_path / "a")
    second = prepare_dataset(config, tmp_path / "b")
    assert first.files() == second.files()
    for entry in first.files():
        assert (tmp_path / "a" / entry.path).read_bytes() == (tmp_path / "b" / entry.path).read_bytes()
    assert first.model_dump(exclude={"created_at"}) == second.model_dump(exclude={"created_at"})


def test_progress_is_reported_per_phase(tmp_path: Path) -> None:
    calls: list[tuple[int, int, str]] = []
    config = PrepareDataConfig(source={"type": "bundled", "parts": ["wiki"]}, max_documents=2000, seq_len=32)
    prepare_dataset(config, tmp_path / "out", progress=lambda d, t, p: calls.append((d, t, p)))
    tokenizing = [(d, t) for d, t, p in calls if p == "tokenizing"]
    assert len(tokenizing) >= 4 and tokenizing[0] == (0, 2000) and tokenizing[-1] == (2000, 2000)
    assert [d for d, _ in tokenizing] == sorted(d for d, _ in tokenizing)
    assert calls[-1] == (2000, 2000, "done")


def test_an_exception_from_progress_stops_and_cleans_up(tmp_path: Path) -> None:
    class Cancelled(Exception):
        pass

    def progress(done: int, total: int, phase: str) -> None:
        if phase == "tokenizing" and done > 0:
            raise Cancelled

    config = PrepareDataConfig(source={"type": "bundled", "parts": ["wiki"]}, max_documents=2000, seq_len=32)
    with pytest.raises(Cancelled):
        prepare_dataset(config, tmp_path / "out", progress=progress)
    assert list(tmp_path.iterdir()) == []


def test_hf_source_reads_a_local_dataset_folder(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "hf" / "train.jsonl", [f"row {i} of a local dataset." for i in range(30)])
    config = PrepareDataConfig(
        source={"type": "hf", "name": str(tmp_path / "hf")}, seq_len=16, max_documents=20
    )
    manifest = prepare_dataset(config, tmp_path / "out")
    assert manifest.splits["train"].documents + manifest.splits["validation"].documents == 20
    assert manifest.source["type"] == "hf"


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ({}, "holds no .txt or .jsonl files"),
        ({"a.jsonl": '{"text": "fine"}\nnot json\n'}, r"a\.jsonl:2: not valid JSON"),
        ({"a.jsonl": '{"text": "fine"}\n{"body": "x"}\n'}, r"a\.jsonl:2: no field 'text'"),
        ({"a.txt": "only one document"}, "at least 2 are needed"),
        ({"a.txt": "   \n", "b.txt": ""}, "0 non-empty document"),
    ],
)
def test_bad_input_is_a_value_error_and_leaves_nothing(tmp_path: Path, files: dict, message: str) -> None:
    corpus = tmp_path / "c"
    corpus.mkdir()
    for name, content in files.items():
        (corpus / name).write_text(content, encoding="utf-8")
    config = PrepareDataConfig(source={"type": "folder", "path": str(corpus)})
    with pytest.raises(ValueError, match=message):
        prepare_dataset(config, tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c"]


def test_refuses_a_non_empty_output_folder(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    with pytest.raises(ValueError, match="not empty"):
        prepare_dataset(PrepareDataConfig(max_documents=10), tmp_path / "out")
    assert (tmp_path / "out" / "keep.txt").read_text() == "mine"


@pytest.mark.slow
def test_full_bundled_corpus_with_gpt2(tmp_path: Path) -> None:
    """The whole ~14 MB corpus (about 3.6 M GPT-2 tokens) prepares in seconds."""
    manifest = prepare_dataset(PrepareDataConfig(), tmp_path / "out")
    train, valid = manifest.splits["train"], manifest.splits["validation"]
    documents = train.documents + valid.documents
    assert 12_000 < documents < 12_300
    assert valid.documents == round(0.05 * documents)
    assert 3.3e6 < train.tokens + valid.tokens < 3.9e6
    assert train.rows == -(-train.tokens // 128)
