"""Objectives of the latent families: masked diffusion on text + Gaussian diffusion on the latent
(MMDiT, spec §2 with its [rec] corrections), and masked diffusion on text given a latent (the DiT
baselines, spec §5). Both implement the `Objective` seam, so the one training loop trains them unchanged.

Modes, per sample (spec §2.3 [rec]; fixes B1-B4, B9):

    mode   text input / t_text             latent input / t_lat                 losses
    joint  z_t ~ q(.|x), t ~ U[eps, 1-eps]  z_k ~ q(.|z0), k ~ U{0..T-1}          text ELBO + latent
    l2t    z_t ~ q(.|x), t ~ U[eps, 1-eps]  clean z0, t_lat = 0                   text ELBO
    t2l    clean x, t_text = 0              z_k ~ q(.|z0), k ~ U{0..T-1}          latent

Each mode draws a random time for the modality it generates (the original pinned t = 1, B2/B3). `mixture`
assigns modes to the samples of a micro-batch in the configured proportions, in an order drawn from a
generator seeded by (seed, step, micro-batch), so every DDP rank trains the same mode pattern (B9) and
every head gets a gradient every step. Padding is neither noised nor scored nor attended to. Condition
dropout hides the clean condition (latent in l2t, text in t2l) from the generated stream, which is the
unconditional branch classifier-free guidance uses at sampling time. Nothing is frozen unless
`freeze_groups` says so (B4).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from torch import Tensor, nn

from mmdlm.config.latent import ImageObjectiveConfig, LatentConditionedObjective, LatentObjectiveConfig
from mmdlm.diffusion.base import uniform
from mmdlm.diffusion.gaussian import GaussianDiffusion
from mmdlm.diffusion.masked import MaskedProcess
from mmdlm.families import LossOutput

MODES = ("joint", "t2l", "l2t")
JOINT, T2L, L2T = 0, 1, 2


def mode_counts(batch_size: int, probs: Mapping[str, float]) -> list[int]:
    """Samples per mode (joint, t2l, l2t) by largest remainder: exact proportions, summing to B."""
    raw = np.array([probs[m] * batch_size for m in MODES])
    counts = np.floor(raw).astype(int)
    for i in np.argsort(-(raw - counts), kind="stable")[: batch_size - counts.sum()]:
        counts[i] += 1
    return counts.tolist()


def assign_modes(batch_size: int, probs: Mapping[str, float], seed: int, step: int, micro: int) -> Tensor:
    """(B,) int64 mode ids, identical on every rank for the same (seed, step, micro)."""
    ids = torch.repeat_interleave(torch.arange(3), torch.tensor(mode_counts(batch_size, probs)))
    seq = np.random.SeedSequence([seed, step, micro, 0x1A7E])
    g = torch.Generator().manual_seed(int(seq.generate_state(1, dtype=np.uint64)[0] >> 1))
    return ids[torch.randperm(batch_size, generator=g)]


def unpack_text(batch: Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
    if "input_ids" not in batch:
        raise KeyError("batch must hold 'input_ids' (B, L) int64")
    x0 = batch["input_ids"].long()
    mask = batch.get("attention_mask")
    mask = torch.ones_like(x0, dtype=torch.bool) if mask is None else mask.bool()
    return x0, mask


def unpack_latent(batch: Mapping[str, Tensor]) -> Tensor:
    if "latent" not in batch:
        raise KeyError("batch must hold 'latent' (B, D) float32: train on a latent dataset (mmdlm encode)")
    return batch["latent"].float()


def _keep_padding(zt: Tensor, x0: Tensor, mask: Tensor) -> Tensor:
    """Padding is never noised: PAD stays PAD (it is also hidden from attention)."""
    return torch.where(mask, zt, x0)


def _text_terms(
    process: MaskedProcess, logits: Tensor, x0: Tensor, zt: Tensor, t: Tensor, scored: Tensor, weighting: str
) -> tuple[Tensor, Tensor, Tensor]:
    """(loss, elbo sum, scored-token count) over `scored` (B, L) positions; loss per the weighting."""
    terms = process.loss(logits, x0, zt, t)
    count = scored.sum()
    elbo_sum = torch.where(scored, terms.elbo.float(), 0.0).sum()
    if weighting == "mdlm_elbo":
        loss = elbo_sum / count.clamp(min=1)
    else:  # tokenmean_masked: mean CE over masked scored positions (the as-built reduction)
        masked = scored & (zt == process.layout.mask_id)
        loss = torch.where(masked, terms.metrics["rec_loss"].float(), 0.0).sum() / masked.sum().clamp(min=1)
    return loss, elbo_sum, count


class MMDiTObjective:
    """`Objective` of family `mmdit`. Batches: input_ids (B, L), attention_mask (B, L), latent (B, D)."""

    def __init__(self, text: MaskedProcess, latent: GaussianDiffusion, config: LatentObjectiveConfig) -> None:
        self.text = text
        self.latent = latent
        self.config = config
        self.probs = {config.mode: 1.0} if config.mode != "mixture" else config.mode_probs.normalized()
        self.probs = {m: self.probs.get(m, 0.0) for m in MODES}
        self._step: int | None = None
        self._calls = 0

    def set_step(self, step: int) -> None:
        """Called by the loop before each optimizer step; keys the mode pattern to the global step so a
        resumed run continues the same sequence (without it, a call counter is used)."""
        self._step = step
        self._micro = 0

    def _modes(self, batch_size: int) -> Tensor:
        if self._step is None:
            step, micro = self._calls, 0
        else:
            step, micro = self._step, self._micro
            self._micro += 1
        self._calls += 1
        self._last_modes = assign_modes(batch_size, self.probs, self.config.seed, step, micro)
        return self._last_modes

    def __call__(
        self, model: nn.Module, batch: Mapping[str, Tensor], generator: torch.Generator | None = None
    ) -> LossOutput:
        x0, mask = unpack_text(batch)
        z0 = unpack_latent(batch)
        B, device = x0.shape[0], x0.device
        modes = self._modes(B).to(device)
        norm = _normalizer(model)
        z0n = norm.normalize(z0)[:, None, :]  # (B, 1, D)

        # 1. times: the generated modality of each sample gets a random time, the condition t = 0
        t_text = torch.where(modes == T2L, 0.0, self.text.sample_times(B, generator, device))
        t_lat = torch.where(modes == L2T, 0.0, self.latent.sample_times(B, device, generator, True))
        # 2. noising
        zt_text = _keep_padding(self.text.sample_zt(x0, t_text, generator), x0, mask)
        zt_lat, noise = self.latent.sample_zt(z0n, t_lat, generator)
        zt_lat = torch.where((modes == L2T)[:, None, None], z0n, zt_lat)
        # 3. condition dropout for classifier-free guidance
        drop = uniform((B,), generator, device) < self.config.cond_dropout
        drop_latent = drop & (modes == L2T)
        drop_text = drop & (modes == T2L)
        # 4. one network call
        logits, pred = model(
            zt_text, zt_lat, t_text, t_lat, attention_mask=mask, drop_text=drop_text, drop_latent=drop_latent
        )
        # 5. losses: text on joint/l2t samples (real tokens), latent on joint/t2l samples
        text_rows = modes != T2L
        text_loss, elbo_sum, text_count = _text_terms(
            self.text, logits, x0, zt_text, t_text, mask & text_rows[:, None], self.config.text.loss_weighting
        )
        lat_rows = modes != L2T
        per_sample = self.latent.loss(pred, z0n, noise, t_lat)
        lat_loss = torch.where(lat_rows, per_sample, 0.0).sum() / lat_rows.sum().clamp(min=1)
        loss = self.config.text_loss_weight * text_loss + self.config.latent_loss_weight * lat_loss
        # keep both heads in the graph on every step, so DDP needs no find_unused_parameters
        loss = loss + 0.0 * (logits.float().mean() + pred.float().mean())

        with torch.no_grad():
            x0_hat, _ = self.latent.to_x0_eps(pred.float(), zt_lat, t_lat)
            cos = torch.cosine_similarity(norm.denormalize(x0_hat[:, 0]), z0, dim=-1)
            correct = (logits.argmax(-1) == x0) & (zt_text == self.text.layout.mask_id) & mask
            masked = ((zt_text == self.text.layout.mask_id) & mask & text_rows[:, None]).sum().clamp(min=1)
            metrics = {
                "text_loss": text_loss.detach(),
                "latent_loss": lat_loss.detach(),
                "elbo": (elbo_sum / text_count.clamp(min=1)).detach(),
                "text_accuracy": ((correct & text_rows[:, None]).sum() / masked).detach(),
                "latent_cosine": (
                    torch.where(lat_rows, cos, 0.0).sum() / lat_rows.sum().clamp(min=1)
                ).detach(),
                "frac_joint": (modes == JOINT).float().mean(),
                "frac_t2l": (modes == T2L).float().mean(),
                "frac_l2t": (modes == L2T).float().mean(),
            }
        return LossOutput(loss=loss, metrics=metrics, num_tokens=mask.sum())

    @torch.no_grad()
    def nll_bound(
        self,
        model: nn.Module,
        batch: Mapping[str, Tensor],
        num_samples: int,
        generator: torch.Generator | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Per-sequence text NLL bound given the clean latent, -log p(x | z) <= ELBO (float64 (B,)), and
        real-token counts. K stratified text times per sequence, as the discrete objective does."""
        x0, mask = unpack_text(batch)
        z0n = _normalizer(model).normalize(unpack_latent(batch))[:, None, :]
        return _conditional_bound(
            self.text, x0, mask, num_samples, generator,
            lambda zt, t: model(zt, z0n, t, torch.zeros_like(t), attention_mask=mask)[0],
        )  # fmt: skip


class LatentConditionedTextObjective:
    """`Objective` of `latent-dit` / `cross-dit`: the MDLM ELBO of text given a clean latent."""

    def __init__(self, text: MaskedProcess, config: LatentConditionedObjective) -> None:
        self.text = text
        self.config = config

    def __call__(
        self, model: nn.Module, batch: Mapping[str, Tensor], generator: torch.Generator | None = None
    ) -> LossOutput:
        x0, mask = unpack_text(batch)
        B, device = x0.shape[0], x0.device
        latent = _normalizer(model).normalize(unpack_latent(batch))
        t = self.text.sample_times(B, generator, device)
        zt = _keep_padding(self.text.sample_zt(x0, t, generator), x0, mask)
        drop = uniform((B,), generator, device) < self.config.cond_dropout
        logits = model(zt, t, mask, latent=latent, drop_latent=drop)
        loss, elbo_sum, count = _text_terms(
            self.text, logits, x0, zt, t, mask, self.config.text.loss_weighting
        )
        metrics = {"elbo": (elbo_sum / count.clamp(min=1)).detach(), "t_mean": t.mean().detach()}
        return LossOutput(loss=loss, metrics=metrics, num_tokens=mask.sum())

    @torch.no_grad()
    def nll_bound(
        self,
        model: nn.Module,
        batch: Mapping[str, Tensor],
        num_samples: int,
        generator: torch.Generator | None = None,
    ) -> tuple[Tensor, Tensor]:
        x0, mask = unpack_text(batch)
        latent = _normalizer(model).normalize(unpack_latent(batch))
        return _conditional_bound(
            self.text, x0, mask, num_samples, generator, lambda zt, t: model(zt, t, mask, latent=latent)
        )


def _conditional_bound(
    process: MaskedProcess,
    x0: Tensor,
    mask: Tensor,
    num_samples: int,
    generator: torch.Generator | None,
    denoise,
) -> tuple[Tensor, Tensor]:  # noqa: ANN001
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    B = x0.shape[0]
    eps = process.t_eps
    u = uniform((B,), generator, x0.device, torch.float64)
    total = torch.zeros(B, dtype=torch.float64, device=x0.device)
    for k in range(num_samples):
        t = (eps + (1 - 2 * eps) * (k + u) / num_samples).float()
        zt = _keep_padding(process.sample_zt(x0, t, generator), x0, mask)
        elbo = process.loss(denoise(zt, t), x0, zt, t).elbo
        total += torch.where(mask, elbo.double(), 0.0).sum(dim=-1)
    return total / num_samples, mask.sum(dim=-1).long()


def _normalizer(model: nn.Module) -> nn.Module:
    """The model's LatentNormalizer (through DDP / torch.compile wrappers)."""
    inner = getattr(model, "module", model)
    inner = getattr(inner, "_orig_mod", inner)
    return inner.latent_norm


class ImageMMDiTObjective(MMDiTObjective):
    """`Objective` of `image-mmdit`: caption (masked diffusion) + image, per-sample modes as above with
    the image in the latent's place (`t2l` = caption -> image, `l2t` = image -> caption). The image is
    either continuous pixels under Gaussian diffusion (eps / v / x0 target) or grey-level tokens under
    masked diffusion (levels from `quantize`). Condition dropout per direction: a t2l sample hides its
    caption with probability `text_dropout`, an l2t sample its image with `image_dropout`.
    Batches: input_ids, attention_mask (B, L); image (B, C, S, S) float32 in [-1, 1]."""

    def __init__(
        self,
        text: MaskedProcess,
        image: GaussianDiffusion | MaskedProcess,
        config: ImageObjectiveConfig,
        levels: int = 256,
    ) -> None:
        self.text = text
        self.image = image
        self.config = config
        self.levels = levels
        self.probs = {config.mode: 1.0} if config.mode != "mixture" else config.mode_probs.normalized()
        self.probs = {m: self.probs.get(m, 0.0) for m in MODES}
        self._step = None
        self._calls = 0

    @property
    def continuous(self) -> bool:
        return isinstance(self.image, GaussianDiffusion)

    def image_input(self, batch: Mapping[str, Tensor]) -> Tensor:
        """The clean image stream: (B, C, S, S) floats (continuous) or (B, C*S*S) levels (discrete)."""
        from mmdlm.models.image_mmdit import quantize

        if "image" not in batch:
            raise KeyError(
                "batch must hold 'image' (B, C, S, S) float32 in [-1, 1]: train on an image dataset"
            )
        image = batch["image"].float()
        return image if self.continuous else quantize(image, self.levels)

    def __call__(
        self, model: nn.Module, batch: Mapping[str, Tensor], generator: torch.Generator | None = None
    ) -> LossOutput:
        x0, mask = unpack_text(batch)
        B, device = x0.shape[0], x0.device
        modes = self._modes(B).to(device)
        target = self.image_input(batch)
        t_text = torch.where(modes == T2L, 0.0, self.text.sample_times(B, generator, device))
        zt_text = _keep_padding(self.text.sample_zt(x0, t_text, generator), x0, mask)
        noise = None
        if isinstance(self.image, GaussianDiffusion):
            t_img = torch.where(modes == L2T, 0.0, self.image.sample_times(B, device, generator, True))
            zt_img, noise = self.image.sample_zt(target, t_img, generator)
            zt_img = torch.where((modes == L2T)[:, None, None, None], target, zt_img)
        else:
            t_img = torch.where(modes == L2T, 0.0, self.image.sample_times(B, generator, device))
            zt_img = self.image.sample_zt(target, t_img, generator)
        u = uniform((B,), generator, device)
        drop_text = (modes == T2L) & (u < self.config.resolved_text_dropout)
        drop_image = (modes == L2T) & (u < self.config.resolved_image_dropout)
        logits, out = model(
            zt_text, zt_img, t_text, t_img, attention_mask=mask, drop_text=drop_text, drop_image=drop_image
        )
        text_rows = modes != T2L
        text_loss, elbo_sum, count = _text_terms(
            self.text, logits, x0, zt_text, t_text, mask & text_rows[:, None], self.config.text.loss_weighting
        )
        img_rows = modes != L2T
        if noise is not None:
            per_sample = self.image.loss(out, target, noise, t_img)
        else:
            per_sample = self.image.loss(out, target, zt_img, t_img).elbo.float().mean(dim=1)
        img_loss = torch.where(img_rows, per_sample, 0.0).sum() / img_rows.sum().clamp(min=1)
        loss = text_loss + self.config.image_loss_weight * img_loss
        # keep both heads in the graph on every step, so DDP needs no find_unused_parameters
        loss = loss + 0.0 * (logits.float().mean() + out.float().mean())
        metrics = {
            "text_loss": text_loss.detach(),
            "image_loss": img_loss.detach(),
            "elbo": (elbo_sum / count.clamp(min=1)).detach(),
            "frac_joint": (modes == JOINT).float().mean(),
            "frac_t2l": (modes == T2L).float().mean(),
            "frac_l2t": (modes == L2T).float().mean(),
        }
        return LossOutput(loss=loss, metrics=metrics, num_tokens=mask.sum())

    @torch.no_grad()
    def nll_bound(
        self,
        model: nn.Module,
        batch: Mapping[str, Tensor],
        num_samples: int,
        generator: torch.Generator | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Caption NLL bound given the clean image, -log p(caption | image) (float64 (B,))."""
        x0, mask = unpack_text(batch)
        image = self.image_input(batch)
        return _conditional_bound(
            self.text, x0, mask, num_samples, generator,
            lambda zt, t: model(zt, image, t, torch.zeros_like(t), attention_mask=mask)[0],
        )  # fmt: skip
