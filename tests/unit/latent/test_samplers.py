"""Latent-family samplers (spec §3.4 [rec], B18): every position revealed, x0_hat returned, CFG, joint."""

from __future__ import annotations

import math

import pytest
import torch

from mmdlm.config.latent import CrossDiTSpec, GaussianConfig, LatentDiTSpec, LatentSampleConfig
from mmdlm.diffusion.base import VocabLayout
from mmdlm.diffusion.gaussian import GaussianDiffusion
from mmdlm.diffusion.masked import MaskedProcess
from mmdlm.families import get_family
from mmdlm.sampling.latent import _guided_text, _reveal_topk, sample_joint, sample_l2t, sample_t2l

from .conftest import VOCAB, D, L, dit_config, make_batch, mmdit_spec

PROCESS = MaskedProcess(VocabLayout.from_vocab(VOCAB))


def random_text_fn(calls: list):
    def fn(zt, t, mask, latent, drop):
        calls.append(zt.shape[0])
        g = torch.Generator().manual_seed(len(calls))
        return torch.randn(*zt.shape, PROCESS.layout.rows, generator=g)

    return fn


@pytest.mark.parametrize("sampler", ["ancestral", "topk"])
@pytest.mark.parametrize("steps", [1, 3, L])
def test_l2t_reveals_every_position_and_never_emits_mask_or_pad(sampler: str, steps: int) -> None:
    calls: list = []
    lengths = torch.tensor([L, 5, 1, 9])
    tokens, nfe = sample_l2t(
        random_text_fn(calls), PROCESS, lengths, L, torch.randn(4, D), steps=steps, sampler=sampler
    )
    real = torch.arange(L)[None] < lengths[:, None]
    assert nfe == steps == len(calls)
    assert not (tokens[real] == VOCAB.mask_id).any() and not (tokens[real] == VOCAB.pad_id).any()
    assert (tokens[~real] == VOCAB.pad_id).all()
    assert (tokens < VOCAB.vocab_size).all()


def test_topk_schedule_reveals_all_128_of_128() -> None:
    """Spec §13: the as-built cosine schedule revealed 127 of 128 (L = 128, K = 20); ours reaches 128."""
    layout = VocabLayout(vocab_size=40, mask_id=1, pad_id=0)
    process = MaskedProcess(layout)
    zt = torch.full((1, 128), 1)
    mask = torch.ones(1, 128, dtype=torch.bool)
    from mmdlm.diffusion.base import SamplingOptions

    counts = []
    for i in range(20):
        logits = torch.randn(1, 128, layout.rows)
        before = int((zt == 1).sum())
        zt = _reveal_topk(
            process, logits, zt, mask, i, 20, SamplingOptions(), torch.Generator().manual_seed(i)
        )
        counts.append(before - int((zt == 1).sum()))
    assert sum(counts) == 128 and all(c >= 0 for c in counts)
    cumulative = [math.ceil(128 * (1 - math.cos(math.pi / 2 * (i + 1) / 20))) for i in range(19)]
    assert [sum(counts[: i + 1]) for i in range(19)] == cumulative


def test_l2t_guidance_combines_log_probs() -> None:
    seen = []

    def fn(zt, t, mask, latent, drop):
        seen.append(drop)
        logits = torch.zeros(*zt.shape, PROCESS.layout.rows)
        logits[..., 5] = torch.where(drop, 0.0, 2.0)[:, None]  # the condition favours token 5
        return logits

    sample_l2t(fn, PROCESS, torch.tensor([L, L]), L, torch.randn(2, D), steps=2, guidance_scale=3.0)
    assert len(seen) == 2 and seen[0].tolist() == [False, False, True, True]  # one batched call per step
    # unconditional generation uses the null condition only
    seen.clear()
    sample_l2t(fn, PROCESS, torch.tensor([L]), L, None, steps=1)
    assert seen[0].tolist() == [True]


def test_t2l_ddim_returns_x0_with_an_oracle() -> None:
    """B18: with a network that predicts the true eps for x0, DDIM returns x0 (not eps_hat)."""
    gaussian = GaussianDiffusion()
    x0 = torch.randn(3, 1, D)

    def oracle(tokens, mask, z, t, drop):
        abar = gaussian.alpha_bar(t).float()[:, None, None]
        return (z - abar.sqrt() * x0) / (1 - abar).sqrt()

    for sampler, eta in (("ddim", 0.0), ("ddim", 0.8), ("ddpm", 0.0)):
        out, nfe = sample_t2l(
            oracle,
            gaussian,
            torch.zeros(3, L, dtype=torch.long),
            torch.ones(3, L, dtype=torch.bool),
            (3, 1, D),
            steps=25,
            sampler=sampler,
            eta=eta,
            generator=torch.Generator().manual_seed(0),
        )
        assert nfe == 25
        torch.testing.assert_close(out, x0, atol=1e-3, rtol=0)


def test_t2l_guidance_formula() -> None:
    gaussian = GaussianDiffusion(GaussianConfig(parameterization="x0"))
    cond, uncond = torch.full((1, 1, D), 1.0), torch.full((1, 1, D), -1.0)

    def fn(tokens, mask, z, t, drop):
        if drop is None:
            return cond.expand(z.shape[0], -1, -1)
        return torch.where(drop[:, None, None], uncond, cond)

    out, _ = sample_t2l(
        fn,
        gaussian,
        torch.zeros(1, L, dtype=torch.long),
        torch.ones(1, L, dtype=torch.bool),
        (1, 1, D),
        steps=3,
        guidance_scale=2.0,
    )
    torch.testing.assert_close(out, torch.full((1, 1, D), 3.0))  # -1 + 2 (1 - -1)


def test_joint_one_call_per_step() -> None:
    gaussian = GaussianDiffusion()
    calls = []

    def fn(zt, t, mask, z, t_lat):
        calls.append((float(t[0]), float(t_lat[0])))
        return torch.randn(*zt.shape, PROCESS.layout.rows), torch.zeros_like(z)

    tokens, x0, nfe = sample_joint(fn, PROCESS, gaussian, torch.tensor([L, 4]), L, (2, 1, D), steps=6)
    assert nfe == 6 == len(calls)
    assert calls[0][0] > 0.99 and calls[0][1] == 1.0 and calls[-1][0] < calls[0][0]
    assert not (tokens == VOCAB.mask_id).any() and x0.shape == (2, 1, D)


def _trained_like(family: str):
    torch.manual_seed(0)
    if family == "mmdit":
        built = get_family("mmdit").build(mmdit_spec(), VOCAB)
    else:
        spec = (LatentDiTSpec if family == "latent-dit" else CrossDiTSpec)(model=dit_config())
        built = get_family(family).build(spec, VOCAB)
    with torch.no_grad():  # move off the zero init so outputs depend on the inputs
        for p in built.model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    built.model.eval()
    return built


@pytest.mark.parametrize("family", ["mmdit", "latent-dit", "cross-dit"])
def test_family_generate_l2t_deterministic(family: str) -> None:
    built = _trained_like(family)
    fam = get_family(family)
    z = make_batch(3)["latent"]
    cfg = LatentSampleConfig(mode="l2t", text_steps=4, guidance_scale=1.5, seed=7)
    a, b = fam.generate(built, cfg, latents=z), fam.generate(built, cfg, latents=z)
    assert torch.equal(a.tokens, b.tokens) and a.tokens.shape == (3, L) and a.mode == "l2t"
    assert not (a.tokens == VOCAB.mask_id).any()
    assert a.protocol["family"] == family and a.protocol["sample"]["text_steps"] == 4
    unconditional = fam.generate(built, cfg.model_copy(update={"num_samples": 2}))
    assert unconditional.tokens.shape == (2, L)


def test_mmdit_generate_t2l_and_joint() -> None:
    built = _trained_like("mmdit")
    fam = get_family("mmdit")
    batch = make_batch(3)
    out = fam.generate(
        built,
        LatentSampleConfig(mode="t2l", latent_steps=5, guidance_scale=2.0, normalize_latent=True),
        text_ids=batch["input_ids"],
        text_mask=batch["attention_mask"],
    )
    assert out.latents.shape == (3, D) and out.nfe == 5
    torch.testing.assert_close(out.latents.norm(dim=-1), torch.ones(3))
    joint = fam.generate(built, LatentSampleConfig(mode="joint", num_samples=2, text_steps=4))
    assert joint.tokens.shape == (2, L) and joint.latents.shape == (2, D) and joint.nfe == 4
    with pytest.raises(ValueError, match="text_ids"):
        fam.generate(built, LatentSampleConfig(mode="t2l"))
    with pytest.raises(ValueError, match="only generates text"):
        get_family("latent-dit").generate(_trained_like("latent-dit"), LatentSampleConfig(mode="t2l"))


def test_lengths_follow_the_training_histogram() -> None:
    built = _trained_like("mmdit")
    built.model.length_counts.zero_()
    built.model.length_counts[5] = 1.0
    out = get_family("mmdit").generate(built, LatentSampleConfig(mode="joint", num_samples=4, text_steps=2))
    assert (out.tokens[:, 5:] == VOCAB.pad_id).all() and not (out.tokens[:, :5] == VOCAB.pad_id).any()


def test_t2l_latents_stay_in_the_data_range_by_default() -> None:
    """Issue 13.1: a barely trained epsilon-MMDiT (cosine, abar_999 ~ 2.4e-10) amplifies the error of its noise
    estimate by 1/sqrt(abar) at the first DDIM step. The default clip keeps t2l latents within 5 standard
    deviations of the normalised data; unclipped they explode. The protocol records the clip."""
    built = _trained_like("mmdit")
    fam = get_family("mmdit")
    batch = make_batch(4)
    kwargs = {"text_ids": batch["input_ids"], "text_mask": batch["attention_mask"]}
    cfg = LatentSampleConfig(mode="t2l", latent_steps=10)
    assert cfg.clip_x0 == 5.0
    out = fam.generate(built, cfg, **kwargs)
    normed = built.model.latent_norm.normalize(out.latents)
    assert normed.abs().max() <= 5.0 + 1e-4 and bool(torch.isfinite(normed).all())
    assert out.protocol["sample"]["clip_x0"] == 5.0
    unclipped = fam.generate(built, cfg.model_copy(update={"clip_x0": None}), **kwargs)
    assert built.model.latent_norm.normalize(unclipped.latents).abs().max() > 100.0


def test_l2t_guided_log_probs_are_the_cfg_combination() -> None:
    """Issue 13.5: the guided scores are exactly lu + w (lc - lu) of the log-softmaxed branches."""
    g = torch.Generator().manual_seed(3)
    cond_logits = torch.randn(2, L, PROCESS.layout.rows, generator=g)
    uncond_logits = torch.randn(2, L, PROCESS.layout.rows, generator=g)

    def fn(zt, t, mask, latent, drop):
        return torch.where(drop[:, None, None], uncond_logits.repeat(2, 1, 1), cond_logits.repeat(2, 1, 1))

    zt = torch.full((2, L), VOCAB.mask_id)
    mask = torch.ones(2, L, dtype=torch.bool)
    w = 2.5
    guided = _guided_text(fn, zt, torch.full((2,), 0.5), mask, torch.randn(2, D), w)
    lc, lu = torch.log_softmax(cond_logits, -1), torch.log_softmax(uncond_logits, -1)
    torch.testing.assert_close(guided, lu + w * (lc - lu))


def test_the_condition_changes_l2t_t2l_and_joint_outputs() -> None:
    """Issue 13.5: same seed, different condition -> different output (the condition reaches the sampler)."""
    built = _trained_like("mmdit")
    fam = get_family("mmdit")
    with torch.no_grad():  # make the latent pathway matter enough to flip tokens
        for name, p in built.model.named_parameters():
            if "latent" in name:
                p.mul_(20.0)
    a, b = make_batch(6, seed=1), make_batch(6, seed=2)
    l2t = LatentSampleConfig(mode="l2t", text_steps=4, seed=5)
    assert not torch.equal(
        fam.generate(built, l2t, latents=a["latent"]).tokens,
        fam.generate(built, l2t, latents=b["latent"]).tokens,
    )
    t2l = LatentSampleConfig(mode="t2l", latent_steps=4, seed=5)
    za = fam.generate(built, t2l, text_ids=a["input_ids"], text_mask=a["attention_mask"]).latents
    zb = fam.generate(built, t2l, text_ids=b["input_ids"], text_mask=b["attention_mask"]).latents
    assert (za - zb).abs().max() > 1e-3
    # joint: each stream is the other's condition at every step; a latent branch that reads the text must
    # give other latents when the text branch prefers another token (same seed, same latent noise)
    gaussian = GaussianDiffusion(GaussianConfig(parameterization="x0"))

    def joint_fn(token: int):
        def fn(zt, t, mask, z, t_lat):
            logits = torch.zeros(*zt.shape, PROCESS.layout.rows)
            logits[..., token] = 30.0
            return logits, (zt == 5).float().mean(-1)[:, None, None].expand_as(z).clone()

        return fn

    out = {
        tok: sample_joint(
            joint_fn(tok),
            PROCESS,
            gaussian,
            torch.tensor([L, L]),
            L,
            (2, 1, D),
            steps=4,
            generator=torch.Generator().manual_seed(0),
        )
        for tok in (5, 6)
    }
    assert (out[5][0] == 5).all() and (out[6][0] == 6).all()
    # x0_hat of the last call = fraction of 5s in the text revealed so far (> 0 only if the text is read)
    assert out[5][1].min() > 0.5 and out[6][1].abs().max() == 0
