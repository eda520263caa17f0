"""Fixtures for multi-process training tests (torchrun, gloo)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from mmdlm.training.debug import prepare_debug_dataset  # noqa: E402


@pytest.fixture(scope="session")
def debug_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return prepare_debug_dataset(tmp_path_factory.getbasetemp() / "datasets")
