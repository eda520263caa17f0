from __future__ import annotations

from dataclasses import dataclass

import pytest


@dataclass(frozen=True)
class Vocab:
    """Stand-in for mmdlm.data.VocabInfo: 40 ids, [PAD]=0, BOS=1, EOS=2, [MASK]=39."""

    vocab_size: int = 40
    pad_id: int = 0
    mask_id: int = 39
    bos_id: int = 1
    eos_id: int = 2


@pytest.fixture
def vocab() -> Vocab:
    return Vocab()
