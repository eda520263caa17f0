"""`VocabInfo`: the token ids every model, process and sampler needs from a tokenizer.

Kept free of torch/transformers imports so configs, manifests and the REST API can use it cheaply.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator


class VocabInfo(BaseModel):
    """Vocabulary facts of one tokenizer.

    vocab_size is `len(tokenizer)`: base vocabulary plus every added special token, so every id a dataset
    row can hold is `< vocab_size`. Models may round their embedding table up; they never shrink it.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    vocab_size: int = Field(ge=1)
    pad_id: int = Field(ge=0)
    mask_id: int = Field(ge=0)
    bos_id: int = Field(ge=0)
    eos_id: int = Field(ge=0)

    @model_validator(mode="after")
    def _ids_in_range(self) -> VocabInfo:
        for name in ("pad_id", "mask_id", "bos_id", "eos_id"):
            if getattr(self, name) >= self.vocab_size:
                raise ValueError(
                    f"{name}={getattr(self, name)} is outside the vocabulary (size {self.vocab_size})"
                )
        # attention_mask is `ids != pad`, and the mask token must never be real text: both stay distinct
        # (BOS == EOS is fine, GPT-2 uses <|endoftext|> for both).
        if self.pad_id in (self.bos_id, self.eos_id, self.mask_id):
            raise ValueError(f"pad_id {self.pad_id} must differ from bos_id, eos_id and mask_id")
        if self.mask_id in (self.bos_id, self.eos_id):
            raise ValueError(f"mask_id {self.mask_id} must differ from bos_id and eos_id")
        return self
