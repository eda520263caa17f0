"""Sampling for the service: several requests of one model and one setting share each network call,
and every request keeps its own random stream.

Why per-request generators: the library samplers draw every row of a batch from one generator, so a
request's samples would depend on what else happened to be batched with it. Here the network runs once
per step on the concatenated rows of all requests (`model(z, t)` is row-independent), and then each
request takes its step (`process.reverse_step`, or the next-token draw for AR) on its own rows with its
own `torch.Generator` seeded by its seed. A request therefore gets exactly the samples the library gives
for `pipeline.generate(SampleConfig(seed=s, num_samples=n, ...))` alone, batched or not (tests check this;
it needs the network's float results per row not to depend on the batch size, which holds for these
models on CPU; on GPU, kernels chosen by batch size may change the last bits of a logit).

    jobs   per request: its rows, conditioning (prompt / infill / latent / text), settings and seed
    batch  requests with the same model, mode, length and settings (`batch_key`) run together
    family discrete (mdlm/gidd/hdlm): batched ancestral steps; ar: batched KV-cache decoding;
           latent (mmdit/latent-dit/cross-dit) and image (image-mmdit): one request after the other
           through the family sampler

`on_state(step, tokens)` callbacks (per job) receive the current (n, L) tokens after each step, for the
streaming endpoints; they run in the sampling thread and must be quick.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from mmdlm.config.latent import LatentSampleConfig
from mmdlm.config.sample import SampleConfig
from mmdlm.diffusion.base import SamplingOptions
from mmdlm.families import get_family
from mmdlm.families.ar import filter_probs
from mmdlm.pipeline import Pipeline
from mmdlm.sampling.ancestral import AncestralSampler, time_grid
from mmdlm.sampling.generate import check_inputs, initial_state
from mmdlm.sampling.self_correction import self_correct
from services.sampler.families import family_kind
from services.sampler.schemas import SamplingParams

StateFn = Callable[[int, Tensor], None]


@dataclass
class GenJob:
    """One request resolved against its model (`services.sampler.resolve`).

    rows: samples; seq_len: L; prompt_ids (P,) and infill (L,) (-1 = generate) for token families;
    latents (rows, D) in encoder space (l2t), text_ids / text_mask (rows, L) (t2l), lengths (rows,) for
    the latent families.
    """

    rows: int
    seq_len: int
    mode: str
    params: SamplingParams
    seed: int
    prompt_ids: Tensor | None = None
    infill: Tensor | None = None
    latents: Tensor | None = None
    text_ids: Tensor | None = None
    text_mask: Tensor | None = None
    lengths: Tensor | None = None
    images: Tensor | None = None
    """i2t: the image to caption, (rows, C, S, S) float in [-1, 1]."""
    given: int = 0
    """Positions per row that are given (prompt, infill text, or the whole row for t2l), not generated."""
    on_state: StateFn | None = None


@dataclass
class GenOutput:
    tokens: Tensor  # (rows, L) int64, CPU
    latents: Tensor | None  # (rows, D) float32 for t2l / joint
    nfe: int
    steps: int
    elapsed_s: float
    batch_requests: int = 1
    batch_rows: int = 0
    extra: dict[str, Any] = field(default_factory=dict)
    images: Tensor | None = None  # image models, t2i / joint: (rows, C, S, S) float in [-1, 1]


def sample_config(job: GenJob) -> SampleConfig:
    """The library SampleConfig of a token-family job (what `pipeline.generate` would be given)."""
    p = job.params
    return SampleConfig(
        num_samples=job.rows,
        seq_len=job.seq_len,
        steps=p.steps,
        temperature=p.temperature,
        top_p=p.top_p,
        min_p=p.min_p,
        float64=p.float64,
        cached=p.sampler == "cached",
        self_correction_steps=p.self_correction_steps,
        seed=job.seed,
    )


def latent_config(job: GenJob) -> LatentSampleConfig:
    p = job.params
    return LatentSampleConfig(
        mode=job.mode if job.mode in ("l2t", "t2l", "joint") else "l2t",  # type: ignore[arg-type]
        num_samples=job.rows,
        seq_len=job.seq_len,
        text_steps=p.steps,
        text_sampler="topk" if p.sampler == "topk" else "ancestral",
        temperature=max(p.temperature, 1e-6),  # the latent samplers have no greedy mode
        latent_steps=p.latent_steps,
        latent_sampler=p.latent_sampler,
        eta=p.eta,
        guidance_scale=p.guidance_scale,
        seed=job.seed,
    )


def batch_key(model_key: str, family: str, job: GenJob) -> tuple[Any, ...]:
    """Requests with equal keys can share network calls (same shapes, same time grid, same draws rule)."""
    prompt_len = job.prompt_ids.shape[-1] if job.prompt_ids is not None else 0
    return (
        model_key,
        job.mode,
        job.seq_len,
        prompt_len if family_kind(family) == "ar" else None,  # AR rows must be aligned token by token
        tuple(sorted(job.params.protocol().items())),
    )


def run_batch(pipe: Pipeline, jobs: list[GenJob]) -> list[GenOutput]:
    """Sample every job of one batch (all with the same `batch_key`)."""
    if not jobs:
        return []
    kind = family_kind(pipe.family)
    device = pipe.device
    amp = (
        torch.autocast(device.type, dtype=torch.bfloat16)
        if jobs[0].params.precision == "bf16"
        else torch.autocast(device.type, enabled=False)
    )
    pipe.model.eval()
    with torch.no_grad(), amp:
        if kind == "discrete":
            outputs = _discrete(pipe, jobs)
        elif kind == "ar":
            outputs = _ar(pipe, jobs)
        elif kind == "image":
            outputs = [_image(pipe, job) for job in jobs]
        else:
            outputs = [_latent(pipe, job) for job in jobs]
    rows = sum(j.rows for j in jobs)
    alone = kind in ("latent", "image")  # one request after the other through the family sampler
    for out in outputs:
        out.batch_requests = 1 if alone else len(jobs)
        out.batch_rows = out.tokens.shape[0] if alone else rows
    return outputs


# --- discrete diffusion --------------------------------------------------------------------------------------


@dataclass
class _Row:
    """Sampling state of one job inside a discrete batch."""

    z_init: Tensor
    fixed: Tensor | None
    z: Tensor
    generator: torch.Generator
    logits: Tensor | None = None
    last_input: Tensor | None = None
    nfe: int = 0


def _discrete(pipe: Pipeline, jobs: list[GenJob]) -> list[GenOutput]:
    model = pipe.model
    process = pipe.built.extras["process"]
    device = pipe.device
    first = jobs[0]
    params = first.params
    configs = [sample_config(j) for j in jobs]
    max_len = model.config.max_seq_len  # type: ignore[union-attr]
    states: list[_Row] = []
    for job, config in zip(jobs, configs, strict=True):
        seq_len = check_inputs(config, process, max_len, job.prompt_ids, job.infill)
        z, fixed = initial_state(process, job.rows, seq_len, device, job.prompt_ids, job.infill)
        # the library's default generator for this config: a CPU generator seeded with config.seed
        states.append(
            _Row(z_init=z, fixed=fixed, z=z.clone(), generator=torch.Generator().manual_seed(job.seed))
        )
    options = SamplingOptions(params.temperature, params.top_p, params.min_p, params.float64)
    cached = params.sampler == "cached"
    sampler = AncestralSampler(model, process, params.steps, options, cached=cached)
    grid = time_grid(params.steps, process.t_eps)
    start = time.perf_counter()
    for step, (t, s) in enumerate(zip(grid[:-1], grid[1:], strict=True), start=1):
        # with `cached`, a job whose rows did not change since its last call reuses that call's logits,
        # exactly as the library sampler does for it alone
        need = [
            st
            for st in states
            if not (cached and st.last_input is not None and torch.equal(st.z, st.last_input))
        ]
        if need:
            t_net = torch.full((1,), max(t, process.t_eps), dtype=torch.float32, device=device)
            logits = model(torch.cat([st.z for st in need]), t_net)
            for st, part in zip(need, logits.split([st.z.shape[0] for st in need]), strict=True):
                st.logits, st.last_input = part, st.z
                st.nfe += 1
        for job, st in zip(jobs, states, strict=True):
            assert st.logits is not None
            z_new = process.reverse_step(st.logits, st.z, t, s, st.generator, options)
            st.z = z_new if st.fixed is None else torch.where(st.fixed, st.z_init, z_new)
            if job.on_state is not None:
                job.on_state(step, st.z.cpu())
    outputs = []
    for config, st in zip(configs, states, strict=True):
        z, extra = sampler.clean_up(st.z, st.fixed)
        nfe = st.nfe + extra
        if config.self_correction_steps > 0:
            result = self_correct(
                model, process, z, steps=config.self_correction_steps, t0=config.self_correction_t,
                temperature=config.self_correction_temperature, tokens_per_step=config.self_correction_tokens_per_step,
                patience=config.self_correction_patience, fixed=st.fixed, generator=st.generator,
                float64=config.float64,
            )  # fmt: skip
            z, nfe = result.tokens, nfe + result.nfe
        outputs.append(GenOutput(tokens=z.cpu(), latents=None, nfe=nfe, steps=params.steps, elapsed_s=0.0))
    elapsed = time.perf_counter() - start
    for out in outputs:
        out.elapsed_s = elapsed
    return outputs


# --- autoregressive ------------------------------------------------------------------------------------------


def _ar(pipe: Pipeline, jobs: list[GenJob]) -> list[GenOutput]:
    """KV-cached decoding of all jobs' rows at once (their prompts have one length, see `batch_key`); each
    job draws its next tokens with its own generator, as `mmdlm.families.ar.sample_ar` does for one."""
    model = pipe.model
    vocab = pipe.vocab
    device = pipe.device
    params = jobs[0].params
    seq_len = jobs[0].seq_len
    if not 1 <= seq_len <= model.config.max_seq_len:  # type: ignore[union-attr]
        raise ValueError(f"seq_len must be in [1, {model.config.max_seq_len}], got {seq_len}")  # type: ignore[union-attr]
    starts = []
    for job in jobs:
        start = torch.full((job.rows, 1), vocab.bos_id, dtype=torch.long, device=device)
        if job.prompt_ids is not None:
            prefix = job.prompt_ids.to(device=device, dtype=torch.long).expand(job.rows, -1)
            start = torch.cat([start, prefix], dim=1)
        starts.append(start)
    generators = [torch.Generator(device).manual_seed(job.seed) for job in jobs]
    sizes = [job.rows for job in jobs]
    banned = torch.tensor([vocab.pad_id, vocab.mask_id], device=device)
    cache = model.new_cache()  # type: ignore[operator]
    seq = torch.cat(starts)
    feed = seq
    calls = 0
    begin = time.perf_counter()
    while seq.shape[1] < seq_len + 1:
        logits = model(feed, cache=cache, last_only=True)[:, -1]  # (N, V)
        calls += 1
        logits = logits.to(torch.float64 if params.float64 else torch.float32)
        logits[:, banned] = -torch.inf
        picks = []
        for part, generator in zip(logits.split(sizes), generators, strict=True):
            if params.temperature == 0:
                picks.append(part.argmax(dim=-1, keepdim=True))
            else:
                probs = filter_probs(
                    torch.softmax(part / params.temperature, dim=-1), params.top_p, params.min_p
                )
                picks.append(torch.multinomial(probs, 1, generator=generator))
        nxt = torch.cat(picks)
        seq = torch.cat([seq, nxt], dim=1)
        feed = nxt
        step = seq.shape[1] - starts[0].shape[1]
        for job, rows in zip(jobs, seq[:, 1:].split(sizes), strict=True):
            if job.on_state is not None:
                job.on_state(step, rows.cpu())
    elapsed = time.perf_counter() - begin
    tokens = seq[:, 1:].cpu()
    return [
        GenOutput(tokens=rows, latents=None, nfe=calls, steps=0, elapsed_s=elapsed)
        for rows in tokens.split(sizes)
    ]


# --- latent families -----------------------------------------------------------------------------------------


def _latent(pipe: Pipeline, job: GenJob) -> GenOutput:
    family = get_family(pipe.family)
    cfg = latent_config(job)
    generator = torch.Generator().manual_seed(job.seed)  # the family's default for cfg.seed
    hook = None
    if job.on_state is not None and job.mode in ("l2t", "joint"):
        calls = [0]
        callback = job.on_state

        def observe(_: torch.nn.Module, args: tuple[Any, ...]) -> None:
            # the network's first input is the current text state z_t (B, L); with guidance the
            # conditional and unconditional calls see the same state, so report each state once
            calls[0] += 1
            if job.params.guidance_scale == 1.0 or calls[0] % 2 == 1:
                callback(calls[0], args[0].detach().cpu())

        hook = pipe.model.register_forward_pre_hook(observe)
    start = time.perf_counter()
    try:
        out = family.generate(  # type: ignore[attr-defined]
            pipe.built, cfg, latents=job.latents, text_ids=job.text_ids, text_mask=job.text_mask,
            lengths=job.lengths, generator=generator,
        )  # fmt: skip
    finally:
        if hook is not None:
            hook.remove()
    return GenOutput(
        tokens=out.tokens, latents=out.latents, nfe=out.nfe, steps=out.steps, elapsed_s=time.perf_counter() - start,
        extra={"protocol": getattr(out, "protocol", None)},
    )  # fmt: skip


# --- image models --------------------------------------------------------------------------------------------

IMAGE_MODES = {"t2i": "t2l", "i2t": "l2t", "joint": "joint"}
"""Service mode -> the image family's mode (it names the image the "latent")."""


def _image(pipe: Pipeline, job: GenJob) -> GenOutput:
    """One image-model request through the family sampler: images for a caption (t2i), captions for an
    image (i2t), or both (joint); the request's own generator, seeded with its seed."""
    family = get_family(pipe.family)
    cfg = latent_config(job).model_copy(update={"mode": IMAGE_MODES[job.mode]})
    generator = torch.Generator().manual_seed(job.seed)
    start = time.perf_counter()
    out = family.generate(  # type: ignore[attr-defined]
        pipe.built, cfg, text_ids=job.text_ids, text_mask=job.text_mask, images=job.images, generator=generator,
    )  # fmt: skip
    images = out.latents if job.mode in ("t2i", "joint") else None
    return GenOutput(
        tokens=out.tokens, latents=None, nfe=out.nfe, steps=out.steps, elapsed_s=time.perf_counter() - start,
        extra={"protocol": getattr(out, "protocol", None)}, images=None if images is None else images.float().cpu(),
    )  # fmt: skip


# --- rendering -----------------------------------------------------------------------------------------------


def render_state(ids: list[int], pipe: Pipeline, placeholder: str = "_") -> str:
    """A partly denoised row as text: runs of text tokens decoded, every other position (mask, HDLM
    cluster) shown as `placeholder`, so a client can draw the denoising as it happens."""
    vocab = pipe.vocab
    pieces: list[str] = []
    run: list[int] = []

    def flush() -> None:
        if run:
            pieces.append(pipe.decode(torch.tensor([run]))[0])
            run.clear()

    for token in ids:
        if token < vocab.vocab_size and token != vocab.mask_id:
            if token == vocab.pad_id:
                continue
            run.append(token)
        else:
            flush()
            pieces.append(placeholder)
    flush()
    return "".join(pieces)
