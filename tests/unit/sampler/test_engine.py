"""The batched sampling drivers: a request's samples depend on its seed only, never on what else shares
its network batch, and equal the library's `pipeline.generate` / family sampler for that seed."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from mmdlm.config.sample import SampleConfig
from mmdlm.families import get_family
from services.sampler.cache import LoadedModel
from services.sampler.engine import batch_key, latent_config, render_state, run_batch
from services.sampler.resolve import resolve
from services.sampler.schemas import GenerateRequest
from services.sampler.settings import SamplerSettings

LIMITS = SamplerSettings(_env_file=None)  # type: ignore[call-arg]
TOKEN_FAMILIES = ("mdlm", "gidd", "hdlm", "ar")


def job_for(model: LoadedModel, **fields: object):  # noqa: ANN201
    return resolve(model, GenerateRequest(model=model.artifact_id, **fields), LIMITS)  # type: ignore[arg-type]


@pytest.mark.parametrize("family", TOKEN_FAMILIES)
def test_batched_requests_equal_solo_runs_and_the_library(
    family: str, load_model: Callable[[str], LoadedModel]
) -> None:
    model = load_model(family)
    settings = {"steps": 6, "temperature": 1.0, "top_p": 0.9}
    jobs = [
        job_for(model, num_samples=2, seed=11, prompt="And the king", seq_len=20, **settings),
        job_for(model, num_samples=3, seed=12, prompt="In the garden", seq_len=20, **settings),
        job_for(model, num_samples=1, seed=11, prompt="And the king", seq_len=20, **settings),
    ]
    if family == "ar":  # AR batches only prompts of one length
        jobs = [j for j in jobs if j.prompt_ids.shape[-1] == jobs[0].prompt_ids.shape[-1]]
    assert len({batch_key("m", family, j) for j in jobs}) == 1
    batched = run_batch(model.pipe, jobs)
    for job, out in zip(jobs, batched, strict=True):
        solo = run_batch(model.pipe, [job])[0]
        assert torch.equal(out.tokens, solo.tokens)
        assert out.batch_requests == len(jobs) and solo.batch_requests == 1
        config = SampleConfig(num_samples=job.rows, seq_len=20, steps=6, top_p=0.9, seed=job.seed)
        library = model.pipe.generate(config, prompt_ids=job.prompt_ids)
        assert torch.equal(out.tokens, library.ids), (
            f"{family}: batched sample differs from pipeline.generate"
        )
        assert out.nfe == library.nfe
        assert torch.equal(out.tokens[:, : job.prompt_ids.shape[-1]], job.prompt_ids.expand(job.rows, -1))


def test_cached_sampler_reuses_calls_per_request(load_model: Callable[[str], LoadedModel]) -> None:
    model = load_model("mdlm")
    jobs = [job_for(model, num_samples=1, seed=s, steps=40, sampler="cached", seq_len=12) for s in (1, 2)]
    batched = run_batch(model.pipe, jobs)
    for job, out in zip(jobs, batched, strict=True):
        library = model.pipe.generate(
            SampleConfig(num_samples=1, seq_len=12, steps=40, cached=True, seed=job.seed)
        )
        assert torch.equal(out.tokens, library.ids)
        assert out.nfe == library.nfe < 40  # 40 steps over 12 positions: most steps reveal nothing


def test_infill_keeps_given_positions(load_model: Callable[[str], LoadedModel]) -> None:
    model = load_model("mdlm")
    job = job_for(model, infill=["The castle", 4, "was built by", 3, "."], steps=8, seed=3, num_samples=2)
    assert job.mode == "infill" and job.seq_len == job.infill.shape[0]
    out = run_batch(model.pipe, [job])[0]
    known = job.infill >= 0
    assert torch.equal(out.tokens[:, known], job.infill[known].expand(2, -1))
    assert job.given == int(known.sum()) and (job.infill == -1).sum() == 7


@pytest.mark.parametrize(
    ("family", "mode"),
    [("mmdit", "joint"), ("mmdit", "t2l"), ("mmdit", "l2t"), ("latent-dit", "l2t"), ("cross-dit", "l2t")],
)
def test_latent_modes_match_the_family_sampler(
    family: str, mode: str, load_model: Callable[[str], LoadedModel]
) -> None:
    model = load_model(family)
    fields: dict[str, object] = {"mode": mode, "num_samples": 2, "steps": 5, "latent_steps": 5, "seed": 4}
    if mode == "t2l":
        fields["text"] = "A river runs through the valley."
    if mode == "l2t":
        fields["latent"] = [0.1 * i for i in range(model.latent_dim or 0)]
        fields["length"] = 10
    job = job_for(model, **fields)
    out = run_batch(model.pipe, [job])[0]
    reference = get_family(family).generate(  # type: ignore[attr-defined]
        model.pipe.built, latent_config(job), latents=job.latents, text_ids=job.text_ids, text_mask=job.text_mask,
        lengths=job.lengths, generator=torch.Generator().manual_seed(4),
    )  # fmt: skip
    assert torch.equal(out.tokens, reference.tokens)
    if mode in ("t2l", "joint"):
        assert out.latents is not None and out.latents.shape == (2, model.latent_dim)
        assert torch.equal(out.latents, reference.latents)
    if mode == "l2t":
        assert ((out.tokens != model.pipe.vocab.pad_id).sum(1) <= 10).all()


def test_states_reach_the_callback_and_only_reveal(load_model: Callable[[str], LoadedModel]) -> None:
    model = load_model("mdlm")
    job = job_for(model, num_samples=1, steps=6, seq_len=16, seed=5, prompt="The")
    seen: list[tuple[int, torch.Tensor]] = []
    job.on_state = lambda step, tokens: seen.append((step, tokens))
    out = run_batch(model.pipe, [job])[0]
    assert [s for s, _ in seen] == list(range(1, 7))
    mask = model.pipe.vocab.mask_id
    masked = [int((t == mask).sum()) for _, t in seen]
    assert masked == sorted(masked, reverse=True) and masked[-1] == 0
    for (_, before), (_, after) in zip(seen, seen[1:], strict=False):  # absorbing: a revealed token stays
        revealed = before != mask
        assert torch.equal(after[revealed], before[revealed])
    assert torch.equal(seen[-1][1], out.tokens)
    text = render_state(seen[0][1][0].tolist(), model.pipe)
    assert "_" in text and text.startswith("The")
