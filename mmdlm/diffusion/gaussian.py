"""Gaussian (DDPM) diffusion on continuous latents: schedules, forward noising, parameterisation
conversions, the weighted regression loss and the DDIM / DDPM reverse steps (spec §2.2, §3.4).

Conventions. T discrete steps k = 0..T-1 with cumulative signal rate abar_k; the network sees the
continuous time t = k / (T-1) in [0, 1]. Forward: z_k = sqrt(abar_k) x0 + sqrt(1 - abar_k) eps.
Targets: eps, x0, or v = sqrt(abar) eps - sqrt(1 - abar) x0 (Salimans & Ho 2022).
Reverse steps go from index k to k' < k, or to k' = -1 meaning "clean" (abar_{-1} = 1).

Tables are built in float64 and gathered into float32; latents are float32 (B, N, D) or (B, D).
The module never imports a network; it takes and returns tensors.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from mmdlm.config.latent import GaussianConfig


def cosine_alphas_cumprod(num_timesteps: int, s: float = 0.008) -> Tensor:
    """Nichol & Dhariwal cosine schedule with betas clipped to [1e-4, 0.9999]; (T,) float64."""
    x = torch.arange(num_timesteps + 1, dtype=torch.float64)
    f = torch.cos(((x / num_timesteps) + s) / (1 + s) * math.pi / 2) ** 2
    abar = f / f[0]
    betas = (1 - abar[1:] / abar[:-1]).clamp(1e-4, 0.9999)
    return torch.cumprod(1 - betas, dim=0)


def linear_alphas_cumprod(num_timesteps: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> Tensor:
    betas = torch.linspace(beta_start, beta_end, num_timesteps, dtype=torch.float64)
    return torch.cumprod(1 - betas, dim=0)


@dataclass(frozen=True)
class StepOutput:
    """One reverse step: the next (less noisy) sample and the clean estimate it was built from."""

    prev_sample: Tensor
    pred_x0: Tensor


def _randn(shape: tuple[int, ...], generator: torch.Generator | None, like: Tensor) -> Tensor:
    """N(0, I) drawn on the generator's device (a CPU generator works for GPU tensors), then moved."""
    device = generator.device if generator is not None else like.device
    return torch.randn(shape, generator=generator, device=device, dtype=like.dtype).to(like.device)


def _expand(values: Tensor, like: Tensor) -> Tensor:
    """(B,) -> (B, 1, ..., 1) broadcastable against `like`, in like's dtype."""
    return values.to(like.dtype).reshape(-1, *([1] * (like.dim() - 1)))


class GaussianDiffusion:
    """The latent noise process of one config. Stateless apart from its (device-cached) tables."""

    def __init__(self, config: GaussianConfig | None = None) -> None:
        self.config = config or GaussianConfig()
        c = self.config
        if c.schedule == "cosine":
            abar = cosine_alphas_cumprod(c.num_timesteps, c.cosine_s)
        else:
            abar = linear_alphas_cumprod(c.num_timesteps, c.beta_start, c.beta_end)
        self.alphas_cumprod = abar  # (T,) float64, on CPU
        self.num_timesteps = c.num_timesteps
        self.parameterization = c.parameterization
        self._cache: dict[torch.device, Tensor] = {}

    # ---- time and schedule -----------------------------------------------------------------------------
    def _table(self, device: torch.device) -> Tensor:
        if device not in self._cache:
            self._cache[device] = self.alphas_cumprod.to(device)
        return self._cache[device]

    def index(self, t: Tensor) -> Tensor:
        """Continuous t in [0,1] -> step index k = trunc(t (T-1)) (spec §2.2). A 1e-4 slack absorbs float
        error so t = k/(T-1) maps back to k. Always continuous: no `t.max() <= 1` guessing."""
        if t.is_floating_point():
            if bool(((t < 0) | (t > 1)).any()):
                raise ValueError("latent time t must lie in [0, 1]")
            k = torch.floor(t.double() * (self.num_timesteps - 1) + 1e-4).long()
        else:
            k = t.long()
        return k.clamp(0, self.num_timesteps - 1)

    def time(self, k: Tensor) -> Tensor:
        """Step index -> the continuous time the network is conditioned on."""
        return k.to(torch.float32) / (self.num_timesteps - 1)

    def alpha_bar(self, t: Tensor) -> Tensor:
        """abar at time t (or index, if t is an integer tensor); (B,) float64."""
        return self._table(t.device)[self.index(t)]

    def _alpha_bar_index(self, k: Tensor) -> Tensor:
        """abar_k with abar_{-1} = 1 (the clean end of a reverse step)."""
        table = self._table(k.device)
        return torch.where(k < 0, torch.ones_like(table[0]), table[k.clamp(min=0)])

    def snr(self, t: Tensor) -> Tensor:
        abar = self.alpha_bar(t)
        return abar / (1 - abar)

    def sample_times(
        self,
        batch: int,
        device: torch.device,
        generator: torch.Generator | None = None,
        low_discrepancy: bool = True,
    ) -> Tensor:
        """Uniform step indices over {0..T-1} (stratified when `low_discrepancy`), as times t = k/(T-1)."""
        if low_discrepancy:
            u = torch.rand((), generator=generator, device=device)
            grid = (torch.arange(batch, device=device, dtype=torch.float64) / batch + u) % 1.0
        else:
            grid = torch.rand(batch, generator=generator, device=device, dtype=torch.float64)
        k = torch.floor(grid * self.num_timesteps).long().clamp(max=self.num_timesteps - 1)
        return self.time(k)

    # ---- forward process -------------------------------------------------------------------------------
    def prior(
        self,
        shape: tuple[int, ...],
        device: torch.device | str = "cpu",
        generator: torch.Generator | None = None,
    ) -> Tensor:
        return torch.randn(shape, generator=generator, device=device)

    def add_noise(self, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        abar = _expand(self.alpha_bar(t), x0)
        return abar.sqrt() * x0 + (1 - abar).sqrt() * noise

    def sample_zt(
        self, x0: Tensor, t: Tensor, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        """(z_t, eps) with eps ~ N(0, I) drawn from `generator`."""
        noise = _randn(tuple(x0.shape), generator, x0)
        return self.add_noise(x0, t, noise), noise

    # ---- parameterisations -----------------------------------------------------------------------------
    def v_target(self, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        abar = _expand(self.alpha_bar(t), x0)
        return abar.sqrt() * noise - (1 - abar).sqrt() * x0

    def target(self, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        if self.parameterization == "epsilon":
            return noise
        if self.parameterization == "x0":
            return x0
        return self.v_target(x0, noise, t)

    def predict_x0_from_eps(self, z_t: Tensor, t: Tensor, eps: Tensor) -> Tensor:
        abar = _expand(self.alpha_bar(t), z_t)
        return (z_t - (1 - abar).sqrt() * eps) / abar.sqrt()

    def predict_eps_from_x0(self, z_t: Tensor, t: Tensor, x0: Tensor) -> Tensor:
        abar = _expand(self.alpha_bar(t), z_t)
        return (z_t - abar.sqrt() * x0) / (1 - abar).sqrt()

    def predict_x0_from_v(self, z_t: Tensor, t: Tensor, v: Tensor) -> Tensor:
        abar = _expand(self.alpha_bar(t), z_t)
        return abar.sqrt() * z_t - (1 - abar).sqrt() * v

    def predict_eps_from_v(self, z_t: Tensor, t: Tensor, v: Tensor) -> Tensor:
        abar = _expand(self.alpha_bar(t), z_t)
        return abar.sqrt() * v + (1 - abar).sqrt() * z_t

    def to_x0_eps(
        self, pred: Tensor, z_t: Tensor, t: Tensor, clip_x0: float | None = None
    ) -> tuple[Tensor, Tensor]:
        """Network output -> (x0_hat, eps_hat). When `clip_x0` is set, x0_hat is clamped and eps_hat
        recomputed from it, which keeps epsilon-prediction stable where abar ~ 0 (1/sqrt(abar_999) ~ 6e4)."""
        if self.parameterization == "epsilon":
            x0 = self.predict_x0_from_eps(z_t, t, pred)
            eps = pred
        elif self.parameterization == "x0":
            x0 = pred
            eps = self.predict_eps_from_x0(z_t, t, pred)
        else:
            x0 = self.predict_x0_from_v(z_t, t, pred)
            eps = self.predict_eps_from_v(z_t, t, pred)
        if clip_x0 is not None:
            x0 = x0.clamp(-clip_x0, clip_x0)
            eps = self.predict_eps_from_x0(z_t, t, x0)
        return x0, eps

    # ---- loss ------------------------------------------------------------------------------------------
    def loss_weight(self, t: Tensor) -> Tensor:
        """Per-sample weight (B,) float32: 1, or the Min-SNR-gamma weight for the chosen target."""
        if self.config.min_snr_gamma is None:
            return torch.ones(t.shape[0], device=t.device)
        snr = self.snr(t)
        clipped = snr.clamp(max=self.config.min_snr_gamma)
        if self.parameterization == "epsilon":
            weight = clipped / snr
        elif self.parameterization == "x0":
            weight = clipped
        else:
            weight = clipped / (snr + 1)
        return weight.float()

    def loss(self, pred: Tensor, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        """Weighted MSE to the parameterisation's target, averaged over all but the batch dim: (B,)."""
        target = self.target(x0, noise, t)
        mse = (pred.float() - target.float()).pow(2).flatten(1).mean(dim=1)
        return mse * self.loss_weight(t)

    # ---- reverse process -------------------------------------------------------------------------------
    def timesteps(self, num_steps: int) -> list[int]:
        """Descending index grid k_K = T-1 > ... > k_1 >= 0 with num_steps entries ("trailing" spacing:
        it starts at the pure-noise end, which sampling from the prior requires)."""
        if num_steps < 1 or num_steps > self.num_timesteps:
            raise ValueError(f"latent steps must be in [1, {self.num_timesteps}], got {num_steps}")
        step = self.num_timesteps / num_steps
        return [int(round(self.num_timesteps - i * step)) - 1 for i in range(num_steps)]

    def ddim_step(
        self,
        pred: Tensor,
        z_t: Tensor,
        k: int,
        k_prev: int,
        eta: float = 0.0,
        generator: torch.Generator | None = None,
        clip_x0: float | None = None,
    ) -> StepOutput:
        """DDIM (Song et al. 2021, eq. 12) from index k to k_prev (-1 = clean).

        1. x0_hat, eps_hat from the network output;
        2. sigma = eta sqrt((1 - a')/(1 - a)) sqrt(1 - a/a'), the DDPM posterior std at eta = 1;
        3. z' = sqrt(a') x0_hat + sqrt(1 - a' - sigma^2) eps_hat + sigma * noise.
        """
        if not 0.0 <= eta <= 1.0:
            raise ValueError(f"eta must be in [0, 1], got {eta}")
        if k_prev >= k:
            raise ValueError(f"reverse step must decrease the index, got {k} -> {k_prev}")
        t = self.time(torch.full((z_t.shape[0],), k, device=z_t.device))
        x0, eps = self.to_x0_eps(pred, z_t, t, clip_x0)
        a = self._alpha_bar_index(torch.tensor(k, device=z_t.device))
        a_prev = self._alpha_bar_index(torch.tensor(k_prev, device=z_t.device))
        sigma = eta * torch.sqrt((1 - a_prev) / (1 - a)) * torch.sqrt(1 - a / a_prev)
        dir_coef = torch.sqrt((1 - a_prev - sigma**2).clamp(min=0))
        prev = a_prev.sqrt().float() * x0 + dir_coef.float() * eps
        if eta > 0 and k_prev >= 0:
            prev = prev + sigma.float() * _randn(tuple(z_t.shape), generator, z_t)
        return StepOutput(prev_sample=prev, pred_x0=x0)

    def ddpm_step(
        self,
        pred: Tensor,
        z_t: Tensor,
        k: int,
        k_prev: int,
        generator: torch.Generator | None = None,
        clip_x0: float | None = None,
    ) -> StepOutput:
        """Ancestral step through the Gaussian posterior q(z_{k'} | z_k, x0_hat) (Ho et al. 2020, eq. 7),
        generalised to skipped steps: beta = 1 - a/a', mean = sqrt(a') beta/(1-a) x0_hat
        + sqrt(a/a') (1-a')/(1-a) z_k, variance = (1-a')/(1-a) beta."""
        if k_prev >= k:
            raise ValueError(f"reverse step must decrease the index, got {k} -> {k_prev}")
        t = self.time(torch.full((z_t.shape[0],), k, device=z_t.device))
        x0, _ = self.to_x0_eps(pred, z_t, t, clip_x0)
        a = self._alpha_bar_index(torch.tensor(k, device=z_t.device))
        a_prev = self._alpha_bar_index(torch.tensor(k_prev, device=z_t.device))
        beta = 1 - a / a_prev
        mean = (a_prev.sqrt() * beta / (1 - a)).float() * x0 + (
            (a / a_prev).sqrt() * (1 - a_prev) / (1 - a)
        ).float() * z_t
        if k_prev < 0:
            return StepOutput(prev_sample=x0, pred_x0=x0)
        var = (1 - a_prev) / (1 - a) * beta
        noise = _randn(tuple(z_t.shape), generator, z_t)
        return StepOutput(prev_sample=mean + var.sqrt().float() * noise, pred_x0=x0)


class LatentNormalizer(nn.Module):
    """Maps encoder latents to the space diffusion runs in, and back. Its buffers live in the model's
    state dict, so a checkpoint un-normalises its samples without the dataset.

    kind `dataset`: (z - mean) / std with train-split statistics (set by `load_stats`);
    `sqrt_dim`: z * sqrt(D) (unit-norm latents -> unit variance per coordinate); `none`: identity.
    """

    def __init__(self, dim: int, kind: str = "dataset") -> None:
        super().__init__()
        if kind not in ("dataset", "sqrt_dim", "none"):
            raise ValueError(f"latent normalization must be dataset, sqrt_dim or none, got {kind!r}")
        self.kind = kind
        self.dim = dim
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))

    def load_stats(self, mean: Tensor, std: Tensor) -> None:
        if mean.shape != (self.dim,) or std.shape != (self.dim,):
            raise ValueError(
                f"latent statistics have shape {tuple(mean.shape)}/{tuple(std.shape)}, the model expects ({self.dim},)"
            )
        if bool((std <= 0).any()):
            raise ValueError("latent std must be positive in every dimension")
        self.mean.copy_(mean)
        self.std.copy_(std)
        self.fitted.fill_(True)

    def normalize(self, z: Tensor) -> Tensor:
        if self.kind == "dataset":
            return (z - self.mean) / self.std
        if self.kind == "sqrt_dim":
            return z * math.sqrt(self.dim)
        return z

    def denormalize(self, z: Tensor) -> Tensor:
        if self.kind == "dataset":
            return z * self.std + self.mean
        if self.kind == "sqrt_dim":
            return z / math.sqrt(self.dim)
        return z
