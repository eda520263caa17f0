"""Gaussian latent process: spec §13 schedule vectors, noising identities, reverse steps, Min-SNR."""

from __future__ import annotations

import pytest
import torch

from mmdlm.config.latent import GaussianConfig
from mmdlm.diffusion.gaussian import GaussianDiffusion, LatentNormalizer

COSINE_REF = {  # spec §2.2 reference values of abar_k
    0: 0.9999,
    100: 0.971202,
    250: 0.845563,
    500: 0.492096,
    750: 0.143124,
    900: 0.0236070,
    990: 1.9664e-4,
    998: 2.4278e-6,
    999: 2.4278e-10,
}


def test_cosine_schedule_reference_values() -> None:
    g = GaussianDiffusion(GaussianConfig(schedule="cosine"))
    for k, ref in COSINE_REF.items():
        got = float(g.alphas_cumprod[k])
        # the spec prints 5-6 significant digits
        assert got == pytest.approx(ref, rel=5e-5), k
    betas = 1 - g.alphas_cumprod[1:] / g.alphas_cumprod[:-1]
    assert float(betas.min()) >= 1e-4 - 1e-12 and float(betas.max()) <= 0.9999 + 1e-9
    assert float(1 - g.alphas_cumprod[0]) == pytest.approx(1e-4)  # first beta clipped up to 1e-4
    assert float(betas[-1]) == pytest.approx(0.9999)  # last beta clipped down


def test_linear_schedule_end_value() -> None:
    g = GaussianDiffusion(GaussianConfig(schedule="linear"))
    assert float(g.alphas_cumprod[-1]) == pytest.approx(4.0358e-5, rel=1e-4)


def test_time_to_index() -> None:
    g = GaussianDiffusion()
    t = torch.tensor([0.0, 0.5, 1.0])
    assert g.index(t).tolist() == [0, 499, 999]
    k = torch.arange(1000)
    assert torch.equal(g.index(g.time(k)), k)  # every grid time maps back to its index
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        g.index(torch.tensor([1.5]))


@pytest.mark.parametrize("param", ["epsilon", "x0", "v"])
def test_noising_identities(param: str) -> None:
    g = GaussianDiffusion(GaussianConfig(parameterization=param))
    gen = torch.Generator().manual_seed(0)
    x0 = torch.randn(64, 1, 16, generator=gen, dtype=torch.float64).float()
    t = torch.rand(64, generator=gen) * 0.99
    zt, eps = g.sample_zt(x0, t, gen)
    torch.testing.assert_close(g.predict_x0_from_eps(zt, t, eps), x0, atol=1e-3, rtol=1e-3)
    v = g.v_target(x0, eps, t)
    torch.testing.assert_close(g.predict_x0_from_v(zt, t, v), x0, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(g.predict_eps_from_v(zt, t, v), eps, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(g.predict_eps_from_x0(zt, t, x0), eps, atol=1e-3, rtol=1e-3)
    # the target of each parameterisation, fed back, recovers (x0, eps)
    x0_hat, eps_hat = g.to_x0_eps(g.target(x0, eps, t), zt, t)
    torch.testing.assert_close(x0_hat, x0, atol=1e-3, rtol=1e-3)
    torch.testing.assert_close(eps_hat, eps, atol=1e-3, rtol=1e-3)


def test_ddim_recovers_x0_from_true_noise() -> None:
    """Spec §13: DDIM given the true eps reproduces x0 (the as-built update had noise scale 0 and
    returned eps_hat instead, B18)."""
    g = GaussianDiffusion()
    gen = torch.Generator().manual_seed(1)
    x0 = torch.randn(8, 1, 32, generator=gen)
    eps = torch.randn(8, 1, 32, generator=gen)
    steps = g.timesteps(50)
    z = g.add_noise(x0, g.time(torch.full((8,), steps[0])), eps)
    for i, k in enumerate(steps):
        k_prev = steps[i + 1] if i + 1 < len(steps) else -1
        out = g.ddim_step(eps, z, k, k_prev, eta=0.0)
        z = out.prev_sample
    # the first step amplifies float error by 1/sqrt(abar_999); the last step returns x0_hat exactly
    torch.testing.assert_close(z, x0, atol=2e-2, rtol=0)
    # from a moderate noise level the recovery is exact to float precision
    z = g.add_noise(x0, g.time(torch.full((8,), 500)), eps)
    torch.testing.assert_close(g.ddim_step(eps, z, 500, -1).prev_sample, x0, atol=1e-5, rtol=0)


def test_ddim_eta_one_matches_ddpm_posterior() -> None:
    g = GaussianDiffusion(GaussianConfig(parameterization="x0"))
    x0 = torch.randn(4096, 1, 4)
    z = torch.randn(4096, 1, 4)
    a = g.ddim_step(x0, z, 600, 580, eta=1.0, generator=torch.Generator().manual_seed(3))
    b = g.ddpm_step(x0, z, 600, 580, generator=torch.Generator().manual_seed(3))
    # identical mean and variance, and here identical noise draws
    torch.testing.assert_close(a.prev_sample, b.prev_sample, atol=1e-5, rtol=1e-5)


def test_ddim_eta_gives_the_posterior_variance() -> None:
    """A correct eta > 0: the injected std equals eta times the DDPM posterior std (the repo's formula
    was wrong for eta > 0, spec §3.4)."""
    g = GaussianDiffusion(GaussianConfig(parameterization="x0"))
    x0 = torch.zeros(20000, 1, 1)
    z = torch.zeros(20000, 1, 1)
    a, a_prev = g.alphas_cumprod[700], g.alphas_cumprod[650]
    posterior_std = float(((1 - a_prev) / (1 - a) * (1 - a / a_prev)).sqrt())
    out = g.ddim_step(x0, z, 700, 650, eta=0.5, generator=torch.Generator().manual_seed(0))
    assert float(out.prev_sample.std()) == pytest.approx(0.5 * posterior_std, rel=0.03)
    with pytest.raises(ValueError, match="eta"):
        g.ddim_step(x0, z, 700, 650, eta=1.5)


def test_last_step_returns_clean_estimate() -> None:
    g = GaussianDiffusion()
    x0 = torch.randn(2, 1, 8)
    eps = torch.randn(2, 1, 8)
    z = g.add_noise(x0, g.time(torch.tensor([20, 20])), eps)
    for step in (g.ddim_step(eps, z, 20, -1, eta=0.7), g.ddpm_step(eps, z, 20, -1)):
        torch.testing.assert_close(step.prev_sample, step.pred_x0)
        torch.testing.assert_close(step.pred_x0, x0, atol=1e-4, rtol=0)


def test_timesteps_grid() -> None:
    g = GaussianDiffusion()
    assert g.timesteps(4) == [999, 749, 499, 249]
    assert len(g.timesteps(1000)) == 1000 and g.timesteps(1000)[-1] == 0
    with pytest.raises(ValueError, match="latent steps"):
        g.timesteps(0)


def test_min_snr_weights() -> None:
    t = torch.tensor([0.1, 0.5, 0.9])
    for param in ("epsilon", "x0", "v"):
        g = GaussianDiffusion(GaussianConfig(parameterization=param, min_snr_gamma=5.0))
        snr = g.snr(t)
        w = g.loss_weight(t)
        expected = {
            "epsilon": snr.clamp(max=5) / snr,
            "x0": snr.clamp(max=5),
            "v": snr.clamp(max=5) / (snr + 1),
        }
        torch.testing.assert_close(w, expected[param].float())
    plain = GaussianDiffusion()
    assert torch.equal(plain.loss_weight(t), torch.ones(3))


def test_sample_times_cover_both_ends() -> None:
    g = GaussianDiffusion()
    t = g.sample_times(2000, torch.device("cpu"), torch.Generator().manual_seed(0))
    k = g.index(t)
    assert int(k.min()) <= 1 and int(k.max()) >= 998  # the degenerate t = 1 only (B2) is gone
    assert abs(float(t.mean()) - 0.5) < 0.01


def test_latent_normalizer_round_trip() -> None:
    z = torch.randn(10, 6) * 3 + 1
    for kind in ("dataset", "sqrt_dim", "none"):
        norm = LatentNormalizer(6, kind)
        norm.load_stats(z.mean(0), z.std(0))
        torch.testing.assert_close(norm.denormalize(norm.normalize(z)), z)
    norm = LatentNormalizer(6, "dataset")
    norm.load_stats(z.mean(0), z.std(0))
    torch.testing.assert_close(norm.normalize(z).mean(0), torch.zeros(6), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match=r"expects \(6,\)"):
        norm.load_stats(torch.zeros(5), torch.ones(5))
