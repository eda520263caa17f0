"""Pieces every discrete noise process shares: the model vocabulary layout, time sampling, categorical
sampling, the denoiser's output distribution (temperature / top-p / min-p), the per-token loss record and the
process interface.

A process takes logits and tensors, never a network (STYLE habit 1). Shapes: B batch, L length, V_r model
vocabulary rows (spec §0).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import Tensor


def padded_vocab_size(vocab_size: int, num_clusters: int = 0, multiple: int = 128) -> int:
    """V_r = V + C rounded up to a multiple of `multiple` (spec §1.1): keeps matmul shapes friendly."""
    n = vocab_size + num_clusters
    return n + (-n) % multiple


class VocabLike(Protocol):
    """What a process needs from `mmdlm.data.VocabInfo`."""

    vocab_size: int
    pad_id: int | None
    mask_id: int
    bos_id: int | None
    eos_id: int | None


@dataclass(frozen=True)
class VocabLayout:
    """Model vocabulary: tokenizer ids [0, V), then HDLM cluster ids [V, V + C), then padding up to V_r.

    The model may only ever emit `text` ids: [0, V) without [MASK] and without [PAD] (unless [PAD] doubles as
    BOS/EOS). Training normalises the denoiser over the same set, so the likelihood bound is the bound of the
    distribution the samplers draw from.
    """

    vocab_size: int
    mask_id: int
    pad_id: int | None = None
    bos_id: int | None = None
    eos_id: int | None = None
    num_clusters: int = 0
    multiple: int = 128

    def __post_init__(self) -> None:
        if not 0 <= self.mask_id < self.vocab_size:
            raise ValueError(f"mask_id {self.mask_id} is outside the vocabulary [0, {self.vocab_size})")
        if self.pad_id is not None and not 0 <= self.pad_id < self.vocab_size:
            raise ValueError(f"pad_id {self.pad_id} is outside the vocabulary [0, {self.vocab_size})")
        if self.num_clusters < 0:
            raise ValueError(f"num_clusters must be >= 0, got {self.num_clusters}")

    @classmethod
    def from_vocab(cls, vocab: VocabLike, num_clusters: int = 0) -> VocabLayout:
        if getattr(vocab, "mask_id", None) is None:
            raise ValueError("the vocabulary has no [MASK] token; discrete diffusion needs one (mask_id)")
        return cls(
            vocab_size=int(vocab.vocab_size),
            mask_id=int(vocab.mask_id),
            pad_id=None if vocab.pad_id is None else int(vocab.pad_id),
            bos_id=None if getattr(vocab, "bos_id", None) is None else int(vocab.bos_id),  # type: ignore[arg-type]
            eos_id=None if getattr(vocab, "eos_id", None) is None else int(vocab.eos_id),  # type: ignore[arg-type]
            num_clusters=num_clusters,
        )

    @property
    def rows(self) -> int:
        """V_r, the embedding rows and logit columns of the network."""
        return padded_vocab_size(self.vocab_size, self.num_clusters, self.multiple)

    @property
    def cluster_start(self) -> int:
        return self.vocab_size

    def text_mask(self, device: torch.device | str | None = None) -> Tensor:
        """(V_r,) bool, True for ids the model may emit as text."""
        mask = torch.zeros(self.rows, dtype=torch.bool, device=device)
        mask[: self.vocab_size] = True
        mask[self.mask_id] = False
        if self.pad_id is not None and self.pad_id not in (self.bos_id, self.eos_id):
            mask[self.pad_id] = False
        return mask


@dataclass(frozen=True)
class SamplingOptions:
    """How the denoiser's distribution is turned into draws.

    temperature: 0 means greedy (argmax); top_p: nucleus mass kept (1 = off); min_p: drop tokens whose
    probability is below min_p times the top token's (0 = off); float64: compute the step's probabilities and
    draws in float64, so that rare tokens keep their exact mass over thousands of steps.
    """

    temperature: float = 1.0
    top_p: float = 1.0
    min_p: float = 0.0
    float64: bool = True

    @property
    def dtype(self) -> torch.dtype:
        return torch.float64 if self.float64 else torch.float32


def uniform(
    shape: tuple[int, ...],
    generator: torch.Generator | None,
    device: torch.device | str,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """U[0,1) drawn on the generator's device (so a CPU generator works for GPU tensors), then moved."""
    gen_device = generator.device if generator is not None else device
    return torch.rand(shape, generator=generator, device=gen_device, dtype=dtype).to(device)


def squeeze_times(raw: Tensor, t_eps: float) -> Tensor:
    """Map raw times in [0, 1) to [t_eps, 1 - t_eps]: t = (1 - 2 t_eps) raw + t_eps."""
    return (1.0 - 2.0 * t_eps) * raw + t_eps


def low_discrepancy_times(u: Tensor, batch_size: int) -> Tensor:
    """Systematic sampling (spec §2.1): t_i = (i / B + u) mod 1 for one shared offset u; (B,) float64."""
    i = torch.arange(batch_size, device=u.device, dtype=torch.float64)
    return (i / batch_size + u.double()) % 1.0


def sample_times(
    batch_size: int,
    t_eps: float,
    low_discrepancy: bool,
    generator: torch.Generator | None,
    device: torch.device | str,
) -> Tensor:
    """Training times (B,) float32 in [t_eps, 1 - t_eps] (spec §2.1).

    Low-discrepancy: one u ~ U[0,1) per call and t_i = (i/B + u) mod 1, so the batch covers [0,1) evenly.
    """
    if low_discrepancy:
        raw = low_discrepancy_times(uniform((1,), generator, device, torch.float64), batch_size)
    else:
        raw = uniform((batch_size,), generator, device, torch.float64)
    return squeeze_times(raw, t_eps).float()


def sample_categorical(probs: Tensor, generator: torch.Generator | None) -> Tensor:
    """Draw one index per row of `probs` (..., K) by inversion, in probs' dtype.

    Unlike the original sampler (spec §2.2, bug 23) the weights are normalised by their own sum, so an
    unnormalised row is never biased towards its last entry, and a zero-probability entry is never drawn.
    Rows must have positive total mass.
    """
    cdf = probs.cumsum(dim=-1)
    total = cdf[..., -1:]
    if bool((total <= 0).any()) or not bool(torch.isfinite(total).all()):
        raise ValueError("sample_categorical: every row needs a positive, finite total probability")
    u = uniform(tuple(probs.shape[:-1]) + (1,), generator, probs.device, probs.dtype) * total
    idx = torch.searchsorted(cdf, u, right=True).clamp(max=probs.shape[-1] - 1)
    # u * total < total, so only rounding can land past the last entry with mass: step back to it
    stray = probs.gather(-1, idx) <= 0
    if bool(stray.any()):
        last_positive = (probs > 0).long().cumsum(-1).argmax(dim=-1, keepdim=True)
        idx = torch.where(stray, last_positive, idx)
    return idx.squeeze(-1)


def denoiser_probs(logits: Tensor, allowed: Tensor, options: SamplingOptions | None = None) -> Tensor:
    """x̂: the denoiser's distribution over allowed ids, after temperature, top-p and min-p.

    The softmax runs in float32 (its relative precision is enough for any probability); the result is cast to
    options.dtype before it is renormalised, so the sampling arithmetic downstream (posterior, cumulative sums)
    runs in float64 when asked, where float32 would lose tokens below ~1e-7 of the mass.

    Args:
        logits: (..., V_r) network output.
        allowed: (V_r,) bool, ids that may be emitted.
    Returns:
        (..., V_r) probabilities in options.dtype, zero outside `allowed`.
    """
    options = options or SamplingOptions()
    x = logits.float().masked_fill(~allowed, float("-inf"))
    if options.temperature == 0:
        onehot = torch.zeros(x.shape, dtype=options.dtype, device=x.device)
        return onehot.scatter_(-1, x.argmax(dim=-1, keepdim=True), 1.0)
    probs = torch.softmax(x if options.temperature == 1 else x / options.temperature, dim=-1)
    if options.min_p > 0:
        top = probs.amax(dim=-1, keepdim=True)
        probs = probs.masked_fill(probs < options.min_p * top, 0.0)
    if options.top_p < 1:
        sorted_p, order = probs.sort(dim=-1, descending=True)
        before = sorted_p.cumsum(dim=-1) - sorted_p  # mass strictly above each entry
        keep_sorted = before < options.top_p  # always keeps the top entry
        keep = torch.zeros_like(keep_sorted).scatter_(-1, order, keep_sorted)
        probs = probs * keep
    probs = probs.to(options.dtype)
    return probs / probs.sum(dim=-1, keepdim=True)


@dataclass
class TokenLoss:
    """Per-token results of a process's loss.

    loss:    (B, L) training loss (with the config's weighting).
    elbo:    (B, L) exact ELBO integrand in nats; its expectation over t and z_t, summed over a sequence, is an
             upper bound on the sequence's NLL.
    metrics: extra (B, L) per-token terms, averaged over real tokens for logging.
    """

    loss: Tensor
    elbo: Tensor
    metrics: dict[str, Tensor] = field(default_factory=dict)


class DiscreteProcess(ABC):
    """A forward noise process q_t(z | x) on token ids with its ELBO and its reverse (ancestral) step."""

    name: str
    #: the loss needs the network's cluster head (`model(..., with_cluster_logits=True)`)
    uses_cluster_logits: bool = False

    def __init__(self, layout: VocabLayout, t_eps: float, low_discrepancy: bool) -> None:
        self.layout = layout
        self.t_eps = t_eps
        self.low_discrepancy = low_discrepancy
        self._device_cache: dict[tuple[str, torch.device], Tensor] = {}

    def _on(self, name: str, device: torch.device) -> Tensor:
        """A constant tensor of this process on `device`, built once per device."""
        key = (name, torch.device(device))
        if key not in self._device_cache:
            self._device_cache[key] = self._constant(name).to(device)
        return self._device_cache[key]

    def _constant(self, name: str) -> Tensor:
        if name == "text":
            return self.layout.text_mask()
        raise KeyError(name)

    def text_mask(self, device: torch.device) -> Tensor:
        """(V_r,) bool: ids the denoiser may put mass on."""
        return self._on("text", device)

    def sample_times(
        self, batch_size: int, generator: torch.Generator | None, device: torch.device
    ) -> Tensor:
        return sample_times(batch_size, self.t_eps, self.low_discrepancy, generator, device)

    def prior(self, shape: tuple[int, ...], device: torch.device | str) -> Tensor:
        """Sample of q_1: every position is [MASK] for all three processes."""
        return torch.full(shape, self.layout.mask_id, dtype=torch.long, device=device)

    @abstractmethod
    def marginals(self, x0: Tensor, t: Tensor) -> Tensor:
        """q_t(z | x0) as (B, L, V_r) probabilities. x0: (B, L) int64; t: (B,)."""

    @abstractmethod
    def sample_zt(self, x0: Tensor, t: Tensor, generator: torch.Generator | None) -> Tensor:
        """Draw z_t ~ q_t(. | x0): (B, L) int64."""

    @abstractmethod
    def loss(
        self, logits: Tensor, x0: Tensor, zt: Tensor, t: Tensor, cluster_logits: Tensor | None = None
    ) -> TokenLoss:
        """Per-token loss and ELBO from the network output at (zt, t). logits: (B, L, V_r)."""

    @abstractmethod
    def reverse_step(
        self,
        logits: Tensor,
        zt: Tensor,
        t: float,
        s: float,
        generator: torch.Generator | None,
        options: SamplingOptions | None = None,
    ) -> Tensor:
        """One ancestral step z_t -> z_s (s < t) under the denoiser; s = 0 returns clean text ids only."""

    def bound_note(self) -> str | None:
        """Why `nll_bound` (integrated over [t_eps, 1 - t_eps]) may fall below the true bound, or None when the
        omitted ends are O(t_eps) and negligible. Evaluation copies it into the protocol's notes."""
        return None

    def describe(self) -> dict[str, Any]:
        """Protocol fields recorded next to every metric."""
        return {"process": self.name, "t_eps": self.t_eps, "low_discrepancy": self.low_discrepancy}
