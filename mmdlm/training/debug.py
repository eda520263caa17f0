"""Small, fast configurations for tests, the demo and benchmarks: a prepared slice of the bundled corpus
and a CPU-sized TrainConfig for any family.

The corpus slice takes the first documents of each bundled part (Wikipedia leads, KJV Bible chapters,
Shakespeare scenes), so even a small slice holds the bundled mix: encyclopedic and Early Modern English.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
from pathlib import Path
from typing import Any

from mmdlm.config.data import BundledPart, BundledSource, PrepareDataConfig
from mmdlm.config.train import TrainConfig


def prepare_debug_dataset(
    root: str | Path,
    *,
    seq_len: int = 64,
    vocab_size: int = 1024,
    documents_per_part: int = 400,
    parts: tuple[BundledPart, ...] = ("wiki", "bible", "shakespeare"),
    validation_fraction: float = 0.05,
) -> Path:
    """Prepare (once; later calls reuse it) a BPE-tokenised slice of the bundled corpus under `root`.

    Each part is prepared from its first `documents_per_part` documents into a folder corpus, so the slice
    mixes all parts. Safe to call from concurrent processes (a file lock guards the preparation).
    """
    from mmdlm.data.corpus import open_corpus
    from mmdlm.data.prepare import prepare_dataset

    key = json.dumps([seq_len, vocab_size, documents_per_part, list(parts), validation_fraction])
    name = "bundled-" + hashlib.sha256(key.encode()).hexdigest()[:12]
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    out = root / name
    with open(root / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (out / "manifest.json").is_file():
            return out
        corpus_dir = root / f"{name}-corpus"
        corpus_dir.mkdir(exist_ok=True)
        for part in parts:
            docs = []
            for i, doc in enumerate(open_corpus(BundledSource(parts=[part]))):
                if i >= documents_per_part:
                    break
                docs.append(json.dumps({"text": doc.text}))
            (corpus_dir / f"{part}.jsonl").write_text("\n".join(docs) + "\n", encoding="utf-8")
        config = PrepareDataConfig.model_validate(
            {
                "source": {"type": "folder", "path": str(corpus_dir)},
                "tokenizer": {"type": "bpe", "vocab_size": vocab_size},
                "seq_len": seq_len,
                "validation_fraction": validation_fraction,
            }
        )
        prepare_dataset(config, out)
    return out


def prepare_debug_clusters(dataset: str | Path, root: str | Path, num_clusters: int = 16) -> Path:
    """HDLM clusters (once; later calls reuse them) of the dataset's tokenizer from the offline MiniLM
    encoder's input embeddings."""
    from mmdlm.clusters import clusters_for_tokenizer
    from mmdlm.data.tokens import TokenDataset

    ds = TokenDataset.open(dataset, verify=False)
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    out = root / f"{Path(dataset).name}-c{num_clusters}"
    with open(root / f"{out.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (out / "manifest.json").is_file():
            clusters = clusters_for_tokenizer(ds.tokenizer(), num_clusters, mask_id=ds.vocab.mask_id, seed=0)
            clusters.save(out)
    return out


def debug_train_config(
    family: str,
    dataset: str | Path,
    run_dir: str | Path,
    *,
    size: str = "cpu-nano",
    max_seq_len: int = 128,
    overrides: dict[str, Any] | None = None,
    **model_fields: Any,
) -> TrainConfig:
    """A short fp32 CPU run of `family` (`mdlm`, `gidd`, `hdlm`, `ar`) on `dataset`.

    `model_fields` go into the family spec (e.g. `clusters=DIR` for HDLM); `overrides` is a nested
    mapping applied on top (e.g. `{"steps": 50, "data": {"batch_size": 4}}`).
    """
    spec: dict[str, Any] = {
        "family": family,
        "model": {"preset": size, "max_seq_len": max_seq_len},
        **model_fields,
    }
    base: dict[str, Any] = {
        "model": spec,
        "data": {"dataset": str(dataset), "batch_size": 16, "shuffle": True},
        "optimizer": {"lr": 1e-3},
        "schedule": {"kind": "cosine", "warmup_steps": 5},
        "steps": 20,
        "precision": "fp32",
        "checkpoint": {"interval": 1000},
        "eval": {"interval": 1000, "batches": 4},
        "log": {"interval": 1, "console": False},
        "run_dir": str(run_dir),
        "seed": 0,
    }
    merged = _merge(base, overrides or {})
    return TrainConfig.model_validate(merged)


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out
