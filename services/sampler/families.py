"""What each family can do in the sampler (torch-free: the job kinds check submissions with it)."""

from __future__ import annotations

FAMILY_KINDS = {
    "mdlm": "discrete",
    "gidd": "discrete",
    "hdlm": "discrete",
    "ar": "ar",
    "mmdit": "latent",
    "latent-dit": "latent",
    "cross-dit": "latent",
    "image-mmdit": "image",
}
"""family -> how it samples: discrete diffusion, autoregressive, latent (text <-> sentence latent), or
image (caption <-> image)."""

MODES = {
    "discrete": ("unconditional", "prefix", "infill"),
    "ar": ("unconditional", "prefix"),
    "mmdit": ("unconditional", "l2t", "t2l", "joint"),
    "latent-dit": ("unconditional", "l2t"),
    "cross-dit": ("unconditional", "l2t"),
    "image": ("joint", "t2i", "i2t"),
}
"""Image models: t2i draws images for a caption, i2t captions for an uploaded image, joint both."""
SAMPLERS = {
    "discrete": ("ancestral", "cached"),
    "ar": ("ancestral",),
    "latent": ("ancestral", "topk"),
    "image": ("ancestral", "topk"),  # the caption's (and the discrete variant's pixels') token sampler
}
SAMPLE_JOB_MODES = {"image": ("joint", "t2i")}
"""Modes a `sample` job may ask of a kind when they differ from MODES (i2t needs an uploaded image)."""


def family_kind(family: str) -> str:
    try:
        return FAMILY_KINDS[family]
    except KeyError:
        raise ValueError(
            f"the sampler cannot serve family {family!r} (known: {sorted(FAMILY_KINDS)})"
        ) from None


def modes_of(family: str) -> tuple[str, ...]:
    kind = family_kind(family)
    return MODES[kind] if kind in MODES else MODES[family]
