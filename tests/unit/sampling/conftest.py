from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
import torch

from mmdlm.clusters import compute_clusters
from mmdlm.families import Built, get_family


@dataclass(frozen=True)
class Vocab:
    """Stand-in for mmdlm.data.VocabInfo: 60 ids, [PAD]=0, BOS=1, EOS=2, [MASK]=59."""

    vocab_size: int = 60
    pad_id: int = 0
    mask_id: int = 59
    bos_id: int = 1
    eos_id: int = 2


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run fastest on one thread; on a shared 2-core machine two threads spin and stall."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def clusters_dir(tmp_path_factory) -> str:
    emb = np.random.default_rng(0).normal(size=(60, 6)).astype(np.float32)
    clusters = compute_clusters(emb, 5, source={"kind": "random"}, exclude_ids=[59], seed=0)
    return str(clusters.save(tmp_path_factory.mktemp("hdlm") / "clusters"))


def build(family: str, clusters_dir: str, time_conditioning: bool = True, **process: Any) -> Built:
    """A cpu-nano model of `family` with random (non-zero) output layers, so it has preferences."""
    spec: dict[str, Any] = {
        "family": family,
        "model": {"preset": "cpu-nano", "max_seq_len": 32, "time_conditioning": time_conditioning},
        "process": process,
    }
    if family == "hdlm":
        spec["clusters"] = clusters_dir
    built = get_family(family).build(spec, Vocab())
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in built.model.parameters():
            if p.dim() > 0 and torch.count_nonzero(p) == 0:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    built.model.eval()
    return built
