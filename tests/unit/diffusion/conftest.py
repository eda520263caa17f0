from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch


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


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run fastest on one thread; on a shared 2-core machine two threads spin and stall."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
