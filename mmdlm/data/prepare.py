"""`prepare_dataset`: source documents -> tokenizer + int32 token shards + manifest (a `dataset` artifact).

Passes over the source (each one a plain iteration, so sources may be larger than memory):
  1. scan      read every document id, hash it with the seed, pick the validation documents;
  2. train     (bpe only) learn the tokenizer from the training documents;
  3. tokenize  batch-encode with the fast tokenizer and write rows to the split's shards.
The folder is built under a temporary sibling and renamed into place at the end, so a crash never
leaves something that looks like a finished dataset.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

import mmdlm
from mmdlm.config.data import BPETokenizerConfig, PrepareDataConfig
from mmdlm.confine import PathRoots
from mmdlm.data.corpus import Document, open_corpus
from mmdlm.data.manifest import DatasetManifest, SpecialTokens, TokenizerInfo, file_entry
from mmdlm.data.shards import DTYPE, SplitWriter
from mmdlm.data.tokenizers import TextEncoder, build_tokenizer, save_tokenizer, tokenizer_name, vocab_info

logger = logging.getLogger(__name__)

Progress = Callable[[int, int, str], None]
"""progress(done, total, phase): documents handled so far in a phase; total 0 means not known yet."""

ENCODE_BATCH = 512  # documents per encode call: large enough to amortise, small enough for a smooth bar


def prepare_dataset(
    config: PrepareDataConfig,
    out_dir: Path | str,
    progress: Progress | None = None,
    *,
    roots: PathRoots | None = None,
) -> DatasetManifest:
    """Build the dataset folder `out_dir` (it must not exist, or be empty) and return its manifest.

    progress(done, total, phase) is called every few hundred documents in each phase ("scanning documents",
    "training tokenizer", "tokenizing", finally "done"); an exception raised from it (e.g. a job's
    cancellation) stops the preparation and removes the partial folder.
    Raises ValueError naming the problem for bad input (no documents, bad JSONL, missing text field).
    roots: local paths of the config (folder source, pretrained tokenizer folder) must resolve inside
    them (`mmdlm.confine.PathNotAllowed` otherwise); None reads any path (a person's own files).
    """
    out_dir = Path(out_dir)
    report = progress or (lambda done, total, phase: None)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise ValueError(f"output folder {out_dir} already exists and is not empty")
    start = time.perf_counter()
    corpus = open_corpus(config.source, roots)

    def documents() -> Iterator[Document]:
        return itertools.islice(iter(corpus), config.max_documents)

    keys = _scan(documents(), config.seed, report)
    is_validation = _choose_validation(keys, config.validation_fraction)
    total = len(keys)

    tmp = out_dir.with_name(f".{out_dir.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        tokenizer = _tokenizer(config, documents, is_validation, report, roots)
        vocab = vocab_info(tokenizer)
        tokenizer_files = [file_entry(tmp, p) for p in save_tokenizer(tokenizer, tmp / "tokenizer")]
        encode = TextEncoder(tokenizer)
        writers = {
            split: SplitWriter(tmp, split, config.seq_len, vocab.pad_id, config.shard_rows, config.packing)
            for split in ("train", "validation")
        }
        done = 0
        report(0, total, "tokenizing")
        for batch in _batched(documents(), ENCODE_BATCH):
            for doc, key in zip(batch, keys[done : done + len(batch)], strict=True):
                if _doc_key(doc.id, config.seed) != key:
                    raise ValueError(f"source changed while it was being prepared (document {doc.id!r})")
            ids = encode([doc.text for doc in batch])
            rows: dict[str, list[np.ndarray]] = {"train": [], "validation": []}
            for i, doc_ids in enumerate(ids):
                split = "validation" if is_validation[done + i] else "train"
                rows[split].append(np.array([vocab.bos_id, *doc_ids, vocab.eos_id], dtype=DTYPE))
            for split, docs in rows.items():
                writers[split].add(docs)
            done += len(batch)
            report(done, total, "tokenizing")
        if done != total:
            raise ValueError(f"source changed while it was being prepared ({total} documents, then {done})")
        splits = {split: writer.close() for split, writer in writers.items()}
        manifest = DatasetManifest(
            source=corpus.describe(),
            tokenizer=TokenizerInfo(
                kind=config.tokenizer.type,
                name=tokenizer_name(config.tokenizer),
                vocab_size=vocab.vocab_size,
                files=tokenizer_files,
            ),
            special_tokens=SpecialTokens(
                pad=vocab.pad_id, mask=vocab.mask_id, bos=vocab.bos_id, eos=vocab.eos_id
            ),
            seq_len=config.seq_len,
            packing=config.packing,
            splits=splits,
            seed=config.seed,
            validation_fraction=config.validation_fraction,
            config=config.model_dump(mode="json"),
            mmdlm_version=mmdlm.__version__,
            created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        )
        manifest.write(tmp)
        if out_dir.exists():
            out_dir.rmdir()
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        tmp.rename(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info(
        "prepared %s: %d train / %d validation documents, %d / %d rows in %.1fs",
        out_dir, splits["train"].documents, splits["validation"].documents,
        splits["train"].rows, splits["validation"].rows, time.perf_counter() - start,
    )  # fmt: skip
    report(total, total, "done")
    return manifest


def _doc_key(doc_id: str, seed: int) -> int:
    """A seeded 64-bit hash of a document id: the split depends on ids only, never on their order."""
    digest = hashlib.blake2b(f"{seed}\x00{doc_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def _scan(documents: Iterator[Document], seed: int, report: Progress) -> np.ndarray:
    keys: list[int] = []
    for doc in documents:
        keys.append(_doc_key(doc.id, seed))
        if len(keys) % 8192 == 0:
            report(len(keys), 0, "scanning documents")
    report(len(keys), len(keys), "scanning documents")
    array = np.array(keys, dtype=np.uint64)
    if len(array) < 2:
        raise ValueError(
            f"source has {len(array)} non-empty document(s); at least 2 are needed for a train/validation split"
        )
    if len(np.unique(array)) != len(array):
        raise ValueError("source has duplicate document ids; each document must be distinct")
    return array


def _choose_validation(keys: np.ndarray, fraction: float) -> np.ndarray:
    """Mark the round(n * fraction) documents with the smallest keys (at least 1, never all) as validation."""
    count = min(max(1, round(len(keys) * fraction)), len(keys) - 1)
    chosen = np.zeros(len(keys), dtype=bool)
    chosen[np.argsort(keys, kind="stable")[:count]] = True
    return chosen


def _tokenizer(
    config: PrepareDataConfig,
    documents: Callable[[], Iterator[Document]],
    is_validation: np.ndarray,
    report: Progress,
    roots: PathRoots | None,
):  # -> PreTrainedTokenizerFast (not imported at module level for typing only)
    if not isinstance(config.tokenizer, BPETokenizerConfig):
        return build_tokenizer(config.tokenizer, roots=roots)
    num_train = int((~is_validation).sum())

    def training_texts() -> Iterator[str]:
        seen = 0
        for i, doc in enumerate(documents()):
            if not is_validation[i]:
                yield doc.text
                seen += 1
                if seen % 1024 == 0:
                    report(seen, num_train, "training tokenizer")
        report(num_train, num_train, "training tokenizer")

    return build_tokenizer(config.tokenizer, training_texts(), num_train)


def _batched(items: Iterator[Document], size: int) -> Iterator[list[Document]]:
    while batch := list(itertools.islice(items, size)):
        yield batch
