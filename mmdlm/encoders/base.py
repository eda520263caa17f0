"""The interface every sentence encoder offers, and the helpers they share."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal, Protocol

import numpy as np

from mmdlm.encoders.recipes import EncoderRecipe

Role = Literal["passage", "query"]
Progress = Callable[[int], None]


class SentenceEncoder(Protocol):
    """Text -> float32 vector. `encode` is deterministic: the same texts give the same array."""

    recipe: EncoderRecipe

    @property
    def dim(self) -> int: ...

    def describe(self) -> dict[str, Any]:
        """Everything needed to reproduce a latent: recipe, model, revision, dim, precision."""
        ...

    def encode(
        self,
        texts: Sequence[str],
        *,
        role: Role = "passage",
        batch_size: int | None = None,
        progress: Progress | None = None,
    ) -> np.ndarray:
        """Return `(len(texts), dim)` float32 embeddings in input order."""
        ...


def check_texts(texts: Sequence[str]) -> list[str]:
    if isinstance(texts, str):
        raise TypeError("encode() takes a sequence of texts, got a single str; wrap it in a list")
    out = list(texts)
    for i, text in enumerate(out):
        if not isinstance(text, str):
            raise TypeError(f"texts[{i}] must be a str, got {type(text).__name__}")
    return out


def empty(dim: int) -> np.ndarray:
    return np.zeros((0, dim), dtype=np.float32)
