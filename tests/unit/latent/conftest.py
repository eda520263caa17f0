"""Tiny latent-family fixtures: a 40-token vocabulary, 8-d latents, 2-block networks."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mmdlm.config.latent import EncodeConfig, EncoderConfig, LatentDiTConfig, MMDiTConfig, MMDiTSpec
from mmdlm.data.latent import encode_dataset
from mmdlm.data.vocab import VocabInfo
from mmdlm.families import get_family
from mmdlm.pipeline import save_model_folder

VOCAB = VocabInfo(vocab_size=40, pad_id=0, mask_id=1, bos_id=2, eos_id=3)
D = 8
L = 12


def mmdit_spec(**objective) -> MMDiTSpec:
    model = MMDiTConfig(hidden_size=32, n_blocks=2, n_heads=4, cond_dim=32, max_seq_len=L, latent_dim=D)
    return MMDiTSpec(model=model, objective=objective)


def dit_config() -> LatentDiTConfig:
    return LatentDiTConfig(hidden_size=32, n_heads=4, n_blocks=2, cond_dim=32, max_seq_len=L, latent_dim=D)


def make_batch(B: int = 8, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, VOCAB.vocab_size, (B, L), generator=g)
    lengths = torch.randint(4, L + 1, (B,), generator=g)
    mask = torch.arange(L)[None] < lengths[:, None]
    ids[:, 0] = VOCAB.bos_id
    ids = torch.where(mask, ids, VOCAB.pad_id)
    latent = torch.nn.functional.normalize(torch.randn(B, D, generator=g), dim=-1)
    return {"input_ids": ids, "attention_mask": mask, "latent": latent}


@pytest.fixture
def batch() -> dict[str, torch.Tensor]:
    return make_batch()


TOPICS = ["river", "castle", "garden", "engine", "violin", "harbor", "desert", "glacier", "market", "forest"]


def _write_corpus(folder: Path) -> None:
    folder.mkdir(parents=True)
    for i in range(24):
        topic = TOPICS[i % len(TOPICS)]
        text = f"Document {i} is about a {topic}. The {topic} number {i} was described in detail by the writer called w{i * 7}."
        (folder / f"doc{i:02d}.txt").write_text(text)


CONFIG = EncodeConfig(
    shard_rows=8, seq_len=16, validation_fraction=0.25, encoder=EncoderConfig(batch_size=16)
)


@pytest.fixture(scope="session")
def latent_dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("latent")
    _write_corpus(root / "texts")
    result = encode_dataset(CONFIG, root / "texts", root / "latents")
    assert result.manifest is not None
    return root, root / "latents"


@pytest.fixture(scope="session")
def model_dir(latent_dataset: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    _, data_dir = latent_dataset
    family = get_family("mmdit")
    spec = MMDiTSpec(
        model=MMDiTConfig(hidden_size=32, n_blocks=1, n_heads=2, cond_dim=32, max_seq_len=16, latent_dim=384)
    )
    data = family.open_dataset(spec, data_dir)
    built = family.build(spec, data.vocab)
    family.bind_dataset(built, data)
    return save_model_folder(
        tmp_path_factory.mktemp("m") / "model", spec=spec, vocab=data.vocab, state_dict=built.model.state_dict(),
        tokenizer_dir=data_dir / "tokenizer", extras=built.extras,
    )  # fmt: skip
