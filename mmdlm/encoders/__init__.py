"""Sentence-embedding encoders: a registry of exact recipes (minilm default, e5, bge-m3, qwen3, t5, sonar).

from mmdlm.encoders import load_encoder
enc = load_encoder("minilm")                       # offline, from the PyPI package
vecs = enc.encode(["a sentence"], role="passage")  # float32 (N, 384), unit norm
"""

from __future__ import annotations

from typing import Any

from mmdlm.config.latent import EncoderConfig
from mmdlm.encoders.base import SentenceEncoder
from mmdlm.encoders.recipes import RECIPES, EncoderRecipe, get_recipe, recipe_names


def load_encoder(config: EncoderConfig | str = "minilm", **overrides: Any) -> SentenceEncoder:
    """Build the encoder of `config` (an EncoderConfig, or a recipe name plus EncoderConfig fields).

    Hub ids load through transformers' `from_pretrained(model, revision=...)`; set HF_HUB_OFFLINE=1 to
    restrict loading to local folders and the cache.
    """
    if isinstance(config, str):
        config = EncoderConfig(name=config, **overrides)
    elif overrides:
        config = config.model_copy(update=overrides)
        config = EncoderConfig.model_validate(config.model_dump())
    recipe = get_recipe(config.name)
    if recipe.architecture == "sonar":
        from mmdlm.encoders.sonar import SonarEncoder

        return SonarEncoder(recipe, config)
    from mmdlm.encoders.hf import HFSentenceEncoder

    return HFSentenceEncoder.from_config(config, recipe)


__all__ = [
    "RECIPES",
    "EncoderConfig",
    "EncoderRecipe",
    "SentenceEncoder",
    "get_recipe",
    "load_encoder",
    "recipe_names",
]
