"""The `ar` family: a causal transformer trained on exact next-token NLL, sampled with a KV cache.

Row convention (shared with every family so NLLs are comparable): a dataset row x of length L is scored
token by token, every non-pad token exactly once. The network reads [BOS, x_0 .. x_{L-2}] and position i
predicts x_i, so x_0 is predicted from the start symbol alone and no token is scored twice or skipped.
Targets that are PAD are not scored: the mask is taken on the *target*, which fixes the original code's
off-by-one that counted the first PAD after EOS (spec §11 bug 18). The per-sequence token count is then the
number of non-pad tokens, the same count the diffusion ELBOs divide by.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from contextlib import nullcontext
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from mmdlm.config.ar import ARSpec
from mmdlm.config.sample import SampleConfig
from mmdlm.data.vocab import VocabInfo
from mmdlm.diffusion.fused import text_log_prob
from mmdlm.families import Built, LossOutput
from mmdlm.models.ar import ARTransformer
from mmdlm.sampling.ancestral import SampleOutput
from mmdlm.sampling.generate import maybe_compile


def shift_right(ids: Tensor, bos_id: int) -> Tensor:
    """[BOS, x_0 .. x_{L-2}]: the network input whose position i predicts x_i. (B, L) -> (B, L)."""
    return torch.cat([torch.full_like(ids[:, :1], bos_id), ids[:, :-1]], dim=1)


@dataclass
class ARObjective:
    """Exact next-token cross-entropy over non-pad targets (token mean) and the exact per-sequence NLL."""

    vocab: VocabInfo

    def _token_nll(self, model: nn.Module, ids: Tensor) -> tuple[Tensor, Tensor]:
        """Per-token NLL in float32 (B, L), zero at pad targets, and the target mask (B, L)."""
        logits = model(shift_right(ids, self.vocab.bos_id))  # (B, L, V)
        mask = ids != self.vocab.pad_id
        # softmax over every column, as cross-entropy; fused and only at scored (non-pad) targets
        every = torch.ones(logits.shape[-1], dtype=torch.bool, device=logits.device)
        log_p = text_log_prob(logits.reshape(-1, logits.shape[-1]), ids.reshape(-1), every, mask.reshape(-1))
        return -log_p.view(ids.shape), mask

    def __call__(
        self,
        model: nn.Module,
        batch: Mapping[str, Tensor],
        generator: torch.Generator | None = None,  # noqa: ARG002 - deterministic objective
    ) -> LossOutput:
        nll, mask = self._token_nll(model, batch["input_ids"])
        num_tokens = mask.sum()
        loss = nll.sum() / num_tokens.clamp_min(1)
        return LossOutput(loss=loss, metrics={"nll": loss.detach()}, num_tokens=num_tokens)

    @torch.no_grad()
    def nll_bound(
        self,
        model: nn.Module,
        batch: Mapping[str, Tensor],
        num_samples: int = 1,  # noqa: ARG002 - exact, nothing to average
        generator: torch.Generator | None = None,  # noqa: ARG002
    ) -> tuple[Tensor, Tensor]:
        """Exact per-sequence NLL in nats (float64, (B,)) and non-pad token counts ((B,))."""
        nll, mask = self._token_nll(model, batch["input_ids"])
        return nll.double().sum(dim=1), mask.sum(dim=1)


def filter_probs(probs: Tensor, top_p: float | None, min_p: float | None) -> Tensor:
    """Nucleus and min-p truncation of (..., V) probabilities, renormalised.

    top_p keeps the smallest set of most likely tokens whose mass reaches top_p (the most likely token is
    always kept); min_p keeps tokens with probability >= min_p * max probability (Nguyen et al., 2024).
    """
    if (min_p is None or min_p <= 0) and (top_p is None or top_p >= 1):
        return probs  # nothing to truncate: softmax output is already normalised
    if min_p is not None and min_p > 0:
        threshold = min_p * probs.amax(dim=-1, keepdim=True)
        probs = probs.masked_fill(probs < threshold, 0.0)
    if top_p is not None and top_p < 1:
        sorted_p, order = probs.sort(dim=-1, descending=True)
        mass_before = sorted_p.cumsum(dim=-1) - sorted_p  # mass of strictly more likely tokens
        sorted_p = sorted_p.masked_fill(mass_before >= top_p * sorted_p.sum(-1, keepdim=True), 0.0)
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_p)
    return probs / probs.sum(dim=-1, keepdim=True)


@torch.no_grad()
def sample_ar(
    model: ARTransformer,
    vocab: VocabInfo,
    *,
    num_samples: int,
    seq_len: int,
    prefix: Tensor | None = None,
    temperature: float = 1.0,
    top_p: float | None = None,
    min_p: float | None = None,
    float64: bool = True,
    use_cache: bool = True,
    autocast_dtype: torch.dtype | None = None,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, int]:
    """Ancestral sampling of rows (num_samples, seq_len), continuing `prefix` (P,) or (num_samples, P).

    The network starts from BOS (the same start symbol as training) and the returned rows exclude it, so a
    sample has the layout of a dataset row. PAD and MASK are never sampled. `float64` draws the categorical
    in float64 (the evaluation default: bf16/fp32 cumulative sums bias rare tokens). With `use_cache` each
    step feeds one token through the KV cache; without it every step re-runs the whole prefix (a reference
    path for tests). Temperature 0 is greedy decoding. Returns the ids and the number of network calls.
    """
    if not 1 <= seq_len <= model.config.max_seq_len:
        raise ValueError(f"seq_len must be in [1, {model.config.max_seq_len}], got {seq_len}")
    device = next(model.parameters()).device
    start = torch.full((num_samples, 1), vocab.bos_id, dtype=torch.long, device=device)
    if prefix is not None:
        prefix = prefix.to(device=device, dtype=torch.long)
        prefix = prefix.expand(num_samples, -1) if prefix.ndim == 1 else prefix
        if prefix.shape[0] != num_samples or prefix.shape[1] > seq_len:
            raise ValueError(
                f"prefix of shape {tuple(prefix.shape)} does not fit {num_samples} rows of {seq_len}"
            )
        start = torch.cat([start, prefix], dim=1)
    banned = torch.tensor([vocab.pad_id, vocab.mask_id], device=device)
    amp = torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype else nullcontext()
    dtype = torch.float64 if float64 else torch.float32
    was_training = model.training
    model.eval()
    cache = model.new_cache() if use_cache else None
    # the whole output row is allocated once and filled column by column (no torch.cat per token)
    seq = torch.empty(num_samples, seq_len + 1, dtype=torch.long, device=device)
    seq[:, : start.shape[1]] = start
    pos, calls = start.shape[1], 0
    noise: Tensor | None = None  # Exp(1) draws, reused every step
    while pos < seq_len + 1:
        feed = seq[:, pos - 1 : pos] if use_cache and calls else seq[:, :pos]
        with amp:
            logits = model(feed, cache=cache, last_only=True)[:, -1]  # (n, V)
        calls += 1
        logits.index_fill_(-1, banned, -torch.inf)
        if temperature == 0:
            nxt = logits.argmax(dim=-1, keepdim=True)
        else:
            if temperature != 1:  # divided in the sampling precision, as before
                logits = logits.to(dtype) / temperature
            probs = filter_probs(torch.softmax(logits, dim=-1, dtype=dtype), top_p, min_p)
            # torch.multinomial(probs, 1) draws argmax(probs / E) with E ~ Exp(1); done here with a reused
            # buffer and without multinomial's input checks (the same draws for the same generator)
            if noise is None:
                noise = torch.empty_like(probs)
            noise.exponential_(generator=generator)
            nxt = torch.div(probs, noise, out=noise).argmax(dim=-1, keepdim=True)
        seq[:, pos : pos + 1] = nxt
        pos += 1
    model.train(was_training)
    return seq[:, 1:], calls


class ARFamily:
    name = "ar"

    def build(self, spec: ARSpec, vocab: VocabInfo) -> Built:
        model = ARTransformer(spec.model, vocab.vocab_size)
        return Built(model=model, objective=ARObjective(vocab), extras={"vocab": vocab, "spec": spec})

    def generate(
        self,
        built: Built,
        config: SampleConfig,
        *,
        prompt_ids: Tensor | None = None,
        infill: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> SampleOutput:
        """Draw `config.num_samples` rows with the KV cache, continuing `prompt_ids` ((P,) or (N, P)).

        `config.steps`, `cached` and self-correction are diffusion options and do not apply: a row of L
        tokens always takes L - P network calls (`nfe`). Wrap the call in `torch.autocast` for bf16.
        """
        if infill is not None:
            raise ValueError(
                "the ar family cannot infill (it only continues a prefix); pass prompt_ids instead"
            )
        model = built.model
        vocab: VocabInfo = built.extras["vocab"]
        seq_len = config.seq_len or model.config.max_seq_len
        device = next(model.parameters()).device
        if generator is None:
            generator = torch.Generator(device).manual_seed(config.seed)
        batch = config.batch_size or config.num_samples
        rows, calls = [], 0
        start = time.perf_counter()
        for first in range(0, config.num_samples, batch):
            n = min(batch, config.num_samples - first)
            part = prompt_ids if prompt_ids is None or prompt_ids.ndim == 1 else prompt_ids[first : first + n]
            ids, c = sample_ar(
                maybe_compile(model, config.compile),
                vocab,
                num_samples=n,
                seq_len=seq_len,
                prefix=part,
                temperature=config.temperature,
                top_p=config.top_p,
                min_p=config.min_p,
                float64=config.float64,
                generator=generator,
            )
            rows.append(ids.cpu())
            calls += c
        return SampleOutput(tokens=torch.cat(rows), nfe=calls, elapsed_s=time.perf_counter() - start, steps=0)


FAMILIES = {"ar": ARFamily()}
