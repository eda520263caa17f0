"""Turn a request into a `GenJob` for one loaded model, refusing (RequestError -> 4xx naming the field)
everything that cannot run, before any compute: an unsupported mode or sampler for the family, a prompt
that leaves no room to generate, a latent of the wrong dimension, a request past the service limits."""

from __future__ import annotations

import math
import secrets

import torch

from mmdlm.precision import effective_precision
from services.sampler.cache import EncoderCache, LoadedModel
from services.sampler.engine import GenJob
from services.sampler.families import SAMPLERS, modes_of
from services.sampler.schemas import GenerateRequest, RequestError, SamplingParams
from services.sampler.settings import SamplerSettings


def new_seed() -> int:
    return secrets.randbelow(2**31)


def check_params(model: LoadedModel, params: SamplingParams, limits: SamplerSettings) -> None:
    if params.steps > limits.max_steps:
        raise RequestError(
            "steps", f"{params.steps} exceeds the limit of {limits.max_steps} (MMDLM_SAMPLER_MAX_STEPS)"
        )
    allowed = SAMPLERS[model.kind]
    if params.sampler not in allowed:
        raise RequestError(
            "sampler",
            f"{params.sampler!r} does not apply to the {model.family} family; choose {' or '.join(allowed)}",
        )
    if params.self_correction_steps and model.kind != "discrete":
        raise RequestError(
            "self_correction_steps", f"applies to discrete diffusion families, not {model.family}"
        )


def check_text(field: str, text: str, limits: SamplerSettings) -> None:
    if len(text) > limits.max_prompt_chars:
        raise RequestError(
            field,
            f"{len(text)} characters exceed the limit of {limits.max_prompt_chars} (MMDLM_SAMPLER_MAX_PROMPT_CHARS)",
        )


def check_ids(model: LoadedModel, field: str, ids: list[int]) -> None:
    vocab = model.pipe.vocab
    for token in ids:
        if not 0 <= token < vocab.vocab_size or token == vocab.mask_id:
            raise RequestError(
                field,
                f"id {token} is not a text token of this model (vocabulary [0, {vocab.vocab_size}), mask {vocab.mask_id})",
            )


def infer_mode(model: LoadedModel, req: GenerateRequest) -> str:
    if req.mode is not None:
        mode = req.mode
    elif req.infill is not None:
        mode = "infill"
    elif req.prompt is not None or req.prompt_ids is not None:
        mode = "prefix"
    elif req.latent is not None or req.latent_text is not None:
        mode = "l2t"
    elif req.text is not None:
        mode = "t2l"
    else:
        mode = "joint" if model.family == "mmdit" else "unconditional"
    supported = modes_of(model.family)
    if mode not in supported:
        raise RequestError(
            "mode", f"the {model.family} family cannot generate {mode!r}; supported: {', '.join(supported)}"
        )
    if model.kind == "latent" and mode == "unconditional":
        mode = "l2t"  # text from the null condition
    return mode


def _refuse_fields(req: GenerateRequest, mode: str) -> None:
    uses = {
        "prompt": ("prefix", "infill"),
        "prompt_ids": ("prefix", "infill"),
        "infill": ("infill",),
        "latent": ("l2t",),
        "latent_text": ("l2t",),
        "text": ("t2l",),
        "length": ("l2t", "joint"),
    }
    for name, modes in uses.items():
        if getattr(req, name) is not None and mode not in modes:
            raise RequestError(name, f"does not apply to mode {mode!r} (used by {', '.join(modes)})")


def sampling_params(model: LoadedModel, req: GenerateRequest) -> SamplingParams:
    """The request's sampling parameters, with the precision that will run: bf16 only where the device
    has native bf16 (else fp32, as training and evaluation do), so the samples' protocol names it."""
    params = SamplingParams.model_validate(req.protocol())
    params.precision = effective_precision(params.precision, model.pipe.device)
    return params


def resolve(
    model: LoadedModel, req: GenerateRequest, limits: SamplerSettings, encoders: EncoderCache | None = None
) -> GenJob:
    """Validate `req` against `model` and build its GenJob (seed drawn when the request has none)."""
    check_params(model, req, limits)
    if req.num_samples > limits.max_samples:
        raise RequestError(
            "num_samples",
            f"{req.num_samples} exceeds the limit of {limits.max_samples} (MMDLM_SAMPLER_MAX_SAMPLES)",
        )
    if model.kind == "image":
        return resolve_image(model, req, limits)
    for name in IMAGE_FIELDS:
        if getattr(req, name) is not None:
            raise RequestError(name, f"applies to image models (image-mmdit), not {model.family}")
    mode = infer_mode(model, req)
    _refuse_fields(req, mode)
    vocab = model.pipe.vocab
    seq_len = req.seq_len
    if seq_len is not None and seq_len > model.max_seq_len:
        raise RequestError(
            "seq_len", f"{seq_len} exceeds the model's max_seq_len of {model.max_seq_len} tokens"
        )
    job = GenJob(rows=req.num_samples, seq_len=0, mode=mode, params=sampling_params(model, req),
                 seed=req.seed if req.seed is not None else new_seed())  # fmt: skip

    prompt: list[int] | None = None
    if req.prompt is not None:
        check_text("prompt", req.prompt, limits)
        prompt = [vocab.bos_id, *model.tokenize(req.prompt)]
    elif req.prompt_ids is not None:
        check_ids(model, "prompt_ids", req.prompt_ids)
        prompt = list(req.prompt_ids)
        if not prompt:
            raise RequestError("prompt_ids", "is empty")
    template: list[int] | None = None
    if req.infill is not None:
        template = [vocab.bos_id]
        for i, segment in enumerate(req.infill):
            if isinstance(segment, str):
                check_text(f"infill[{i}]", segment, limits)
                template += model.tokenize(segment)
            elif segment < 1:
                raise RequestError(f"infill[{i}]", f"a gap must be at least 1 token, got {segment}")
            else:
                template += [-1] * segment
        if -1 not in template and (seq_len is None or seq_len <= len(template)):
            raise RequestError("infill", "the template has no gap to generate (add an integer, e.g. 5)")
    if seq_len is None:
        seq_len = model.context
        if template is not None:
            seq_len = len(template)
    job.seq_len = seq_len

    if prompt is not None and len(prompt) >= seq_len:
        field = "prompt" if req.prompt is not None else "prompt_ids"
        raise RequestError(
            field,
            f"{len(prompt)} tokens (BOS included) leave no room to generate in seq_len={seq_len} "
            f"(the model's context is {model.max_seq_len}); shorten it or raise seq_len",
        )
    if template is not None:
        if len(template) > seq_len:
            raise RequestError(
                "infill",
                f"the template has {len(template)} tokens (BOS included), more than seq_len={seq_len}",
            )
        template += [-1] * (seq_len - len(template))
        job.infill = torch.tensor(template, dtype=torch.long)
    if prompt is not None:
        job.prompt_ids = torch.tensor(prompt, dtype=torch.long)

    if model.kind == "latent":
        _latent_conditioning(model, req, job, limits, encoders)
    job.given = _given(job)
    return job


IMAGE_FIELDS = ("caption", "image", "image_guidance_scale", "caption_guidance_scale")
IMAGE_MODE_FIELDS = {
    "caption": ("t2i",),
    "image": ("i2t",),
    "image_guidance_scale": ("t2i",),
    "caption_guidance_scale": ("i2t",),
}


def resolve_image(model: LoadedModel, req: GenerateRequest, limits: SamplerSettings) -> GenJob:
    """An image-model request: t2i (caption -> images), i2t (uploaded PNG -> captions) or joint (both).
    The guidance of the generated direction becomes the job's `guidance_scale` (what its protocol shows)."""
    if req.num_samples > limits.max_images:
        raise RequestError(
            "num_samples", f"{req.num_samples} images exceed the limit of {limits.max_images} (MMDLM_SAMPLER_MAX_IMAGES)"
        )  # fmt: skip
    mode = req.mode or ("t2i" if req.caption is not None else "i2t" if req.image is not None else "joint")
    supported = modes_of(model.family)
    if mode not in supported:
        raise RequestError(
            "mode", f"the {model.family} family cannot generate {mode!r}; supported: {', '.join(supported)}"
        )
    for name in ("prompt", "prompt_ids", "infill", "latent", "latent_text", "text", "length"):
        if getattr(req, name) is not None:
            raise RequestError(
                name, "does not apply to an image model (t2i takes `caption`, i2t takes `image`)"
            )
    for name, modes in IMAGE_MODE_FIELDS.items():
        if getattr(req, name) is not None and mode not in modes:
            raise RequestError(name, f"does not apply to mode {mode!r} (used by {', '.join(modes)})")
    caption_len = model.max_seq_len
    if req.seq_len is not None and req.seq_len != caption_len:
        raise RequestError(
            "seq_len",
            f"an image model's captions are {caption_len} tokens (its max_seq_len); leave seq_len out",
        )
    guidance = {"t2i": req.image_guidance_scale, "i2t": req.caption_guidance_scale}.get(mode)
    params = sampling_params(model, req)
    if guidance is not None:
        params.guidance_scale = guidance
    if mode == "joint" and params.guidance_scale != 1.0:
        raise RequestError("guidance_scale", "joint sampling has no condition to guide; leave it at 1")
    job = GenJob(rows=req.num_samples, seq_len=caption_len, mode=mode, params=params,
                 seed=req.seed if req.seed is not None else new_seed())  # fmt: skip
    config = model.pipe.model.config
    if mode == "t2i":
        if req.caption is None:
            raise RequestError("caption", "mode t2i needs the caption the images are drawn for")
        check_text("caption", req.caption, limits)
        ids = caption_ids(model, req.caption, caption_len)
        row = torch.full((caption_len,), model.pipe.vocab.pad_id, dtype=torch.long)
        row[: len(ids)] = torch.tensor(ids, dtype=torch.long)
        mask = torch.arange(caption_len) < len(ids)
        job.text_ids = row.expand(job.rows, -1).clone()
        job.text_mask = mask.expand(job.rows, -1).clone()
        job.given = caption_len
    elif mode == "i2t":
        if req.image is None:
            raise RequestError("image", "mode i2t needs the image to caption (a base64 PNG)")
        from services.sampler.images import decode_upload

        pixels = decode_upload(
            "image", req.image, max_bytes=limits.max_image_bytes, max_pixels=limits.max_image_pixels,
            size=int(config.image_size), channels=int(config.channels),
        )  # fmt: skip
        job.images = torch.from_numpy(pixels).expand(job.rows, -1, -1, -1).clone()
    return job


def caption_ids(model: LoadedModel, caption: str, caption_len: int) -> list[int]:
    """[BOS] caption [EOS] as the image-dataset writes captions; words the caption tokenizer does not know
    (they would become [UNK], never seen in training) and captions past the model's length are refused."""
    vocab = model.pipe.vocab
    ids = model.tokenize(caption)
    tokenizer = model.pipe.tokenizer
    unk = getattr(tokenizer, "unk_token_id", None)
    if unk is not None and unk in ids:
        known = tokenizer.get_vocab()
        unknown = sorted({w for w in caption.split() if w not in known})
        raise RequestError(
            "caption", f"words outside the model's caption vocabulary: {', '.join(unknown) or '(unknown)'}"
        )
    ids = [vocab.bos_id, *ids, vocab.eos_id]
    if len(ids) > caption_len:
        raise RequestError(
            "caption", f"{len(ids)} tokens (BOS and EOS included) exceed the model's caption length of {caption_len}"
        )  # fmt: skip
    return ids


def _given(job: GenJob) -> int:
    if job.mode == "t2l":
        return job.seq_len
    known = torch.zeros(job.seq_len, dtype=torch.bool)
    if job.infill is not None:
        known |= job.infill >= 0
    if job.prompt_ids is not None:
        known[: job.prompt_ids.shape[-1]] = True
    return int(known.sum())


def _latent_conditioning(
    model: LoadedModel,
    req: GenerateRequest,
    job: GenJob,
    limits: SamplerSettings,
    encoders: EncoderCache | None,
) -> None:
    dim = model.latent_dim
    if req.length is not None:
        if req.length > job.seq_len:
            raise RequestError("length", f"{req.length} is longer than seq_len={job.seq_len}")
        job.lengths = torch.full((job.rows,), req.length, dtype=torch.long)
    if req.latent is not None:
        if len(req.latent) != dim:
            raise RequestError(
                "latent", f"has {len(req.latent)} values but the model's latent dimension is {dim}"
            )
        if not all(math.isfinite(v) for v in req.latent):
            raise RequestError("latent", "holds a non-finite value")
        job.latents = torch.tensor([req.latent], dtype=torch.float32).expand(job.rows, -1).clone()
    elif req.latent_text is not None:
        check_text("latent_text", req.latent_text, limits)
        job.latents = (
            torch.from_numpy(_encode(model, req.latent_text, "latent_text", encoders))
            .expand(job.rows, -1)
            .clone()
        )
    if job.mode == "t2l":
        if req.text is None:
            raise RequestError("text", "mode t2l needs the text whose latent is generated")
        check_text("text", req.text, limits)
        from mmdlm.eval.latent import tokenize_rows

        ids, mask = tokenize_rows(model.pipe.tokenizer, model.pipe.vocab, [req.text] * job.rows, job.seq_len)
        job.text_ids, job.text_mask = torch.from_numpy(ids), torch.from_numpy(mask)


def _encode(model: LoadedModel, text: str, field: str, encoders: EncoderCache | None):  # noqa: ANN202
    spec = model.pipe.spec
    if getattr(spec, "encoder", None) is None or encoders is None:
        raise RequestError(field, "this model records no sentence encoder; send `latent` (a vector) instead")
    encoder = encoders.for_config(spec.encoder)
    vector = encoder.encode([text], role=getattr(spec, "encoder_role", "passage"))
    if vector.shape[1] != model.latent_dim:
        raise RequestError(
            field, f"the encoder gives {vector.shape[1]}-d latents, the model expects {model.latent_dim}"
        )
    return vector.astype("float32")
