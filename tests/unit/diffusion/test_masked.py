"""MDLM process (spec §2.5, §3.2, §5.1) and the objective's reduction over real tokens."""

from __future__ import annotations

import math

import pytest
import torch

from mmdlm.config.diffusion import MDLMProcessConfig
from mmdlm.diffusion.base import VocabLayout
from mmdlm.diffusion.masked import MaskedProcess
from mmdlm.diffusion.objective import DiffusionObjective


@pytest.fixture
def process(vocab) -> MaskedProcess:
    return MaskedProcess(VocabLayout.from_vocab(vocab), MDLMProcessConfig())


def test_schedule_and_weights(process: MaskedProcess) -> None:
    t = torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)
    torch.testing.assert_close(process.move_chance(t), 0.9999 * t)
    torch.testing.assert_close(process.weight(t), torch.tensor([10.0, 2.0, 1 / 0.9], dtype=torch.float64))
    # the weight is sigma'(t) / expm1(sigma(t)) for sigma = -log1p(-(1 - eps) t)
    sigma = -torch.log1p(-(1 - 1e-4) * t)
    dsigma = (1 - 1e-4) / (1 - (1 - 1e-4) * t)
    torch.testing.assert_close(dsigma / torch.expm1(sigma), process.weight(t))


def test_marginals_identity_at_zero_prior_at_one(process: MaskedProcess) -> None:
    x = torch.randint(3, 39, (2, 5))
    q0 = process.marginals(x, torch.zeros(2))
    torch.testing.assert_close(q0.argmax(-1), x)
    assert (q0.max(-1).values == 1).all()
    q1 = process.marginals(x, torch.ones(2))
    torch.testing.assert_close(q1[..., 39], torch.full((2, 5), 0.9999, dtype=torch.float64))
    torch.testing.assert_close(
        process.marginals(x, torch.rand(2)).sum(-1), torch.ones(2, 5, dtype=torch.float64)
    )


def test_forward_sampling_frequency(process: MaskedProcess) -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randint(3, 39, (1, 200_000))
    zt = process.sample_zt(x, torch.tensor([0.3]), g)
    frac = (zt == 39).double().mean().item()
    assert abs(frac - 0.9999 * 0.3) < 0.004
    assert torch.equal(zt[zt != 39], x[zt != 39])


def test_loss_is_weighted_cross_entropy_on_masked_positions(process: MaskedProcess) -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 6, 128, generator=g)
    x = torch.randint(3, 39, (2, 6), generator=g)
    zt = x.clone()
    zt[:, ::2] = 39
    t = torch.tensor([0.25, 0.5])
    out = process.loss(logits, x, zt, t)
    text = torch.ones(128, dtype=torch.bool)
    text[0] = text[39:] = False  # no [PAD], [MASK] or padding slots
    logp = torch.log_softmax(logits.masked_fill(~text, float("-inf")), -1)
    ce = -logp.gather(-1, x[..., None]).squeeze(-1)
    expected = torch.where(zt == 39, ce / t[:, None], 0.0)
    torch.testing.assert_close(out.elbo, expected)
    torch.testing.assert_close(out.loss, expected)


def test_elbo_expectation_is_scaled_nll(process: MaskedProcess) -> None:
    """E_z[elbo] = (1 - eps)(-log x̂_x) for a fixed denoiser (spec §4 B, MDLM side)."""
    logits = torch.randn(1, 1, 128)
    x = torch.tensor([[7]])
    logp = torch.log_softmax(logits.masked_fill(~process.text_mask(torch.device("cpu")), float("-inf")), -1)
    nll = -logp[0, 0, 7].item()
    for t in (0.05, 0.3, 0.7, 0.95):
        tt = torch.tensor([t])
        masked = process.loss(logits, x, torch.tensor([[39]]), tt).elbo.item()
        p_mask = process.move_chance(tt.double()).item()
        assert math.isclose(p_mask * masked, 0.9999 * nll, rel_tol=1e-6)


@pytest.mark.parametrize("t", [1e-6, 1e-5, 5e-4, 2e-3])
def test_elbo_expectation_below_eps_matches_schedule(vocab, t: float) -> None:
    """Issue 13.3: with t_eps < eps (here eps = 1e-3 as upstream MDLM, t_eps = 1e-6), the weight must follow the
    mask probability (1 - eps) t at every t: E_z[elbo] = (1 - eps) CE. A weight clamped at 1/max(t, eps) gives
    (1 - eps)(t / eps) CE below eps."""
    proc = MaskedProcess(VocabLayout.from_vocab(vocab), MDLMProcessConfig(eps=1e-3, t_eps=1e-6))
    torch.manual_seed(11)
    logits = torch.randn(1, 1, 128)
    logp = torch.log_softmax(logits.masked_fill(~proc.text_mask(torch.device("cpu")), float("-inf")), -1)
    nll = -logp[0, 0, 7].item()
    tt = torch.tensor([t])
    masked = proc.loss(logits, torch.tensor([[7]]), torch.tensor([[39]]), tt).elbo.item()
    p_mask = proc.move_chance(tt.double()).item()
    assert math.isclose(p_mask * masked, (1 - 1e-3) * nll, rel_tol=1e-5)


def test_bug15_reverse_step_emits_text_only_and_keeps_tokens(process: MaskedProcess) -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.zeros(64, 16, 128)
    logits[..., 0] = logits[..., 39:] = 50.0  # a denoiser that loves [PAD], [MASK] and padding slots
    zt = torch.full((64, 16), 39)
    zt[:, :4] = 5
    zs = process.reverse_step(logits, zt, 0.5, 0.25, g)
    assert torch.equal(zs[:, :4], zt[:, :4])
    revealed = zs[zs != 39]
    assert ((revealed > 0) & (revealed < 39)).all()
    frac = (zs[:, 4:] != 39).double().mean().item()
    assert abs(frac - 0.5) < 0.05  # (m_t - m_s) / m_t = 1/2
    final = process.reverse_step(logits, zs, 0.25, 0.0, g)
    assert not (final == 39).any() and ((final > 0) & (final < 39)).all()


def test_reverse_step_distribution_matches_denoiser(process: MaskedProcess) -> None:
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(1, 1, 128, generator=g).expand(40_000, 1, 128)
    zs = process.reverse_step(logits, torch.full((40_000, 1), 39), 0.8, 0.0, g)
    x_hat = torch.softmax(
        logits[0, 0].masked_fill(~process.text_mask(torch.device("cpu")), float("-inf")), -1
    )
    freq = torch.bincount(zs[:, 0], minlength=128).double() / 40_000
    assert (freq - x_hat.double()).abs().max() < 0.01


def test_objective_ignores_padding(process: MaskedProcess) -> None:
    from mmdlm.config.model import DiTConfig
    from mmdlm.models.dit import DiT

    torch.manual_seed(0)
    model = DiT(DiTConfig.model_validate("cpu-nano"), process.layout.rows)
    for p in model.head.parameters():
        torch.nn.init.normal_(p, std=0.5)
    objective = DiffusionObjective(process)
    x = torch.randint(3, 39, (3, 12))
    mask = torch.ones(3, 12, dtype=torch.bool)
    mask[1, 6:] = False
    x[1, 6:] = 0  # [PAD]: not a text id, infinite CE if it were scored
    out = objective(model, {"input_ids": x, "attention_mask": mask}, torch.Generator().manual_seed(0))
    assert torch.isfinite(out.loss) and out.num_tokens == 30
    assert {"elbo", "rec_loss", "t_mean"} <= set(out.metrics)
    out.loss.backward()
    nll, counts = objective.nll_bound(model, {"input_ids": x, "attention_mask": mask}, 3, torch.Generator())
    assert nll.dtype == torch.float64 and nll.shape == (3,) and torch.isfinite(nll).all()
    assert counts.tolist() == [12, 6, 12]
    with pytest.raises(ValueError, match="num_samples"):
        objective.nll_bound(model, {"input_ids": x}, 0)
