"""`generate`: SampleConfig + prompt / infill template -> SampleOutput for a diffusion model and process.

Conditioning:
    prompt_ids  (P,) or (N, P) int64: positions [0, P) of every sample are the prompt.
    infill      (L,) or (N, L) int64: a template, ids where the text is given and -1 where it is generated.
Given positions are never changed by any step. Both may be combined (the prompt overrides the template).
"""

from __future__ import annotations

import time
import weakref

import torch
from torch import Tensor, nn

from mmdlm.config.sample import SampleConfig
from mmdlm.diffusion.base import DiscreteProcess, SamplingOptions
from mmdlm.diffusion.fused import compiled_kernels
from mmdlm.sampling.ancestral import AncestralSampler, SampleOutput
from mmdlm.sampling.self_correction import self_correct


def check_inputs(
    config: SampleConfig,
    process: DiscreteProcess,
    max_seq_len: int,
    prompt_ids: Tensor | None,
    infill: Tensor | None,
) -> int:
    """Validate the request before any compute; returns the sample length L."""
    seq_len = config.seq_len or (infill.shape[-1] if infill is not None else max_seq_len)
    if seq_len > max_seq_len:
        raise ValueError(f"seq_len={seq_len} exceeds the model's max_seq_len={max_seq_len}")
    layout = process.layout
    for name, ids in (("prompt_ids", prompt_ids), ("infill", infill)):
        if ids is None:
            continue
        if ids.dim() not in (1, 2) or (ids.dim() == 2 and ids.shape[0] != config.num_samples):
            raise ValueError(
                f"{name} must have shape (len,) or (num_samples={config.num_samples}, len); got {tuple(ids.shape)}"
            )
        given = ids[ids >= 0] if name == "infill" else ids
        if bool(((given < 0) | (given >= layout.vocab_size) | (given == layout.mask_id)).any()):
            raise ValueError(
                f"{name} holds ids outside the text vocabulary [0, {layout.vocab_size}) or [MASK]"
            )
    if prompt_ids is not None and prompt_ids.shape[-1] >= seq_len:
        raise ValueError(
            f"prompt_ids has {prompt_ids.shape[-1]} tokens; it must be shorter than seq_len={seq_len}"
        )
    if infill is not None and infill.shape[-1] != seq_len:
        raise ValueError(f"infill has length {infill.shape[-1]}; it must equal seq_len={seq_len}")
    return seq_len


def initial_state(
    process: DiscreteProcess,
    num: int,
    seq_len: int,
    device: torch.device,
    prompt_ids: Tensor | None = None,
    infill: Tensor | None = None,
) -> tuple[Tensor, Tensor | None]:
    """The prior (all [MASK]) with given positions filled in, and the (num, L) bool mask of given positions."""
    z = process.prior((num, seq_len), device)
    fixed = torch.zeros(num, seq_len, dtype=torch.bool, device=device)
    if infill is not None:
        template = infill.to(device).expand(num, seq_len)
        known = template >= 0
        z = torch.where(known, template, z)
        fixed |= known
    if prompt_ids is not None:
        prompt = prompt_ids.to(device).expand(num, prompt_ids.shape[-1])
        z[:, : prompt.shape[-1]] = prompt
        fixed[:, : prompt.shape[-1]] = True
    return z, (fixed if bool(fixed.any()) else None)


_COMPILED: weakref.WeakKeyDictionary[nn.Module, nn.Module] = weakref.WeakKeyDictionary()


def maybe_compile(model: nn.Module, enabled: bool) -> nn.Module:
    """`torch.compile(model)` when `enabled`, made once per model and reused, so only the first sampling call
    of a process pays the compile; the raw model otherwise. Attribute access, eval() and parameters pass
    through the compiled wrapper to the model."""
    if not enabled:
        return model
    compiled = _COMPILED.get(model)
    if compiled is None:
        compiled = torch.compile(model)
        _COMPILED[model] = compiled
    return compiled


def _rows(t: Tensor | None, start: int, stop: int) -> Tensor | None:
    if t is None or t.dim() == 1:
        return t
    return t[start:stop]


@torch.no_grad()
def generate(
    model: nn.Module,
    process: DiscreteProcess,
    config: SampleConfig,
    *,
    max_seq_len: int,
    prompt_ids: Tensor | None = None,
    infill: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> SampleOutput:
    """Draw `config.num_samples` sequences with the ancestral sampler (then optional self-correction).

    The generator defaults to a CPU generator seeded with `config.seed`, so equal configs give equal samples.
    The model is put in eval mode for the call and restored afterwards.
    """
    seq_len = check_inputs(config, process, max_seq_len, prompt_ids, infill)
    device = next(model.parameters()).device
    if generator is None:
        generator = torch.Generator().manual_seed(config.seed)
    options = SamplingOptions(config.temperature, config.top_p, config.min_p, config.float64)
    net = maybe_compile(model, config.compile)
    sampler = AncestralSampler(net, process, config.steps, options, cached=config.cached)
    batch = min(config.batch_size or config.num_samples, config.num_samples)
    was_training = model.training
    model.eval()
    chunks: list[Tensor] = []
    nfe = 0
    start_time = time.perf_counter()
    try:
        for start in range(0, config.num_samples, batch):
            stop = min(start + batch, config.num_samples)
            z, fixed = initial_state(
                process,
                stop - start,
                seq_len,
                device,
                _rows(prompt_ids, start, stop),
                _rows(infill, start, stop),
            )
            with compiled_kernels(config.compile):  # the processes' vocabulary reductions, as the network
                tokens, calls = sampler(z, fixed, generator)
            nfe += calls
            if config.self_correction_steps > 0:
                result = self_correct(
                    net,
                    process,
                    tokens,
                    steps=config.self_correction_steps,
                    t0=config.self_correction_t,
                    temperature=config.self_correction_temperature,
                    tokens_per_step=config.self_correction_tokens_per_step,
                    patience=config.self_correction_patience,
                    fixed=fixed,
                    generator=generator,
                    float64=config.float64,
                )
                tokens, nfe = result.tokens, nfe + result.nfe
            chunks.append(tokens.cpu())
    finally:
        model.train(was_training)
    elapsed = time.perf_counter() - start_time
    return SampleOutput(tokens=torch.cat(chunks), nfe=nfe, elapsed_s=elapsed, steps=config.steps)
