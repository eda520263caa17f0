"""Generation with a loaded latent-family `Pipeline`, from and to plain texts and vectors.

    out = generate_latent(pipe, LatentSampleConfig(mode="l2t"), texts=["a sentence to paraphrase"])
    out.texts          # text generated from the encoder's latent of each input text
    out = generate_latent(pipe, LatentSampleConfig(mode="t2l"), texts=["a query"])
    out.latents        # (N, D) float32, the model's latent for each text (x0_hat, encoder space)

l2t takes `latents` (N, D) or `texts` (encoded first with the model's own encoder recipe, role and
revision, recorded in its spec); t2l takes `texts`, tokenised as dataset rows (BOS + text + EOS).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from mmdlm.config.latent import LatentSampleConfig
from mmdlm.families import get_family


@dataclass(frozen=True)
class LatentGeneration:
    texts: list[str]
    ids: torch.Tensor
    latents: np.ndarray | None
    nfe: int
    elapsed_s: float
    mode: str
    protocol: dict[str, Any]


def tokenize_rows(
    tokenizer: Any, vocab: Any, texts: Sequence[str], seq_len: int
) -> tuple[np.ndarray, np.ndarray]:
    """Texts as dataset rows: BOS + ids + EOS (cut to seq_len), PAD after; (N, L) int64 ids and bool mask."""
    from mmdlm.data.tokenizers import TextEncoder

    ids = np.full((len(texts), seq_len), vocab.pad_id, dtype=np.int64)
    for i, row in enumerate(TextEncoder(tokenizer)(list(texts))):
        full = [vocab.bos_id, *row, vocab.eos_id][:seq_len]
        ids[i, : len(full)] = full
    return ids, ids != vocab.pad_id


def encode_texts(pipe: Any, texts: Sequence[str], encoder: Any = None) -> np.ndarray:
    """The latents the model was trained on, for new texts: its spec's encoder recipe and role."""
    if encoder is None:
        if pipe.spec.encoder is None:
            raise ValueError("this model records no encoder (spec.encoder); pass latents instead of texts")
        from mmdlm.encoders import load_encoder

        encoder = load_encoder(pipe.spec.encoder)
    return encoder.encode(list(texts), role=pipe.spec.encoder_role)


def generate_latent(
    pipe: Any,
    config: LatentSampleConfig,
    *,
    latents: np.ndarray | torch.Tensor | None = None,
    texts: Sequence[str] | None = None,
    lengths: torch.Tensor | None = None,
    encoder: Any = None,
) -> LatentGeneration:
    """Run `config.mode` on a latent-family pipeline; see the module docstring for the inputs."""
    family = get_family(pipe.family)
    if pipe.tokenizer is None:
        raise ValueError("the model folder has no tokenizer/; it is needed to read and write text")
    seq_len = config.seq_len or pipe.model.config.max_seq_len
    kwargs: dict[str, Any] = {"lengths": lengths}
    if config.mode == "t2l":
        if not texts:
            raise ValueError("mode t2l needs texts to compute latents for")
        ids, mask = tokenize_rows(pipe.tokenizer, pipe.vocab, texts, seq_len)
        kwargs.update(text_ids=torch.from_numpy(ids), text_mask=torch.from_numpy(mask))
    elif config.mode == "l2t":
        if latents is not None and texts is not None:
            raise ValueError("give either latents or texts (to encode) for mode l2t, not both")
        if texts is not None:
            latents = encode_texts(pipe, texts, encoder)
        if latents is not None:
            latents = torch.as_tensor(np.asarray(latents), dtype=torch.float32)
            if latents.dim() != 2 or latents.shape[1] != pipe.model.config.latent_dim:
                raise ValueError(
                    f"latents must have shape (N, {pipe.model.config.latent_dim}), got {tuple(latents.shape)}"
                )
        kwargs["latents"] = latents
    elif latents is not None or texts:
        raise ValueError("mode joint generates both modalities; it takes no latents or texts")
    out = family.generate(pipe.built, config, **kwargs)
    decoded = [t.strip() for t in pipe.tokenizer.batch_decode(out.tokens.tolist(), skip_special_tokens=True)]
    return LatentGeneration(
        texts=decoded,
        ids=out.tokens,
        latents=None if out.latents is None else out.latents.numpy(),
        nfe=out.nfe,
        elapsed_s=out.elapsed_s,
        mode=out.mode,
        protocol=out.protocol or {},
    )
