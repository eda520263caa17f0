"""Corpora, tokenizers, `prepare_dataset`, `TokenDataset` and the deterministic `BatchLoader`.

Exports resolve lazily, so `from mmdlm.data.manifest import DatasetManifest` (or `mmdlm.data.vocab`)
does not pull in torch or transformers; `from mmdlm.data import BatchLoader` imports torch on demand.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mmdlm.data.loader import BatchLoader
    from mmdlm.data.manifest import DatasetManifest
    from mmdlm.data.prepare import prepare_dataset
    from mmdlm.data.tokenizers import build_tokenizer
    from mmdlm.data.tokens import TokenDataset, TokenSplit
    from mmdlm.data.vocab import VocabInfo

_EXPORTS = {
    "BatchLoader": "mmdlm.data.loader",
    "DatasetManifest": "mmdlm.data.manifest",
    "prepare_dataset": "mmdlm.data.prepare",
    "build_tokenizer": "mmdlm.data.tokenizers",
    "TokenDataset": "mmdlm.data.tokens",
    "TokenSplit": "mmdlm.data.tokens",
    "VocabInfo": "mmdlm.data.vocab",
}

__all__ = [
    "BatchLoader",
    "DatasetManifest",
    "TokenDataset",
    "TokenSplit",
    "VocabInfo",
    "build_tokenizer",
    "prepare_dataset",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'mmdlm.data' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
