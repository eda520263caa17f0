"""Fixtures for the training-loop tests: one prepared slice of the bundled corpus per session."""

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
    # getbasetemp() is shared by the whole session, so every test directory reuses one preparation
    return prepare_debug_dataset(tmp_path_factory.getbasetemp() / "datasets")
