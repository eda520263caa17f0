"""Samplers over every discrete family: valid tokens only, caching, conditioning, self-correction, configs."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError

from mmdlm.config.sample import SampleConfig
from mmdlm.families import get_family
from mmdlm.sampling import AncestralSampler, self_correct, time_grid

from .conftest import build

FAMILIES = ["mdlm", "gidd", "hdlm"]


def test_bug12_time_grid_includes_top_point_and_ends_at_zero() -> None:
    grid = time_grid(4, 1e-4)
    assert grid[0] == 1 - 1e-4 and grid[-1] == 0.0 and len(grid) == 5
    assert all(a > b for a, b in zip(grid, grid[1:], strict=False))
    with pytest.raises(ValueError, match="steps"):
        time_grid(0, 1e-4)


@pytest.mark.parametrize("family", FAMILIES)
def test_samples_are_text_only(family: str, clusters_dir: str) -> None:
    built = build(family, clusters_dir, p_uniform=0.2) if family == "gidd" else build(family, clusters_dir)
    out = get_family(family).generate(built, SampleConfig(num_samples=6, seq_len=24, steps=16, seed=1))
    assert out.tokens.shape == (6, 24) and out.tokens.dtype == torch.long
    assert ((out.tokens > 0) & (out.tokens < 59)).all()  # no [PAD], [MASK], cluster or padding ids
    assert out.nfe == 16 and out.steps == 16 and out.elapsed_s > 0 and out.tokens_per_s > 0
    again = get_family(family).generate(built, SampleConfig(num_samples=6, seq_len=24, steps=16, seed=1))
    assert torch.equal(out.tokens, again.tokens)  # seeded
    assert not built.model.training


@pytest.mark.parametrize("family", ["mdlm", "hdlm"])
def test_cached_equals_uncached_for_time_independent_denoiser(family: str, clusters_dir: str) -> None:
    built = build(family, clusters_dir, time_conditioning=False)
    fam = get_family(family)
    base = SampleConfig(num_samples=1, seq_len=32, steps=200, seed=3)
    plain = fam.generate(built, base)
    cached = fam.generate(built, base.model_copy(update={"cached": True}))
    assert torch.equal(plain.tokens, cached.tokens)
    assert plain.nfe == 200 and cached.nfe < 0.5 * plain.nfe


def test_clean_up_replaces_non_text_ids_outside_fixed_positions(clusters_dir: str) -> None:
    built = build("hdlm", clusters_dir)
    sampler = AncestralSampler(built.model, built.extras["process"], steps=1)
    z = torch.randint(3, 59, (2, 10), generator=torch.Generator().manual_seed(0))
    z[0, 2], z[1, 5], z[1, 7] = 59, 61, 0  # [MASK], a cluster id, [PAD]
    fixed = torch.zeros(2, 10, dtype=torch.bool)
    fixed[1, 7] = True
    cleaned, calls = sampler.clean_up(z, fixed)
    assert calls == 1 and cleaned[1, 7] == 0
    assert torch.equal(cleaned[0, :2], z[0, :2]) and 0 < cleaned[0, 2] < 59 and 0 < cleaned[1, 5] < 59
    again, calls_again = sampler.clean_up(cleaned, fixed)
    assert calls_again == 0 and torch.equal(again, cleaned)  # nothing left to clean: no network call


def test_cached_sampler_skips_only_unchanged_inputs(clusters_dir: str) -> None:
    built = build("mdlm", clusters_dir, time_conditioning=False)
    calls: list[torch.Tensor] = []
    model = built.model

    def spy(z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        calls.append(z.clone())
        return model(z, t)

    sampler = AncestralSampler(spy, built.extras["process"], steps=100, cached=True)  # type: ignore[arg-type]
    z0 = torch.full((2, 16), 59)
    tokens, nfe = sampler(z0, None, torch.Generator().manual_seed(0))
    assert nfe == len(calls)
    assert all(not torch.equal(a, b) for a, b in zip(calls, calls[1:], strict=False))


@pytest.mark.parametrize("family", FAMILIES)
def test_prefix_and_infill_positions_are_never_changed(family: str, clusters_dir: str) -> None:
    built = build(family, clusters_dir, p_uniform=0.2) if family == "gidd" else build(family, clusters_dir)
    fam = get_family(family)
    prompt = torch.tensor([5, 6, 7])
    template = torch.full((20,), -1)
    template[10:13] = torch.tensor([40, 41, 42])
    template[19] = 2
    out = fam.generate(
        built, SampleConfig(num_samples=4, steps=12, seed=2), prompt_ids=prompt, infill=template
    )
    assert out.tokens.shape == (4, 20)
    assert (out.tokens[:, :3] == prompt).all()
    assert (out.tokens[:, 10:13] == torch.tensor([40, 41, 42])).all() and (out.tokens[:, 19] == 2).all()
    free = torch.ones(20, dtype=torch.bool)
    free[:3] = free[10:13] = free[19] = False
    assert ((out.tokens[:, free] > 0) & (out.tokens[:, free] < 59)).all()
    per_row = torch.tensor([[8, 9], [10, 11], [12, 13], [14, 15]])
    rows = fam.generate(built, SampleConfig(num_samples=4, seq_len=10, steps=4), prompt_ids=per_row)
    assert torch.equal(rows.tokens[:, :2], per_row)


def test_conditioning_errors_name_the_argument(clusters_dir: str) -> None:
    built = build("mdlm", clusters_dir)
    fam = get_family("mdlm")
    cfg = SampleConfig(num_samples=2, seq_len=8, steps=2)
    with pytest.raises(ValueError, match="prompt_ids.*shorter than seq_len"):
        fam.generate(built, cfg, prompt_ids=torch.arange(3, 12))
    with pytest.raises(ValueError, match="prompt_ids holds ids outside"):
        fam.generate(built, cfg, prompt_ids=torch.tensor([59]))
    with pytest.raises(ValueError, match="infill has length"):
        fam.generate(built, cfg, infill=torch.full((5,), -1))
    with pytest.raises(ValueError, match="num_samples=2"):
        fam.generate(built, cfg, prompt_ids=torch.ones(3, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="seq_len=64 exceeds"):
        fam.generate(built, cfg.model_copy(update={"seq_len": 64}))


def test_sample_config_validation_names_fields() -> None:
    for field, value in [
        ("steps", 0),
        ("num_samples", 0),
        ("temperature", -1.0),
        ("top_p", 0.0),
        ("top_p", 1.5),
        ("min_p", 1.0),
        ("seq_len", 0),
        ("self_correction_steps", -1),
        ("batch_size", 0),
    ]:
        with pytest.raises(ValidationError, match=field):
            SampleConfig(**{field: value})
    with pytest.raises(ValidationError, match="extra"):
        SampleConfig(stpes=3)


def test_sample_config_round_trip(tmp_path) -> None:
    cfg = SampleConfig(steps=50, temperature=0.7, top_p=0.9, cached=True, seed=5)
    cfg.to_file(tmp_path / "s.yaml")
    assert SampleConfig.from_file(tmp_path / "s.yaml") == cfg


def test_batching(clusters_dir: str) -> None:
    built = build("mdlm", clusters_dir)
    out = get_family("mdlm").generate(built, SampleConfig(num_samples=5, seq_len=12, steps=6, batch_size=2))
    assert out.tokens.shape == (5, 12) and out.nfe == 18  # three batches of 6 calls


def test_greedy_single_step_is_argmax_of_all_mask_input(clusters_dir: str) -> None:
    built = build("mdlm", clusters_dir, time_conditioning=False)
    fam = get_family("mdlm")
    cfg = SampleConfig(num_samples=3, seq_len=12, steps=1, temperature=0.0)
    a, b = (
        fam.generate(built, cfg.model_copy(update={"seed": 1})),
        fam.generate(built, cfg.model_copy(update={"seed": 2})),
    )
    logits = built.model(torch.full((1, 12), 59), torch.zeros(1))
    text = built.extras["process"].text_mask(torch.device("cpu"))
    expected = logits.masked_fill(~text, float("-inf")).argmax(-1).expand(3, 12)
    assert torch.equal(a.tokens, expected) and torch.equal(b.tokens, expected)


@pytest.mark.parametrize("family", ["gidd", "mdlm"])
def test_self_correction_keeps_fixed_positions_and_counts_calls(family: str, clusters_dir: str) -> None:
    built = build(family, clusters_dir)
    process = built.extras["process"]
    g = torch.Generator().manual_seed(0)
    z = torch.randint(3, 59, (3, 16), generator=g)
    fixed = torch.zeros(3, 16, dtype=torch.bool)
    fixed[:, :4] = True
    result = self_correct(built.model, process, z, steps=40, fixed=fixed, generator=g, patience=5)
    assert torch.equal(result.tokens[:, :4], z[:, :4])
    assert ((result.tokens > 0) & (result.tokens < 59)).all()
    assert 1 <= result.nfe <= 40
    assert (result.final_agreement >= result.initial_agreement).all()
    assert (result.changes > 0).any()
    changed = (result.tokens != z).sum(-1)
    assert torch.equal(changed <= result.changes, torch.ones(3, dtype=torch.bool))


def test_self_correction_through_generate(clusters_dir: str) -> None:
    built = build("gidd", clusters_dir)
    fam = get_family("gidd")
    base = SampleConfig(num_samples=2, seq_len=16, steps=8, seed=4)
    plain = fam.generate(built, base)
    corrected = fam.generate(built, base.model_copy(update={"self_correction_steps": 10}))
    assert corrected.nfe > plain.nfe and corrected.nfe <= plain.nfe + 10


def test_bug6_self_correction_accepts_hdlm(clusters_dir: str) -> None:
    """The original self-correction script crashed on HDLM's (logits, cluster_logits) tuple output."""
    built = build("hdlm", clusters_dir, auxiliary_loss_weight=0.5)
    z = torch.randint(3, 59, (2, 12), generator=torch.Generator().manual_seed(1))
    result = self_correct(built.model, built.extras["process"], z, steps=5, generator=torch.Generator())
    assert result.tokens.shape == (2, 12) and ((result.tokens > 0) & (result.tokens < 59)).all()
