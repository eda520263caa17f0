"""SONAR text encoder through Meta's `sonar` package (PyPI `sonar-space`), when installed.

There is no fallback: the original silently switched to E5 when SONAR failed to load (B17), which
produced a dataset labelled SONAR with E5 vectors. Here a missing package is an error naming it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from mmdlm.config.latent import EncoderConfig
from mmdlm.encoders.base import Progress, Role, check_texts, empty
from mmdlm.encoders.recipes import EncoderRecipe


def _import_pipeline() -> Any:
    try:
        from sonar.inference_pipelines.text import TextToEmbeddingModelPipeline
    except ImportError as exc:
        raise ImportError(
            "encoder 'sonar' needs the package 'sonar-space' (and its fairseq2 runtime): "
            "pip install sonar-space; no other encoder is substituted"
        ) from exc
    return TextToEmbeddingModelPipeline


class SonarEncoder:
    """SONAR's own pooling; vectors are returned as float32 and not normalised (the model's own scale)."""

    def __init__(self, recipe: EncoderRecipe, config: EncoderConfig, language: str = "eng_Latn") -> None:
        if config.dim is not None:
            raise ValueError("encoder.dim is not supported for 'sonar' (no Matryoshka training)")
        pipeline_cls = _import_pipeline()
        self.recipe = recipe
        self.config = config
        self.language = language
        self.source = config.model or recipe.model_id
        self.max_tokens = config.max_tokens or recipe.max_tokens
        dtype = torch.bfloat16 if config.precision == "bf16" else torch.float32
        self.pipeline = pipeline_cls(
            encoder=self.source, tokenizer=self.source, device=torch.device(config.device), dtype=dtype
        )

    @property
    def dim(self) -> int:
        return self.recipe.dim

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.recipe.name,
            "model": self.source,
            "revision": self.config.revision,
            "recipe": self.recipe.to_dict(),
            "dim": self.dim,
            "max_tokens": self.max_tokens,
            "normalize": False,
            "pooling": "native",
            "language": self.language,
            "precision": self.config.precision,
        }

    def encode(
        self,
        texts: Sequence[str],
        *,
        role: Role = "passage",  # noqa: ARG002 - SONAR is symmetric
        batch_size: int | None = None,
        progress: Progress | None = None,
    ) -> np.ndarray:
        texts = check_texts(texts)
        if not texts:
            return empty(self.dim)
        batch_size = batch_size or self.config.batch_size
        chunks = []
        for start in range(0, len(texts), batch_size):
            batch = texts[start : start + batch_size]
            vectors = self.pipeline.predict(
                batch, source_lang=self.language, batch_size=len(batch), max_seq_len=self.max_tokens
            )
            chunks.append(vectors.to(torch.float32).cpu().numpy())
            if progress is not None:
                progress(len(batch))
        return np.concatenate(chunks, axis=0)
