"""Shared fixtures: small prepared datasets and a helper that writes a folder corpus."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# `datasets` caches what it builds from local json files; keep that out of the user's home.
os.environ.setdefault("HF_DATASETS_CACHE", os.path.join(tempfile.gettempdir(), "mmdlm-tests-hf-datasets"))

from mmdlm.config.data import PrepareDataConfig  # noqa: E402
from mmdlm.data.prepare import prepare_dataset  # noqa: E402


def write_jsonl(path: Path, texts: list[str], field: str = "text") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({field: t}) + "\n" for t in texts), encoding="utf-8")
    return path


@pytest.fixture
def jsonl_corpus(tmp_path: Path) -> Callable[[list[str]], Path]:
    """Write texts as one .jsonl file in a fresh folder; returns the folder."""

    def make(texts: list[str]) -> Path:
        folder = tmp_path / "corpus"
        write_jsonl(folder / "docs.jsonl", texts)
        return folder

    return make


@pytest.fixture(scope="session")
def small_gpt2_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """400 Bible chapters, gpt2, seq_len 64: about 5k rows, so train spans several shards."""
    out = tmp_path_factory.mktemp("ds") / "gpt2"
    config = PrepareDataConfig(
        source={"type": "bundled", "parts": ["bible"]},
        tokenizer="gpt2",
        seq_len=64,
        max_documents=400,
        shard_rows=2048,
        validation_fraction=0.1,
    )
    prepare_dataset(config, out)
    return out
