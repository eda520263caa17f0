"""GIDD+ process (spec §2.3, §3.3, §5.2): schedule reference values, weight identities, exact ELBO
expectation, posterior, and the bug fixes 10 and 12."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mmdlm.config.diffusion import GIDDProcessConfig
from mmdlm.diffusion.base import SamplingOptions, VocabLayout, denoiser_probs
from mmdlm.diffusion.gidd import GIDDProcess

GPT2 = VocabLayout(vocab_size=50259, pad_id=50257, mask_id=50258, bos_id=50256, eos_id=50256)
TOY = VocabLayout(vocab_size=8, mask_id=7)  # N = 8, every non-mask id is text


def gidd(layout: VocabLayout = GPT2, **kw) -> GIDDProcess:
    return GIDDProcess(layout, GIDDProcessConfig(**kw))


def test_log_b_reference_values() -> None:
    assert gidd().log_B == -20.0
    assert math.isclose(gidd(p_uniform=0.1).log_B, -12.32903, abs_tol=1e-5)
    assert math.isclose(gidd(p_uniform=0.2).log_B, -11.51810, abs_tol=1e-5)


def test_schedule_reference_values_at_half() -> None:
    t = torch.tensor([[0.5]], dtype=torch.float64)
    s = gidd().schedule(t)
    assert math.isclose(s["C"].item(), 1.0000518, rel_tol=1e-7)
    assert math.isclose(s["alpha"].item(), 0.4999741, rel_tol=1e-6)
    assert math.isclose(s["bp_mask"].item(), 0.4999741, rel_tol=1e-6)
    s1 = gidd(p_uniform=0.1).schedule(t)
    assert math.isclose(s1["C"].item(), 1.1111062, rel_tol=1e-6)
    assert math.isclose(s1["alpha"].item(), 0.45, rel_tol=1e-4)


def test_elbo_weight_reference_values_at_half() -> None:
    t = torch.tensor([[0.5]], dtype=torch.float64)
    proc = gidd()
    w, s = proc.weights(t), proc.schedule(t)
    assert math.isclose(w["alpha_ratio"].item(), -2.0, rel_tol=1e-4)
    assert math.isclose((w["omega_mask"] / s["bp_mask"]).item(), 4.0, rel_tol=1e-4)
    assert math.isclose((w["omega_other"] / s["bp_other"]).item(), 2.0, rel_tol=1e-4)
    assert math.isclose((w["omega_other"] / (s["alpha"] + s["bp_other"])).item(), 4.1e-9, rel_tol=0.02)
    p1 = gidd(p_uniform=0.1)
    assert math.isclose(
        (p1.weights(t)["omega_mask"] / p1.schedule(t)["bp_mask"]).item(), 4.00001, rel_tol=1e-6
    )


@pytest.mark.parametrize("p_uniform", [0.0, 0.1])
@pytest.mark.parametrize("t", [0.1, 0.5, 0.9])
def test_marginals_sum_to_one(p_uniform: float, t: float) -> None:
    proc = gidd(p_uniform=p_uniform)
    q = proc.marginals(torch.tensor([[5, 50258]]), torch.tensor([t]))
    torch.testing.assert_close(q.sum(-1), torch.ones(1, 2, dtype=torch.float64))
    assert (q[..., 50259:] == 0).all()


@pytest.mark.parametrize("gamma", [1.0, 2.0])
def test_bug10_weight_identity_and_derivative(gamma: float) -> None:
    """sum_z omega_t(z) = -alpha_ratio, and alpha_ratio = d/dt log alpha_t (finite differences), for
    gamma != 1 too: the fix takes d/dt (1-t)^g = -g (1-t)^(g-1)."""
    proc = gidd(p_uniform=0.1, gamma=gamma)
    for t in (0.2, 0.5, 0.8):
        tt = torch.tensor([[t]], dtype=torch.float64)
        w = proc.weights(tt)
        total = w["omega_mask"] + (proc.N - 1) * w["omega_other"]
        torch.testing.assert_close(total, -w["alpha_ratio"], rtol=1e-9, atol=1e-12)
        h = 1e-6
        up, down = proc.schedule(tt + h)["alpha"], proc.schedule(tt - h)["alpha"]
        fd = (torch.log(up) - torch.log(down)) / (2 * h)
        torch.testing.assert_close(w["alpha_ratio"], fd, rtol=1e-6, atol=1e-8)


def test_forward_sampling_mask_frequency() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.full((1, 1_000_000), 123)
    zt = gidd().sample_zt(x, torch.tensor([0.5]), g)
    assert abs((zt == 50258).double().mean().item() - 0.49997) < 0.0015
    z1 = gidd(p_uniform=0.2).sample_zt(x, torch.tensor([0.5]), g)
    q = gidd(p_uniform=0.2).marginals(torch.tensor([[123]]), torch.tensor([0.5]))[0, 0]
    other = ((z1 != 123) & (z1 != 50258)).double().mean().item()
    expected = 1 - q[123].item() - q[50258].item()
    assert abs(other - expected) < 0.002


def _expected_elbo(proc: GIDDProcess, logits: torch.Tensor, x: int, t: float) -> float:
    """sum over every z_t of q_t(z_t | x) * elbo(z_t): the exact expectation of the per-token estimator."""
    N = proc.N
    zt = torch.arange(N)[None, :]
    out = proc.loss(logits.expand(1, N, -1), torch.full((1, N), x), zt, torch.tensor([t]))
    q = proc.marginals(torch.tensor([[x]]), torch.tensor([t]))[0, 0, :N]
    return float((q * out.elbo[0].double()).sum())


@pytest.mark.parametrize("t", [0.1, 0.5, 0.9])
def test_elbo_expectation_is_nll_without_uniform_noise(t: float) -> None:
    """p_u -> 0: E_z[elbo] = -log x̂_x at every t (the MDLM integrand), spec §3.3.3."""
    torch.manual_seed(0)
    proc = gidd(TOY)
    logits = torch.randn(1, 1, TOY.rows)
    log_x = torch.log_softmax(logits[0, 0].masked_fill(~TOY.text_mask(), float("-inf")), -1)
    assert math.isclose(_expected_elbo(proc, logits, 3, t), -log_x[3].item(), rel_tol=2e-5)


def test_elbo_at_mask_position_is_mdlm_term() -> None:
    torch.manual_seed(1)
    proc = gidd(TOY)
    logits = torch.randn(1, 1, TOY.rows)
    log_x = torch.log_softmax(logits[0, 0].masked_fill(~TOY.text_mask(), float("-inf")), -1)
    for t in (0.2, 0.6):
        out = proc.loss(logits, torch.tensor([[3]]), torch.tensor([[7]]), torch.tensor([t]))
        assert math.isclose(out.elbo.item(), -log_x[3].item() / t, rel_tol=1e-4)


def _closed_form_expected_elbo(
    N: int, m: int, x_hat: np.ndarray, x: int, t: float, p_uniform: float, gamma: float = 1.0
) -> float:
    """E_z[elbo] straight from the spec's formulas (§2.3.2, §3.3), dense over all N states, float64, with the
    time derivatives of the unnormalised schedule taken by central differences (independent of `weights`):

        E_z[elbo] = sum_z omega_t(z) (KL(q_t(.|x) || q_t(.|x̂)) + q_t(z|x)/q_t(z|x̂) - log(q_t(z|x)/q_t(z|x̂)) - 1)
    """
    p_u = max(math.exp(-20.0), p_uniform)
    B = math.exp(max(-math.log1p((1 - p_u) / p_u * N / 2), -20.0))

    def unnorm(s: float) -> tuple[float, np.ndarray, float]:
        c = B * math.sqrt(s**gamma * (1 - s) ** gamma)
        a_hat = (1 - s) ** gamma - c
        bp_hat = np.full(N, c)
        bp_hat[m] = s**gamma
        C = s**gamma + (1 - s) ** gamma + (N - 2) * c
        return a_hat, bp_hat, C

    a_hat, bp_hat, C = unnorm(t)
    h = 1e-6
    a_p, bp_p, _ = unnorm(t + h)
    a_m, bp_m, _ = unnorm(t - h)
    da_hat, dbp_hat = (a_p - a_m) / (2 * h), (bp_p - bp_m) / (2 * h)
    omega = (dbp_hat - da_hat / a_hat * bp_hat) / C
    q_x = bp_hat / C
    q_x[x] += a_hat / C
    q_hat = a_hat / C * x_hat + bp_hat / C
    kl = float((q_x * np.log(q_x / q_hat)).sum())
    ratio = q_x / q_hat
    return float((omega * (kl + ratio - np.log(ratio) - 1)).sum())


@pytest.mark.parametrize(("p_uniform", "t"), [(0.01, 0.1), (0.01, 0.5), (0.03, 0.9), (0.03, 0.99)])
def test_elbo_expectation_with_uniform_noise_matches_closed_form(p_uniform: float, t: float) -> None:
    """Issue 13.5: the exact E_z[elbo] at a given x̂, t and p_uniform equals the dense closed form (the loss
    computes KL analytically from a handful of distinct columns; a wrong column count or weight shows here)."""
    torch.manual_seed(2)
    proc = gidd(TOY, p_uniform=p_uniform)
    logits = torch.randn(1, 1, TOY.rows)
    x_hat = torch.softmax(logits[0, 0].double().masked_fill(~TOY.text_mask(), float("-inf")), -1)[:8]
    ref = _closed_form_expected_elbo(8, 7, x_hat.numpy(), 3, t, p_uniform)
    assert ref > 0
    assert math.isclose(_expected_elbo(proc, logits, 3, t), ref, rel_tol=2e-4)


@pytest.mark.parametrize(("layout", "p_uniform"), [(TOY, 0.1), (TOY, 0.5), (GPT2, 0.999), (GPT2, 0.9999)])
def test_alpha_nonpositive_schedules_are_refused(layout: VocabLayout, p_uniform: float) -> None:
    """Issue 13.2: where alpha_t <= 0 inside [t_eps, 1 - t_eps] the build fails with the reason and a bound."""
    with pytest.raises(ValueError, match=r"alpha_t <= 0 near t = 1.*use p_uniform < "):
        gidd(layout, p_uniform=p_uniform)


@pytest.mark.parametrize(("layout", "p_uniform"), [(TOY, 0.01), (TOY, 0.038), (GPT2, 0.5), (GPT2, 0.99)])
def test_accepted_schedules_have_positive_alpha_and_finite_elbo(
    layout: VocabLayout, p_uniform: float
) -> None:
    """The accepted side of the guard: alpha_t > 0 up to 1 - t_eps, and the loss there is finite."""
    proc = gidd(layout, p_uniform=p_uniform)
    t = torch.tensor([[0.5], [0.99], [1 - 1e-4]], dtype=torch.float64)
    assert bool((proc.schedule(t)["alpha"] > 0).all())
    x = torch.tensor([[3, 3, 3]])
    zt = torch.tensor([[layout.mask_id, 3, 4]])
    out = proc.loss(torch.randn(3, 3, layout.rows), x.expand(3, 3), zt.expand(3, 3), t[:, 0].float())
    assert bool(torch.isfinite(out.elbo).all())


def test_loss_weighting_modes() -> None:
    torch.manual_seed(0)
    logits = torch.randn(1, 3, TOY.rows)
    x = torch.tensor([[2, 2, 2]])
    zt = torch.tensor([[7, 4, 2]])  # mask, uniform noise, clean
    t = torch.tensor([0.5])
    unweighted = gidd(TOY, loss_weighting="clip", min_loss_weight=1.0, max_loss_weight=1.0).loss(
        logits, x, zt, t
    )
    dynamic = gidd(TOY, loss_weighting="dynamic").loss(logits, x, zt, t)
    torch.testing.assert_close(dynamic.loss[0, :2], torch.tensor([2.0, 1.0]) * unweighted.loss[0, :2])
    assert dynamic.loss[0, 2] < 1e-6 * unweighted.loss[0, 2] + 1e-12
    e = gidd(TOY, loss_weighting="elbo").loss(logits, x, zt, t)
    torch.testing.assert_close(e.loss, e.elbo)
    torch.testing.assert_close(dynamic.elbo, e.elbo)  # the reported ELBO never depends on the weighting
    with pytest.raises(ValueError, match="min_loss_weight"):
        GIDDProcessConfig(min_loss_weight=3.0, max_loss_weight=2.0)


def test_dynamic_weights_values() -> None:
    proc = gidd(TOY)
    w = proc._loss_weight(
        torch.ones(1, 3),
        torch.tensor([[False, False, True]]),
        torch.tensor([[True, False, False]]),
        torch.tensor([[0.5]]),
    )
    assert w[0, 0] == 2.0 and w[0, 1] == 1.0 and w[0, 2] < 1e-6


@pytest.mark.parametrize("p_uniform", [0.0, 0.3])
def test_posterior_is_normalised_and_marginally_consistent(p_uniform: float) -> None:
    """sum_{z_t} q(z_s | z_t, x̂) q_t(z_t | x̂) = q_s(z_s | x̂): the posterior inverts the Markov step."""
    # t_eps = 0.05 keeps alpha_t > 0 up to 1 - t_eps for p_uniform = 0.3 on 8 ids (t_eps = 1e-4 is refused)
    proc = gidd(TOY, p_uniform=p_uniform, t_eps=0.05)
    torch.manual_seed(3)
    x_hat = torch.softmax(torch.randn(TOY.rows, dtype=torch.float64).masked_fill(~TOY.text_mask(), -1e30), -1)
    t, s = 0.7, 0.4
    N = proc.N

    def q_at(time: float) -> torch.Tensor:
        sch = proc.schedule(torch.tensor([[time]], dtype=torch.float64))
        q = sch["alpha"][0, 0] * x_hat[:N] + sch["bp_other"][0, 0]
        q[TOY.mask_id] += sch["bp_mask"][0, 0] - sch["bp_other"][0, 0]
        return q

    zt = torch.arange(N)[None, :]
    post = proc.posterior(x_hat.expand(1, N, -1), zt, t, s)[0]  # (z_t, z_s)
    torch.testing.assert_close(post.sum(-1), torch.ones(N, dtype=torch.float64))
    assert (post >= 0).all()
    torch.testing.assert_close(q_at(t) @ post, q_at(s), rtol=1e-10, atol=1e-12)


def test_bug12_last_step_denoises_to_text() -> None:
    g = torch.Generator().manual_seed(0)
    proc = gidd(GPT2, p_uniform=0.1)
    logits = torch.randn(4, 8, GPT2.rows, generator=g)
    zt = torch.full((4, 8), 50258)
    zs = proc.reverse_step(logits, zt, 0.01, 0.0, g, SamplingOptions())
    assert ((zs < 50257) & (zs != 50258)).all()


SMALL = VocabLayout(vocab_size=10, mask_id=9, pad_id=0)  # N = 10; [PAD] is not text, [MASK] is 9


@pytest.mark.parametrize(
    ("options", "t", "s"),
    [
        (SamplingOptions(), 0.7, 0.4),
        (SamplingOptions(), 0.3, 0.0),
        (SamplingOptions(temperature=0.7, float64=False), 0.9, 0.85),
        (SamplingOptions(top_p=0.8, min_p=0.05), 0.6, 0.5),
        (SamplingOptions(temperature=0), 0.5, 0.2),
    ],
)
def test_mixture_step_draws_the_dense_posterior(options: SamplingOptions, t: float, s: float) -> None:
    """Issue 12: `reverse_step` samples the posterior as a mixture (from x̂ / [MASK] / uniform / stay) without
    building it; over many draws from every z_t its frequencies match the dense closed form `posterior`
    (chi-square per z_t, and no draw where the posterior has no mass)."""
    scipy_stats = pytest.importorskip("scipy.stats")
    proc = gidd(SMALL, p_uniform=0.2, t_eps=0.05)
    g = torch.Generator().manual_seed(11)
    N, draws = proc.N, 6000
    logits = torch.randn(SMALL.rows, generator=g) * 1.5
    x_hat = denoiser_probs(logits[None], SMALL.text_mask(), options)[0]
    zt_values = torch.arange(N)
    post = proc.posterior(x_hat.double().expand(1, N, -1), zt_values[None], t, s)[0]  # (z_t, z_s)
    zt = zt_values.repeat_interleave(draws)[None]
    zs = proc.reverse_step(logits.expand(1, zt.shape[1], -1), zt, t, s, g, options)[0]
    for z in range(N):
        counts = torch.bincount(zs[z * draws : (z + 1) * draws], minlength=N).double()
        expected = post[z] * draws
        assert counts[expected == 0].sum() == 0, f"z_t={z}: draws where the posterior is 0"
        keep = expected > 0
        if int(keep.sum()) < 2:
            assert counts[keep].sum() == draws
            continue
        stat = float((((counts - expected) ** 2)[keep] / expected[keep]).sum())
        p_value = scipy_stats.chi2.sf(stat, int(keep.sum()) - 1)
        assert p_value > 1e-4, f"z_t={z}: chi-square {stat:.1f}, p={p_value:.2g}"
