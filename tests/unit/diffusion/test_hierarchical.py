"""HDLM process (spec §2.4, §3.4, §4, §5.3): schedule, weights, identities with MDLM, force-transition closed
form, exact reverse step, and the bug fixes 2, 5, 9, 10, 11, 13, 14, 20, 21, 22, 25."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import integrate

from mmdlm.config.diffusion import HDLMProcessConfig, MDLMProcessConfig
from mmdlm.diffusion.base import SamplingOptions, VocabLayout
from mmdlm.diffusion.hierarchical import HierarchicalProcess, segment_logsumexp
from mmdlm.diffusion.masked import MaskedProcess

# 12 ids, [MASK] = 11, 3 clusters
CMAP = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2, 0, 1, -1])


def hdlm(cluster_map: torch.Tensor = CMAP, mask_id: int = 11, **kw) -> HierarchicalProcess:
    C = int(cluster_map.max()) + 1
    layout = VocabLayout(vocab_size=len(cluster_map), mask_id=mask_id, num_clusters=C)
    return HierarchicalProcess(layout, HDLMProcessConfig(**kw), cluster_map)


def log_x_hat(proc: HierarchicalProcess, logits: torch.Tensor) -> torch.Tensor:
    return torch.log_softmax(logits.double().masked_fill(~proc.layout.text_mask(), float("-inf")), -1)


# ----- schedule -----

REFERENCE = [  # gamma, t, alpha, c, m, m', -alpha'
    (1, 0.1, 0.9, 0.0948245, 0.00517554, 0.105361, 1.0),
    (1, 0.5, 0.5, 0.346574, 0.153426, 0.693147, 1.0),
    (1, 0.9, 0.1, 0.230259, 0.669741, 2.30259, 1.0),
    (2, 0.5, 0.25, 0.5, 0.25, 1.0, 1.0),
    (2, 0.9, 0.01, 0.18, 0.81, 1.8, 0.2),
]


@pytest.mark.parametrize(("gamma", "t", "alpha", "c", "m", "dm", "dalpha"), REFERENCE)
def test_schedule_reference_rows(gamma, t, alpha, c, m, dm, dalpha) -> None:
    s = hdlm(gamma=float(gamma)).schedule(torch.tensor(t))
    for key, ref in (("alpha", alpha), ("c", c), ("m", m), ("dm", dm), ("dalpha", dalpha)):
        assert math.isclose(s[key].item(), ref, rel_tol=1e-5), key
    assert math.isclose((s["alpha"] + s["c"] + s["m"]).item(), 1.0, rel_tol=1e-14)


@pytest.mark.parametrize("gamma", [1.0, 2.0, 0.5, 3.0])
def test_bug10_ctmc_identities_by_finite_differences(gamma: float) -> None:
    """alpha' = -g alpha/(1-t), c' = g alpha/(1-t) - c/(1-t), m' = c/(1-t); the returned m' carries the
    1/(g-1) factor the original dropped for g not in {1, 2}."""
    proc = hdlm(gamma=gamma)
    t = torch.tensor([0.03, 0.2, 0.5, 0.8, 0.97], dtype=torch.float64)
    h = 1e-6
    up, down, s = proc.schedule(t + h), proc.schedule(t - h), proc.schedule(t)
    d = {k: (up[k] - down[k]) / (2 * h) for k in ("alpha", "c", "m")}
    torch.testing.assert_close(d["alpha"], -gamma * s["alpha"] / (1 - t), rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(d["c"], (gamma * s["alpha"] - s["c"]) / (1 - t), rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(d["m"], s["c"] / (1 - t), rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(s["dm"], d["m"], rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(s["dalpha"], -d["alpha"], rtol=1e-6, atol=1e-9)


def test_bug21_mask_mass_accurate_near_zero() -> None:
    """m_t = sum_k t^k/(k(k-1)) ~ t^2/2: no cancellation at t = 1e-4 (the original lost ~3 digits in fp32)."""
    proc = hdlm()
    for t in (1e-6, 1e-4, 1e-2, 0.049, 0.051):
        exact = sum(t**k / (k * (k - 1)) for k in range(2, 40))
        m = proc.schedule(torch.tensor(t, dtype=torch.float64))["m"].item()
        assert math.isclose(m, exact, rel_tol=1e-12)
    s = proc.schedule(torch.tensor([0.0, 1.0]))
    torch.testing.assert_close(s["alpha"], torch.tensor([1.0, 0.0], dtype=torch.float64), atol=1e-13, rtol=0)
    torch.testing.assert_close(s["m"], torch.tensor([0.0, 1.0], dtype=torch.float64), atol=1e-12, rtol=0)


def test_elbo_weight_reference_values() -> None:
    proc = hdlm()
    t = torch.tensor([0.1, 0.5, 0.9, 1 - 1e-4], dtype=torch.float64)
    w_mask, w_clus = proc.elbo_weights(t)
    torch.testing.assert_close(
        w_mask, torch.tensor([20.3574, 4.51778, 3.43802, 9.21975], dtype=torch.float64), rtol=2e-5, atol=0
    )
    torch.testing.assert_close(
        w_clus, torch.tensor([10.5458, 2.88539, 4.34294, 1085.74], dtype=torch.float64), rtol=2e-5, atol=0
    )
    w_mask2, w_clus2 = hdlm(gamma=2.0).elbo_weights(t[:3])
    torch.testing.assert_close(w_mask2, 2 / t[:3])
    torch.testing.assert_close(w_clus2, 1 / t[:3])


def test_bug11_weights_are_exact_at_small_t() -> None:
    """No max(m_t, 1e-4) clip: at t = 1e-3 the weight is ~2/t = 2000 (the original's was 10)."""
    w_mask, w_clus = hdlm().elbo_weights(torch.tensor([1e-3, 1e-4], dtype=torch.float64))
    assert 1990 < w_mask[0] < 2010 and w_mask[1] > 19_990
    assert math.isclose(w_clus[1].item(), 1 / (-(1 - 1e-4) * math.log1p(-1e-4)), rel_tol=1e-10)


def test_clip_weights_are_two_for_gamma_one() -> None:
    proc = hdlm(loss_weighting="clip", min_loss_weight=0.0, max_loss_weight=2.0)
    t = torch.linspace(0.001, 0.999, 500, dtype=torch.float64)
    lw_mask, lw_clus = proc.loss_weights(t)
    assert (lw_mask == 2).all() and (lw_clus == 2).all()
    e_mask, e_clus = hdlm(loss_weighting="empirical").loss_weights(torch.tensor([0.5], dtype=torch.float64))
    assert e_mask.item() == 2.75 and e_clus.item() == 2.0


def test_bug14_dynamic_weighting_is_renamed() -> None:
    with pytest.raises(ValueError, match="use loss_weighting: clip"):
        HDLMProcessConfig(loss_weighting="dynamic")


# ----- forward process -----


def test_forward_sampling_frequencies() -> None:
    g = torch.Generator().manual_seed(0)
    proc = hdlm()
    x = torch.full((1, 1_000_000), 4)
    zt = proc.sample_zt(x, torch.tensor([0.5]), g)
    freq = [
        (zt == 4).double().mean().item(),
        (zt == 12 + 1).double().mean().item(),
        (zt == 11).double().mean().item(),
    ]
    assert np.allclose(freq, [0.5, 0.3466, 0.1534], atol=0.0015)


def test_bug9_perturbation_mass_sums_to_one() -> None:
    """K(c|x) = xi on c(x) and (1 - xi)/(C - 1) on each other cluster: q_t sums to 1, and sampling does not
    pile the missing mass on the last cluster id."""
    cmap = torch.arange(64).repeat_interleave(2)
    cmap = torch.cat([cmap, torch.tensor([-1])])  # 129 ids, [MASK] = 128, 64 clusters
    proc = hdlm(cmap, mask_id=128, xi=0.9)
    q = proc.marginals(torch.tensor([[0, 5]]), torch.tensor([0.5]))
    torch.testing.assert_close(q.sum(-1), torch.ones(1, 2, dtype=torch.float64))
    c_t = proc.schedule(torch.tensor(0.5))["c"].item()
    clusters = q[0, 0, 129:193]
    assert math.isclose(clusters[0].item(), 0.9 * c_t) and math.isclose(clusters[63].item(), 0.1 / 63 * c_t)
    g = torch.Generator().manual_seed(1)
    zt = proc.sample_zt(torch.zeros(1, 400_000, dtype=torch.long), torch.tensor([0.5]), g)
    counts = torch.bincount(zt[zt >= 129] - 129, minlength=64).double() / 400_000
    assert abs(counts[0].item() - 0.9 * c_t) < 0.003
    assert abs(counts[63].item() - 0.1 / 63 * c_t) < 3e-4  # the last cluster is not favoured
    assert abs(counts[1:].mean().item() - 0.1 / 63 * c_t) < 1e-4


def test_bug5_mask_id_need_not_be_last() -> None:
    """BERT layout ([MASK] = 103 of 30522 is not V - 1): here [MASK] = 3 of 12."""
    cmap = torch.tensor([0, 0, 1, -1, 1, 1, 2, 2, 2, 0, 1, 2])
    proc = hdlm(cmap, mask_id=3)
    x = torch.tensor([[0, 5, 11]])
    q = proc.marginals(x, torch.tensor([0.3]))
    torch.testing.assert_close(q.sum(-1), torch.ones(1, 3, dtype=torch.float64))
    out = proc.loss(
        torch.randn(1, 3, proc.layout.rows), x, torch.tensor([[3, 12 + 1, 11]]), torch.tensor([0.3])
    )
    assert torch.isfinite(out.elbo).all() and out.elbo[0, 2] == 0
    zs = proc.reverse_step(torch.randn(1, 3, proc.layout.rows), torch.tensor([[3, 13, 3]]), 0.3, 0.0, None)
    assert ((zs < 12) & (zs != 3)).all()


# ----- loss -----


def test_bug25_segment_logsumexp_matches_dense_membership() -> None:
    """bug 25: the cluster sums never build a (positions x V) membership tensor; same values as doing so."""
    torch.manual_seed(0)
    values = torch.randn(3, 5, 12)
    values[0, 0, :3] = float("-inf")
    segment = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2, 0, 1, 3])
    dense = torch.stack(
        [torch.logsumexp(values.masked_fill(segment != k, float("-inf")), -1) for k in range(5)], -1
    )
    torch.testing.assert_close(segment_logsumexp(values, segment, 5), dense)


def test_strict_equals_approximate_for_xi_one_and_closed_form() -> None:
    torch.manual_seed(1)
    strict = hdlm(objective="strict", loss_weighting="elbo")
    approx = hdlm(objective="approximate", loss_weighting="elbo")
    logits = torch.randn(2, 6, strict.layout.rows)
    x = torch.tensor([[0, 4, 7, 9, 10, 2], [1, 3, 6, 8, 5, 0]])
    zt = torch.where(torch.arange(6) % 2 == 0, torch.tensor(11), 12 + strict.cluster_of(x))
    t = torch.tensor([0.3, 0.7])
    a, b = strict.loss(logits, x, zt, t), approx.loss(logits, x, zt, t)
    torch.testing.assert_close(a.loss, b.loss)
    torch.testing.assert_close(a.elbo, b.elbo)
    # closed form at cluster positions: l_x - logsumexp_{v in c(x)} l_v
    lx = log_x_hat(strict, logits)
    own = CMAP.clamp(min=0)
    for i in range(2):
        for j in range(1, 6, 2):
            members = (own == own[x[i, j]]) & strict.layout.text_mask()[:12]
            expected = -(lx[i, j, x[i, j]] - torch.logsumexp(lx[i, j, :12][members], 0))
            assert math.isclose(a.metrics["loss_tokens"][i, j].item(), expected.item(), rel_tol=1e-5)


def test_force_within_distribution_sums() -> None:
    """Renormalising inside a cluster: in-cluster probabilities sum to 1 (xi_eff = 1) for every cluster."""
    proc = hdlm()
    lx = log_x_hat(proc, torch.randn(proc.layout.rows))
    log_p = segment_logsumexp(lx[:12].float(), proc._on("token_cluster", torch.device("cpu"))[:12], 3)
    for c in range(3):
        members = CMAP == c
        torch.testing.assert_close(
            torch.exp(lx[:12][members] - log_p[c].double()).sum(),
            torch.tensor(1.0, dtype=torch.float64),
            rtol=1e-6,
            atol=0,
        )
    torch.testing.assert_close(log_p.exp().sum(), torch.tensor(1.0), rtol=1e-6, atol=0)


def test_bug2_approximate_objective_runs_with_xi_below_one() -> None:
    """The original asserted no force-transition in the simplified branch, which its xi=0.9 config enabled."""
    proc = hdlm(xi=0.9, objective="approximate")
    strict = hdlm(xi=0.9, objective="strict")
    logits = torch.randn(1, 4, proc.layout.rows)
    x = torch.tensor([[0, 4, 7, 9]])
    zt = torch.tensor([[11, 12, 13, 14]])  # [MASK], then clusters 0, 1, 2 (own cluster only for x = 7)
    t = torch.tensor([0.4])
    out = proc.loss(logits, x, zt, t)
    ref = strict.loss(logits, x, zt, t)
    assert torch.isfinite(out.loss).all() and torch.isfinite(ref.elbo).all()
    torch.testing.assert_close(out.elbo, ref.elbo)  # the reported ELBO is always the strict one
    assert not torch.allclose(out.loss, ref.loss)


def test_bug20_cluster_terms_computed_in_float32() -> None:
    torch.manual_seed(2)
    proc = hdlm(loss_weighting="elbo")
    logits = torch.randn(1, 4, proc.layout.rows).bfloat16()
    x = torch.tensor([[0, 4, 7, 9]])
    zt = torch.tensor([[11, 13, 11, 12]])
    t = torch.tensor([0.4])
    out = proc.loss(logits, x, zt, t)
    ref = proc.loss(logits.double(), x, zt, t)  # same (bf16-valued) logits, full precision
    assert out.elbo.dtype == torch.float32
    torch.testing.assert_close(out.elbo.double(), ref.elbo.double(), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("gamma", [1.0, 2.0])
def test_bug22_cluster_term_expectation_is_bounded_near_one(gamma: float) -> None:
    """w_clus -> inf as t -> 1, but P(z_t = cluster) -> 0 with it. The expected token term, taken with the
    probability from `marginals` and the per-token ELBO from `loss` (both as used), must equal the closed form
    gamma (1-t)^(gamma-1) (-log x̂_x / P_c(x)) up to t = 1 - 1e-4, and stay finite.
    (Replaces a check of c_t * w_clus against dalpha, which held by construction.)"""
    torch.manual_seed(12)
    proc = hdlm(gamma=gamma, loss_weighting="elbo")
    logits = torch.randn(1, 1, proc.layout.rows)
    lx = log_x_hat(proc, logits)[0, 0]
    x = 4
    own = proc.layout.vocab_size + int(CMAP[x])
    log_pc = torch.logsumexp(lx[:11][CMAP[:11] == CMAP[x]], 0).item()
    for t in (0.99, 0.999, 1 - 1e-4):
        q = proc.marginals(torch.tensor([[x]]), torch.tensor([t]))[0, 0, own].item()
        elbo = proc.loss(logits, torch.tensor([[x]]), torch.tensor([[own]]), torch.tensor([t])).elbo.item()
        expected = gamma * (1 - t) ** (gamma - 1) * -(lx[x].item() - log_pc)
        assert math.isfinite(q * elbo)
        assert math.isclose(q * elbo, expected, rel_tol=2e-3), (t, q * elbo, expected)


def _expected_elbo(proc: HierarchicalProcess, logits: torch.Tensor, x: int, t: float) -> float:
    """sum over every z_t of q_t(z_t | x) * elbo(z_t)."""
    V, R = proc.layout.vocab_size, proc.layout.rows
    states = torch.cat([torch.tensor([x, proc.layout.mask_id]), torch.arange(V, V + proc.C)])
    out = proc.loss(
        logits.expand(1, len(states), R), torch.full((1, len(states)), x), states[None], torch.tensor([t])
    )
    q = proc.marginals(torch.tensor([[x]]), torch.tensor([t]))[0, 0][states]
    return float((q * out.elbo[0].double()).sum())


@pytest.mark.parametrize("t", [0.05, 0.3, 0.7, 0.95])
def test_identity_b_single_cluster_expectation_equals_mdlm(t: float) -> None:
    """§4 (B): C = 1 and a denoiser that cannot tell the cluster from [MASK]: E_z[elbo] = -log x̂_x for HDLM,
    and (1 - eps)(-log x̂_x) for MDLM."""
    torch.manual_seed(3)
    cmap = torch.tensor([0] * 11 + [-1])
    proc = hdlm(cmap, loss_weighting="elbo")
    logits = torch.randn(1, 1, proc.layout.rows)
    nll = -log_x_hat(proc, logits)[0, 0, 5].item()
    assert math.isclose(_expected_elbo(proc, logits, 5, t), nll, rel_tol=1e-5)
    # (A) the cluster term vanishes pathwise
    out = proc.loss(
        logits.expand(1, 3, -1), torch.full((1, 3), 5), torch.tensor([[11, 12, 5]]), torch.tensor([t])
    )
    assert out.metrics["loss_clusters"].abs().max() < 1e-6
    mdlm = MaskedProcess(VocabLayout(vocab_size=12, mask_id=11), MDLMProcessConfig())
    masked = mdlm.loss(
        logits[..., :128], torch.tensor([[5]]), torch.tensor([[11]]), torch.tensor([t])
    ).elbo.item()
    assert math.isclose(
        mdlm.move_chance(torch.tensor(t, dtype=torch.float64)).item() * masked, 0.9999 * nll, rel_tol=1e-5
    )


@pytest.mark.parametrize("t", [0.1, 0.5, 0.9])
def test_identity_c_identity_clustering_is_time_changed_mdlm(t: float) -> None:
    """§4 (C): with one cluster per token, elbo_HDLM(t) at a mask = m'_t * elbo_MDLM(tau = m_t), token
    terms vanish, so HDLM is MDLM under the time change tau = m_t."""
    torch.manual_seed(4)
    cmap = torch.cat([torch.arange(11), torch.tensor([-1])])
    proc = hdlm(cmap, loss_weighting="elbo")
    mdlm = MaskedProcess(VocabLayout(vocab_size=12, mask_id=11), MDLMProcessConfig(eps=0.0))
    logits = torch.randn(1, 2, proc.layout.rows)
    x = torch.tensor([[5, 5]])
    out = proc.loss(logits, x, torch.tensor([[11, 12 + 5]]), torch.tensor([t]))
    s = proc.schedule(torch.tensor(t))
    tau = s["m"].float().reshape(1)
    ref = mdlm.loss(logits[:, :1], x[:, :1], torch.tensor([[11]]), tau).elbo
    assert math.isclose(out.elbo[0, 0].item(), s["dm"].item() * ref.item(), rel_tol=1e-5)
    assert abs(out.elbo[0, 1].item()) < 1e-5


@pytest.mark.parametrize(("gamma", "xi"), [(1.0, 1.0), (2.0, 1.0), (1.0, 0.9), (2.0, 0.9)])
def test_elbo_integrates_to_nll_for_any_clustering(gamma: float, xi: float) -> None:
    """§3.6 / §12.7: int_0^1 E_z[elbo(t)] dt = -log x̂_x for a fixed denoiser (adaptive quadrature on [0, 1]),
    also with perturbed cluster jumps (xi = 0.9, issue 13.5): a fixed x̂ makes the model's reverse chain the
    exact reverse of the forward chain with data ~ x̂, so the bound is tight for every xi."""
    torch.manual_seed(5)
    proc = hdlm(gamma=gamma, xi=xi, loss_weighting="elbo")
    logits = torch.randn(1, 1, proc.layout.rows)
    nll = -log_x_hat(proc, logits)[0, 0, 7].item()
    # t = 1 - u^2 removes the log(1 - t) singularity of m'_t at t = 1 (gamma = 1)
    total, _ = integrate.quad(
        lambda u: 2 * u * _expected_elbo(proc, logits, 7, 1 - u * u), 0, 1, epsabs=1e-6, epsrel=1e-6
    )
    assert math.isclose(total, nll, rel_tol=2e-5)


@pytest.mark.parametrize("gamma", [0.5, 1.0])
def test_truncated_bound_below_one_gamma_is_flagged(gamma: float) -> None:
    """Issue 13.4: `nll_bound` integrates E_z[elbo] over [t_eps, 1 - t_eps]. A fine quadrature of that range
    against the exact integral (-log x̂_x for a fixed denoiser) shows the truncation costs < 0.2% at gamma = 1
    but > 1% at gamma = 0.5 (it scales as t_eps^gamma), so only gamma < 1 carries the protocol note."""
    torch.manual_seed(5)
    proc = hdlm(gamma=gamma, loss_weighting="elbo")
    logits = torch.randn(1, 1, proc.layout.rows)
    nll = -log_x_hat(proc, logits)[0, 0, 7].item()
    eps = proc.t_eps
    # t = 1 - u^2: the (1-t)^(gamma-1) and log(1-t) singularities become bounded in u
    truncated, _ = integrate.quad(
        lambda u: 2 * u * _expected_elbo(proc, logits, 7, 1 - u * u),
        math.sqrt(eps), math.sqrt(1 - eps), epsabs=1e-6, epsrel=1e-6, limit=200,
    )  # fmt: skip
    gap = (nll - truncated) / nll
    assert gap > 0
    if gamma < 1:
        assert gap > 0.01
        note = proc.bound_note()
        assert note is not None and "NOT an upper bound" in note
    else:
        assert gap < 2e-3
        assert proc.bound_note() is None


def test_strict_elbo_with_perturbed_clusters_matches_formula() -> None:
    """Issue 13.5: xi < 1, dense reference of the strict ELBO at a [MASK] and at every cluster state:
    mask:    (m'/m) KL(K(.|x) || K_theta),  K_theta(c) = sum_v x̂_v K(c|v)
    cluster: (-alpha'/c) (-log(x̂_x K(c|x) / K_theta(c)))."""
    torch.manual_seed(8)
    xi = 0.7
    proc = hdlm(xi=xi, loss_weighting="elbo")
    V, C = 12, 3
    logits = torch.randn(1, 1, proc.layout.rows)
    x_hat = log_x_hat(proc, logits)[0, 0, :V].exp()
    K = torch.full((V, C), (1 - xi) / (C - 1), dtype=torch.float64)  # K(c | v)
    K[torch.arange(V), CMAP.clamp(min=0)] = xi
    K[11] = 0.0  # [MASK] carries no mass in x̂ anyway
    k_theta = x_hat @ K
    x, t = 4, 0.4
    s = proc.schedule(torch.tensor(t, dtype=torch.float64))
    w_mask, w_clus = (s["dm"] / s["m"]).item(), (s["dalpha"] / s["c"]).item()
    states = torch.tensor([[11, 12, 13, 14]])
    out = proc.loss(logits.expand(1, 4, -1), torch.full((1, 4), x), states, torch.tensor([t]))
    kl = float((K[x] * (K[x] / k_theta).log()).sum())
    expected = [w_mask * kl] + [
        w_clus * -math.log(x_hat[x].item() * K[x, c].item() / k_theta[c].item()) for c in range(C)
    ]
    torch.testing.assert_close(
        out.elbo[0].double(), torch.tensor(expected, dtype=torch.float64), rtol=1e-5, atol=1e-6
    )


@pytest.mark.parametrize("xi", [1.0, 0.8])
def test_hdlm_step_matches_exact_posterior_for_a_spread_denoiser(xi: float) -> None:
    """Issue 13.5: with data x ~ x̂ (a non-degenerate denoiser), z_s ~ q_s(.|x) and z_t from z_s by the forward
    chain, the pair (z_t, z_s) has the exact joint q(z_s) T(z_t | z_s); one reverse step under x̂ from z_t must
    reproduce it. A perfect denoiser cannot see a wrong mixture inside a cluster; this joint can.

    gamma = 1 makes the chain homogeneous in tau = -log(1-t): with r = (1-t)/(1-s), a token stays w.p. r, moves to
    cluster c w.p. r log(1/r) K(c|v), else to [MASK]; a cluster stays w.p. r, else [MASK]."""
    g = torch.Generator().manual_seed(9)
    proc = hdlm(xi=xi)
    n, V, C, m = 200_000, 12, 3, 11
    logits = torch.zeros(proc.layout.rows)
    logits[:11] = torch.tensor([0.5, -1.0, 1.5, 0.0, 2.0, -0.5, 1.0, 0.3, -2.0, 0.8, 1.2])
    x_hat = log_x_hat(proc, logits[None, None])[0, 0].exp()[:11]
    x = torch.multinomial(x_hat.float(), n, replacement=True, generator=g)[None]
    t, s = 0.7, 0.35
    r = (1 - t) / (1 - s)
    S = V + C  # states: tokens 0..10, [MASK] 11, clusters 12..14
    K = torch.full((11, C), (1 - xi) / (C - 1), dtype=torch.float64)
    K[torch.arange(11), CMAP[:11]] = xi
    T = torch.zeros(S, S, dtype=torch.float64)  # T[z_s, z_t]
    T[torch.arange(11), torch.arange(11)] = r
    T[:11, V:] = r * math.log(1 / r) * K
    T[:11, m] = 1 - r - r * math.log(1 / r)
    T[V:, V:] = torch.eye(C, dtype=torch.float64) * r
    T[V:, m] = 1 - r
    T[m, m] = 1.0
    q_s = (x_hat[:, None] * proc.marginals(torch.arange(11)[None], torch.full((1,), s))[0][:, :S]).sum(0)
    joint = q_s[:, None] * T  # (z_s, z_t)
    zt = proc.sample_zt(x, torch.tensor([t]), g)
    zs = proc.reverse_step(logits.expand(1, n, -1), zt, t, s, g)
    freq = torch.bincount(zs[0] * S + zt[0], minlength=S * S).double().reshape(S, S) / n
    assert (freq - joint).abs().max() < 0.004


def test_auxiliary_head_loss() -> None:
    proc = hdlm(auxiliary_loss_weight=0.5)
    assert proc.uses_cluster_logits
    logits, cl = torch.randn(1, 2, proc.layout.rows), torch.randn(1, 2, proc.layout.rows)
    x, zt, t = torch.tensor([[0, 4]]), torch.tensor([[11, 4]]), torch.tensor([0.5])
    out = proc.loss(logits, x, zt, t, cl)
    aux = -torch.log_softmax(cl[0, 0, 12:15], -1)[0]
    assert math.isclose(out.metrics["aux_loss"][0, 0].item(), aux.item(), rel_tol=1e-6)
    assert out.metrics["aux_loss"][0, 1] == 0
    with pytest.raises(ValueError, match="cluster logits"):
        proc.loss(logits, x, zt, t)


# ----- reverse step -----


def test_step_probabilities_match_move_rates() -> None:
    """Leaving [MASK] has probability (m_t - m_s)/m_t exactly; leaving a cluster matches the original's
    (alpha_s - alpha_t)/c_t up to a relative O(dt) (it ignored the x -> c -> m path inside a step)."""
    proc = hdlm()
    t = 0.6
    for dt in (1e-2, 1e-3):
        s = t - dt
        p = proc.step_probabilities(t, s)
        st, ss = (proc.schedule(torch.tensor(v, dtype=torch.float64)) for v in (t, s))
        assert math.isclose(1 - p["m_stay"], ((st["m"] - ss["m"]) / st["m"]).item(), rel_tol=1e-9)
        approx = ((ss["alpha"] - st["alpha"]) / st["c"]).item()
        assert abs((1 - p["c_stay"]) - approx) < 2 * dt * approx
    final = proc.step_probabilities(0.3, 0.0)
    assert final["m_stay"] == 0 and final["m_to_cluster"] == 0 and final["c_stay"] == 0


@pytest.mark.parametrize("xi", [1.0, 0.8])
def test_bug12_hdlm_step_is_exact_posterior(xi: float) -> None:
    """z_t ~ q_t(.|x), one step with x̂ = delta_x gives z_s ~ q_s(.|x): the step is the exact posterior (the
    original's "gidd" parameterisation was not a distribution, and its default moved one level per step)."""
    g = torch.Generator().manual_seed(6)
    proc = hdlm(xi=xi)
    n = 200_000
    x = torch.full((1, n), 4)
    t, s = 0.7, 0.35
    zt = proc.sample_zt(x, torch.tensor([t]), g)
    logits = torch.full((1, n, proc.layout.rows), -30.0)
    logits[..., 4] = 30.0
    zs = proc.reverse_step(logits, zt, t, s, g)
    q = proc.marginals(torch.tensor([[4]]), torch.tensor([s]))[0, 0]
    freq = torch.bincount(zs[0], minlength=proc.layout.rows).double() / n
    assert (freq - q).abs().max() < 0.005
    assert torch.equal(zs[zt == 4], zt[zt == 4])  # real tokens never change


def test_bug13_hdlm_sampling_options_act_on_probabilities() -> None:
    """bug 13: sampling options act on probabilities (the original's min_p path was dead code)."""
    g = torch.Generator().manual_seed(7)
    proc = hdlm()
    logits = torch.randn(64, 10, proc.layout.rows, generator=g) * 3
    zt = torch.full((64, 10), 11)
    zt[:, :3] = 12 + torch.tensor([0, 1, 2])
    zt[:, 3] = 6
    zs = proc.reverse_step(logits, zt, 0.2, 0.0, g, SamplingOptions(min_p=0.3))
    assert ((zs < 11) & (zs != 11)).all() and (zs[:, 3] == 6).all()
    own = proc.cluster_of(zs[:, :3])
    assert torch.equal(own, torch.tensor([0, 1, 2]).expand(64, 3))  # tokens stay inside their cluster
    x_hat = torch.softmax(logits[:, 4:].double().masked_fill(~proc.layout.text_mask(), float("-inf")), -1)
    chosen = x_hat.gather(-1, zs[:, 4:, None]).squeeze(-1)
    assert (chosen >= 0.3 * x_hat.amax(-1) - 1e-12).all()
    greedy = proc.reverse_step(logits, zt, 0.2, 0.0, g, SamplingOptions(temperature=0))
    assert torch.equal(greedy[:, 4:], x_hat.argmax(-1))


def test_validation_errors() -> None:
    with pytest.raises(ValueError, match="2 clusters"):
        hdlm(torch.tensor([0] * 11 + [-1]), xi=0.9)
    with pytest.raises(ValueError, match="no cluster"):
        hdlm(torch.tensor([0, -1, 0, 1, 1, 1, 2, 2, 2, 0, 1, -1]))
    layout = VocabLayout(vocab_size=12, mask_id=11, num_clusters=3)
    with pytest.raises(ValueError, match="shape"):
        HierarchicalProcess(layout, HDLMProcessConfig(), CMAP[:5])
