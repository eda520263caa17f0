"""Samplers of the latent families (spec §3.4 [rec], fixing B18): text from a latent (`l2t`), a latent
from text (`t2l`), and both at once (`joint`), with classifier-free guidance.

    l2t    x <- [MASK]^len (PAD beyond each length); for t_k > t_{k+1} on the MDLM grid:
           logits = guided(text_logits(x, t_k, z)); x <- reveal(logits, x)    (ancestral or confidence top-k)
           every masked position is revealed by the last step; [MASK]/[PAD] are never emitted
    t2l    z <- N(0, I); for k in the trailing DDIM grid: pred = guided(latent_pred(text, z, k));
           z <- DDIM(eta) or DDPM step; returns the clean estimate x0_hat (not eps_hat, B18)
    joint  both chains in lock-step, one network call per step

Guidance: out = uncond + w (cond - uncond), on log-probabilities for text and on the network output for
the latent; the unconditional branch hides the condition exactly as condition dropout did in training,
so it is a branch the model learnt (the original used an unseen empty text, B18). The guided and
unguided halves share one batched call.

Latents enter and leave in the model's normalised space; `mmdlm.families.latent` converts to and from
encoder space with the model's `latent_norm`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from mmdlm.diffusion.base import SamplingOptions, denoiser_probs, sample_categorical
from mmdlm.diffusion.gaussian import GaussianDiffusion
from mmdlm.diffusion.masked import MaskedProcess
from mmdlm.sampling.ancestral import SampleOutput, time_grid

TextFn = Callable[[Tensor, Tensor, Tensor, Tensor | None, Tensor | None], Tensor]
"""(zt (B, L), t (B,), mask (B, L), latent (B, D) | None, drop_latent (B,) | None) -> logits (B, L, V_r)."""
LatentFn = Callable[[Tensor, Tensor, Tensor, Tensor, Tensor | None], Tensor]
"""(tokens (B, L), mask (B, L), z (B, 1, D), t_lat (B,), drop_text (B,) | None) -> prediction (B, 1, D)."""
JointFn = Callable[[Tensor, Tensor, Tensor, Tensor, Tensor], tuple[Tensor, Tensor]]
"""(zt (B, L), t_text (B,), mask (B, L), z (B, 1, D), t_lat (B,)) -> (logits, prediction)."""


@dataclass(frozen=True)
class LatentSampleOutput(SampleOutput):
    """`SampleOutput` plus the latent side: `latents` (N, D) float32 in encoder space (t2l / joint: the
    generated x0_hat; l2t: the conditioning latents, or None when unconditional) and the `mode`."""

    latents: Tensor | None = None
    mode: str = "l2t"
    protocol: dict | None = None


def length_mask(lengths: Tensor, seq_len: int) -> Tensor:
    """(N,) lengths -> (N, L) bool, True on the first `length` positions."""
    if bool((lengths < 1).any()) or bool((lengths > seq_len).any()):
        raise ValueError(f"lengths must lie in [1, seq_len={seq_len}]")
    return torch.arange(seq_len, device=lengths.device)[None, :] < lengths[:, None]


def _guided_text(
    fn: TextFn, zt: Tensor, t: Tensor, mask: Tensor, latent: Tensor | None, scale: float
) -> Tensor:
    B = zt.shape[0]
    if latent is None:  # unconditional generation: the null condition only
        return fn(zt, t, mask, None, torch.ones(B, dtype=torch.bool, device=zt.device))
    if scale == 1.0:
        return fn(zt, t, mask, latent, None)
    drop = torch.cat([torch.zeros(B, dtype=torch.bool), torch.ones(B, dtype=torch.bool)]).to(zt.device)
    both = fn(
        torch.cat([zt, zt]), torch.cat([t, t]), torch.cat([mask, mask]), torch.cat([latent, latent]), drop
    )
    cond, uncond = torch.log_softmax(both.float(), dim=-1).chunk(2)
    return uncond + scale * (cond - uncond)


def _reveal_topk(
    process: MaskedProcess,
    logits: Tensor,
    zt: Tensor,
    mask: Tensor,
    step: int,
    steps: int,
    options: SamplingOptions,
    generator: torch.Generator | None,
) -> Tensor:
    """Confidence top-k (MaskGIT): after step i, ceil(n (1 - cos(pi/2 (i+1)/K))) of each row's n real
    positions are revealed; the cosine reaches 1 at the last step, so every position is revealed (the
    original's floor left one token masked, spec §3.1)."""
    is_mask = (zt == process.layout.mask_id) & mask
    if not bool(is_mask.any()):
        return zt
    probs = denoiser_probs(logits, process.text_mask(logits.device), options)  # (B, L, V_r)
    flat = probs.reshape(-1, probs.shape[-1])
    draw = sample_categorical(flat, generator).view(zt.shape)
    conf = probs.gather(-1, draw[..., None]).squeeze(-1).float()
    conf = conf.masked_fill(~is_mask, -1.0)
    n = mask.sum(dim=1)
    frac = 1.0 if step == steps - 1 else 1.0 - math.cos(math.pi / 2 * (step + 1) / steps)
    target = torch.ceil(n.double() * frac).long().clamp(max=n)
    revealed = n - is_mask.sum(dim=1)
    k = (target - revealed).clamp(min=0)
    rank = conf.argsort(dim=1, descending=True).argsort(dim=1)  # 0 = most confident
    choose = is_mask & (rank < k[:, None])
    return torch.where(choose, draw, zt)


@torch.no_grad()
def sample_l2t(
    fn: TextFn,
    process: MaskedProcess,
    lengths: Tensor,
    seq_len: int,
    latent: Tensor | None,
    *,
    steps: int,
    sampler: str = "ancestral",
    temperature: float = 1.0,
    guidance_scale: float = 1.0,
    float64: bool = True,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, int]:
    """Text ids (N, L) (PAD beyond each length) and the number of network calls."""
    if sampler not in ("ancestral", "topk"):
        raise ValueError(f"text_sampler must be 'ancestral' or 'topk', got {sampler!r}")
    device = lengths.device
    mask = length_mask(lengths, seq_len)
    layout = process.layout
    pad = layout.pad_id if layout.pad_id is not None else layout.mask_id
    zt = torch.where(
        mask,
        torch.full_like(mask, layout.mask_id, dtype=torch.long),
        torch.full_like(mask, pad, dtype=torch.long),
    )
    options = SamplingOptions(temperature=temperature, float64=float64)
    grid = time_grid(steps, process.t_eps)
    nfe = 0
    for i in range(steps):
        t = torch.full((zt.shape[0],), grid[i], device=device)
        logits = _guided_text(fn, zt, t, mask, latent, guidance_scale)
        nfe += 1
        if sampler == "ancestral":
            zt = process.reverse_step(logits, zt, grid[i], grid[i + 1], generator, options)
        else:
            zt = _reveal_topk(process, logits, zt, mask, i, steps, options, generator)
    return zt, nfe


def _guided_latent(fn: LatentFn, tokens: Tensor, mask: Tensor, z: Tensor, t: Tensor, scale: float) -> Tensor:
    if scale == 1.0:
        return fn(tokens, mask, z, t, None)
    B = z.shape[0]
    drop = torch.cat([torch.zeros(B, dtype=torch.bool), torch.ones(B, dtype=torch.bool)]).to(z.device)
    both = fn(
        torch.cat([tokens, tokens]), torch.cat([mask, mask]), torch.cat([z, z]), torch.cat([t, t]), drop
    )
    cond, uncond = both.float().chunk(2)
    return uncond + scale * (cond - uncond)


def _latent_step(
    gaussian: GaussianDiffusion,
    pred: Tensor,
    z: Tensor,
    k: int,
    k_prev: int,
    sampler: str,
    eta: float,
    clip_x0: float | None,
    generator: torch.Generator | None,
):  # noqa: ANN202
    if sampler == "ddim":
        return gaussian.ddim_step(pred, z, k, k_prev, eta=eta, generator=generator, clip_x0=clip_x0)
    if sampler == "ddpm":
        return gaussian.ddpm_step(pred, z, k, k_prev, generator=generator, clip_x0=clip_x0)
    raise ValueError(f"latent_sampler must be 'ddim' or 'ddpm', got {sampler!r}")


@torch.no_grad()
def sample_t2l(
    fn: LatentFn,
    gaussian: GaussianDiffusion,
    tokens: Tensor,
    mask: Tensor,
    shape: tuple[int, ...],
    *,
    steps: int,
    sampler: str = "ddim",
    eta: float = 0.0,
    guidance_scale: float = 1.0,
    clip_x0: float | None = None,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, int]:
    """The clean estimate x0_hat (`shape`, e.g. (N, 1, D) latents in normalised space) after `steps`
    reverse steps; `tokens` / `mask` (N, L) are the conditioning text."""
    N = tokens.shape[0]
    z = torch.randn(shape, generator=generator, device=generator.device if generator else "cpu").to(
        tokens.device
    )
    grid = gaussian.timesteps(steps)
    x0 = z
    for i, k in enumerate(grid):
        k_prev = grid[i + 1] if i + 1 < len(grid) else -1
        t = gaussian.time(torch.full((N,), k, device=tokens.device))
        pred = _guided_latent(fn, tokens, mask, z, t, guidance_scale)
        out = _latent_step(gaussian, pred.float(), z, k, k_prev, sampler, eta, clip_x0, generator)
        z, x0 = out.prev_sample, out.pred_x0
    return x0, len(grid)


@torch.no_grad()
def sample_joint(
    fn: JointFn,
    process: MaskedProcess,
    gaussian: GaussianDiffusion,
    lengths: Tensor,
    seq_len: int,
    shape: tuple[int, ...],
    *,
    steps: int,
    latent_sampler: str = "ddim",
    eta: float = 0.0,
    temperature: float = 1.0,
    clip_x0: float | None = None,
    float64: bool = True,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor, int]:
    """Text (N, L) and latent x0_hat (N, D) generated together: one network call per step; the text
    time follows the MDLM grid and the latent index the trailing DDIM grid of the same length."""
    device = lengths.device
    N = lengths.shape[0]
    mask = length_mask(lengths, seq_len)
    if shape[0] != N:
        raise ValueError(f"shape {shape} must start with the number of samples {N}")
    layout = process.layout
    pad = layout.pad_id if layout.pad_id is not None else layout.mask_id
    zt = torch.where(
        mask,
        torch.full_like(mask, layout.mask_id, dtype=torch.long),
        torch.full_like(mask, pad, dtype=torch.long),
    )
    z = torch.randn(shape, generator=generator, device=generator.device if generator else "cpu").to(device)
    options = SamplingOptions(temperature=temperature, float64=float64)
    text_grid = time_grid(steps, process.t_eps)
    lat_grid = gaussian.timesteps(steps)
    x0 = z
    for i in range(steps):
        t = torch.full((N,), text_grid[i], device=device)
        k, k_prev = lat_grid[i], (lat_grid[i + 1] if i + 1 < steps else -1)
        t_lat = gaussian.time(torch.full((N,), k, device=device))
        logits, pred = fn(zt, t, mask, z, t_lat)
        zt = process.reverse_step(logits, zt, text_grid[i], text_grid[i + 1], generator, options)
        out = _latent_step(gaussian, pred.float(), z, k, k_prev, latent_sampler, eta, clip_x0, generator)
        z, x0 = out.prev_sample, out.pred_x0
    return zt, x0, steps
