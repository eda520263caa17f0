"""Fixtures of the sampler unit tests: one random-initialised model folder per family (cpu-nano sized,
saved and reloaded through the real `model` folder format) on a small prepared dataset's tokenizer.
Random weights are enough here: these tests check how requests are batched, seeded and refused, not
what a trained model writes."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from mmdlm.clusters import compute_clusters
from mmdlm.data.tokens import TokenDataset
from mmdlm.families import get_family
from mmdlm.pipeline import load_pretrained, save_model_folder
from mmdlm.training.debug import prepare_debug_dataset
from services.sampler.cache import LoadedModel, module_bytes

LATENT_DIM = 8
FAMILIES = ("mdlm", "gidd", "hdlm", "ar", "mmdit", "latent-dit", "cross-dit")


@pytest.fixture(autouse=True)
def one_thread() -> Any:
    """Tiny models run fastest on one thread on the shared 2-core machine."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def dataset_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return prepare_debug_dataset(
        tmp_path_factory.getbasetemp() / "trainer-datasets", seq_len=32, vocab_size=512, documents_per_part=60
    )


def _spec(family: str, clusters: Path | None) -> dict[str, Any]:
    if family in ("mdlm", "gidd", "ar"):
        return {"family": family, "model": {"preset": "cpu-nano", "max_seq_len": 32}}
    if family == "hdlm":
        return {
            "family": "hdlm",
            "model": {"preset": "cpu-nano", "max_seq_len": 32},
            "clusters": str(clusters),
        }
    if family == "mmdit":
        model = {"hidden_size": 32, "n_blocks": 2, "n_heads": 4, "cond_dim": 32, "max_seq_len": 32,
                 "latent_dim": LATENT_DIM}  # fmt: skip
        return {"family": "mmdit", "model": model}
    return {"family": family, "model": {"preset": "cpu-nano", "max_seq_len": 32, "latent_dim": LATENT_DIM}}


@pytest.fixture(scope="session")
def model_dirs(dataset_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """family -> a `model` folder with random (non-zero) weights and the dataset's tokenizer."""
    root = tmp_path_factory.mktemp("sampler-models")
    ds = TokenDataset.open(dataset_dir, verify=False)
    vocab = ds.vocab
    emb = np.random.default_rng(0).normal(size=(vocab.vocab_size, 6)).astype(np.float32)
    clusters = compute_clusters(emb, 8, source={"kind": "random"}, exclude_ids=[vocab.mask_id], seed=0)
    clusters_dir = clusters.save(root / "clusters")
    out = {}
    for family in FAMILIES:
        fam = get_family(family)
        spec = fam.parse(_spec(family, clusters_dir)) if hasattr(fam, "parse") else _ar_spec()  # type: ignore[attr-defined]
        built = fam.build(spec, vocab)
        g = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for p in built.model.parameters():
                if p.dim() > 0 and torch.count_nonzero(p) == 0:  # zero-initialised heads: give them opinions
                    p.copy_(torch.randn(p.shape, generator=g) * 0.3)
        out[family] = save_model_folder(
            root / family, spec=spec, vocab=vocab, state_dict=built.model.state_dict(),
            tokenizer_dir=dataset_dir / ds.manifest.tokenizer.dir, extras=built.extras,
            trained={"step": 0, "seq_len": 32},
        )  # fmt: skip
    return out


def _ar_spec() -> Any:
    from mmdlm.config.ar import ARSpec

    return ARSpec.model_validate(_spec("ar", None))


@pytest.fixture(scope="session")
def load_model(model_dirs: dict[str, Path]) -> Callable[[str], LoadedModel]:
    cache: dict[str, LoadedModel] = {}

    def load(family: str) -> LoadedModel:
        if family not in cache:
            pipe = load_pretrained(model_dirs[family])
            cache[family] = LoadedModel(
                artifact_id=f"m-{family}", owner_id=1, pipe=pipe, nbytes=module_bytes(pipe)
            )
        return cache[family]

    return load
