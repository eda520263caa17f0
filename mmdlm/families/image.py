"""Family `image-mmdit`: caption + image MMDiT (spec §6, rebuilt) on an `image-dataset` or the bundled
sklearn digits.

    family = FAMILIES["image-mmdit"]
    data = family.open_dataset(spec, "sklearn:digits")     # or an image-dataset directory
    built = family.build(spec, data.vocab)
    out = family.generate(built, ImageSampleConfig(mode="t2l"), text_ids=ids, text_mask=mask)  # images
    out = family.generate(built, ImageSampleConfig(mode="l2t"), images=images)                 # captions

Modes use the latent families' names with the image as the "latent": `t2l` draws images for captions,
`l2t` captions for images, `joint` both. Images go in and come out as (N, C, S, S) floats in [-1, 1]
(`out.latents`), for both variants. The samplers are the latent core's (`mmdlm.sampling.latent`): DDIM /
DDPM on pixels for the continuous variant, the masked ancestral / top-k reveal on pixel tokens for the
discrete one, with classifier-free guidance per direction (`ImageSampleConfig.image_guidance_scale`,
`text_guidance_scale`), whose unconditional branch hides the condition as training's dropout did.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from mmdlm.config.latent import ImageMMDiTSpec, ImageSampleConfig, LatentSampleConfig
from mmdlm.config.sample import SampleConfig
from mmdlm.diffusion.base import VocabLayout
from mmdlm.diffusion.gaussian import GaussianDiffusion
from mmdlm.diffusion.latent_objective import ImageMMDiTObjective
from mmdlm.diffusion.masked import MaskedProcess
from mmdlm.families import Built
from mmdlm.families.latent import LatentFamily
from mmdlm.sampling.latent import LatentSampleOutput, length_mask, sample_joint, sample_l2t, sample_t2l


def open_image_dataset(directory: str | Path, levels: int | None = None) -> Any:
    """The bundled digits (`sklearn:digits`) or an `image-dataset` directory, both as `ImageDataset`."""
    from mmdlm.data.images import open_image_dataset as open_images

    return open_images(directory, levels=levels)


def dataset_geometry(dataset: Any) -> tuple[int, int]:
    """(resolution, channels) of a dataset (the digits are 8x8 grey)."""
    return int(getattr(dataset, "resolution", 8)), int(getattr(dataset, "channels", 1))


def check_geometry(spec: ImageMMDiTSpec, resolution: int, channels: int, where: str = "the dataset") -> None:
    """ValueError naming the model field that disagrees with the data (a 422 at submit)."""
    if spec.model.image_size != resolution:
        raise ValueError(
            f"model.image_size={spec.model.image_size} but {where} holds {resolution}x{resolution} images; "
            f"set model.image_size={resolution}"
        )
    if spec.model.channels != channels:
        raise ValueError(
            f"model.channels={spec.model.channels} but {where} holds {channels}-channel images; "
            f"set model.channels={channels}"
        )


class ImageMMDiTFamily(LatentFamily[ImageMMDiTSpec]):
    name = "image-mmdit"
    spec_type = ImageMMDiTSpec
    default_mode = "joint"

    def open_dataset(self, spec: Any, directory: str | Path, verify: bool = True) -> Any:  # noqa: ARG002
        """Open the data and refuse, before a model is built, a resolution or channel count that differs."""
        spec = self.parse(spec)
        data = open_image_dataset(directory, levels=spec.model.levels)
        check_geometry(spec, *dataset_geometry(data), where=str(directory))
        return data

    def bind_dataset(self, built: Built, dataset: Any) -> None:
        """Caption-length histogram (pixels need no statistics: they are in [-1, 1] / grey levels)."""
        split = dataset.split("train")
        size = built.model.length_counts.numel()
        counts = torch.zeros(size)
        for start in range(0, len(split), 4096):
            mask = split.get_batch(np.arange(start, min(start + 4096, len(split))))["attention_mask"]
            lengths = torch.from_numpy(np.asarray(mask).sum(1)).long().clamp(max=size - 1)
            counts += torch.bincount(lengths, minlength=size)[:size].float()
        built.model.length_counts.copy_(counts)

    def build(self, spec: ImageMMDiTSpec | dict[str, Any], vocab: Any) -> Built:
        from mmdlm.models.image_mmdit import ImageMMDiT

        spec = self.parse(spec)
        text = MaskedProcess(VocabLayout.from_vocab(vocab), spec.objective.text)
        # levels + [MASK], padded to a multiple of 8 (not 128: the discrete head has p*p*C rows per token)
        pixel_layout = VocabLayout(vocab_size=spec.model.levels + 1, mask_id=spec.model.levels, multiple=8)
        if spec.model.variant == "continuous":
            image: GaussianDiffusion | MaskedProcess = GaussianDiffusion(spec.objective.image)
        else:
            image = MaskedProcess(pixel_layout, spec.objective.pixels)
        model = ImageMMDiT(spec.model, text.layout.rows, pixel_layout.rows)
        objective = ImageMMDiTObjective(text, image, spec.objective, spec.model.levels)
        extras = {
            "text_process": text,
            "image_process": image,
            "process": text,
            "layout": text.layout,
            "spec": spec,
        }
        return Built(model=model, objective=objective, extras=extras)

    def _config(self, config: SampleConfig | LatentSampleConfig) -> ImageSampleConfig:
        if isinstance(config, ImageSampleConfig):
            return config
        if isinstance(config, LatentSampleConfig):
            return ImageSampleConfig.model_validate(config.model_dump())
        return ImageSampleConfig.model_validate(super()._config(config).model_dump())

    def generate(
        self,
        built: Built,
        config: SampleConfig | LatentSampleConfig,
        *,
        text_ids: Tensor | None = None,
        text_mask: Tensor | None = None,
        images: Tensor | None = None,
        lengths: Tensor | None = None,
        unconditional: bool = False,
        generator: torch.Generator | None = None,
        **_: Any,
    ) -> LatentSampleOutput:
        """t2l: images for `text_ids` (N, L); l2t: captions for `images` ((N, C, S, S) floats in [-1, 1];
        the discrete variant also takes (N, C*S*S) levels); joint: `num_samples` of both.
        `unconditional` hides the given condition (the classifier-free-guidance null branch), for
        baselines that keep everything else equal. `lengths` (N,) fixes caption lengths (l2t / joint)."""
        cfg = self._config(config)
        model = built.model
        mc = model.config
        text: MaskedProcess = built.extras["text_process"]
        image = built.extras["image_process"]
        device = next(model.parameters()).device
        gen = generator or torch.Generator().manual_seed(cfg.seed)
        scale = 1.0 if unconditional else cfg.scale_for(cfg.mode)
        continuous = mc.variant == "continuous"
        start = time.perf_counter()
        shape_c = (mc.channels, mc.image_size, mc.image_size)
        n_pix = mc.num_pixel_values
        protocol = self._protocol(cfg, built, scale, unconditional)

        def output(tokens: Tensor, pictures: Tensor | None, nfe: int, steps: int) -> LatentSampleOutput:
            return LatentSampleOutput(
                tokens=tokens.cpu(), nfe=nfe, elapsed_s=time.perf_counter() - start, steps=steps,
                latents=None if pictures is None else pictures.float().cpu(), mode=cfg.mode, protocol=protocol,
            )  # fmt: skip

        if cfg.mode == "t2l":
            if text_ids is None:
                raise ValueError("mode t2l (caption -> image) needs text_ids")
            ids = text_ids.to(device).long()
            if ids.dim() != 2 or ids.shape[1] > mc.max_seq_len:
                raise ValueError(f"text_ids must be (N, L) with L <= model.max_seq_len={mc.max_seq_len}")
            mask = (
                torch.ones_like(ids, dtype=torch.bool) if text_mask is None else text_mask.to(device).bool()
            )
            N = len(ids)
            if continuous:

                def image_fn(tok: Tensor, m: Tensor, z: Tensor, t: Tensor, drop: Tensor | None) -> Tensor:
                    if unconditional:
                        drop = torch.ones(len(tok), dtype=torch.bool, device=device)
                    return model(tok, z, torch.zeros(len(tok), device=device), t, m, drop_text=drop)[1]

                out, nfe = sample_t2l(
                    image_fn, image, ids, mask, (N, *shape_c), steps=cfg.latent_steps, sampler=cfg.latent_sampler,
                    eta=cfg.eta, guidance_scale=scale, clip_x0=min(cfg.clip_x0 or 1.0, 1.0), generator=gen,
                )  # fmt: skip
                return output(ids, out.clamp(-1, 1), nfe, cfg.latent_steps)

            def pixel_fn(
                zt: Tensor,
                t: Tensor,
                m: Tensor,  # noqa: ARG001 - the sampler's TextFn signature; every pixel is real
                cond: Tensor | None,  # noqa: ARG001 - the condition is the caption `ids`
                drop: Tensor | None,
            ) -> Tensor:
                copies = len(zt) // N  # 2 when guidance batches the conditional and null branches
                tok, tm = ids.repeat(copies, 1), mask.repeat(copies, 1)
                return model(tok, zt, torch.zeros(len(zt), device=device), t, tm, drop_text=drop)[1]

            pixels, nfe = sample_l2t(
                pixel_fn, image, torch.full((N,), n_pix, device=device), n_pix, None if unconditional else ids,
                steps=cfg.latent_steps, sampler=cfg.text_sampler, temperature=cfg.temperature,
                guidance_scale=scale, generator=gen,
            )  # fmt: skip
            return output(ids, _to_image(pixels, mc.levels, shape_c), nfe, cfg.latent_steps)

        seq_len = cfg.seq_len or mc.max_seq_len
        if seq_len > mc.max_seq_len:
            raise ValueError(f"seq_len={seq_len} exceeds model.max_seq_len={mc.max_seq_len}")
        if cfg.mode == "l2t":
            if images is None:
                raise ValueError("mode l2t (image -> caption) needs images")
            cond = self.image_condition(built, images.to(device))
            N = len(cond)
            lens = self._lengths(built, N, seq_len, lengths, gen).to(device)

            def caption_fn(
                zt: Tensor, t: Tensor, m: Tensor, img: Tensor | None, drop: Tensor | None
            ) -> Tensor:
                img = cond if img is None else img
                return model(zt, img, t, torch.zeros(len(zt), device=device), m, drop_image=drop)[0]

            tokens, nfe = sample_l2t(
                caption_fn, text, lens, seq_len, None if unconditional else cond, steps=cfg.text_steps,
                sampler=cfg.text_sampler, temperature=cfg.temperature, guidance_scale=scale, generator=gen,
            )  # fmt: skip
            return output(tokens, None, nfe, cfg.text_steps)

        N = cfg.num_samples
        lens = self._lengths(built, N, seq_len, lengths, gen).to(device)
        if continuous:

            def joint_fn(zt: Tensor, t: Tensor, m: Tensor, z: Tensor, t_img: Tensor) -> tuple[Tensor, Tensor]:
                return model(zt, z, t, t_img, m)

            tokens, out, nfe = sample_joint(
                joint_fn, text, image, lens, seq_len, (N, *shape_c), steps=cfg.text_steps,
                latent_sampler=cfg.latent_sampler, eta=cfg.eta, temperature=cfg.temperature,
                clip_x0=min(cfg.clip_x0 or 1.0, 1.0), generator=gen,
            )  # fmt: skip
            return output(tokens, out.clamp(-1, 1), nfe, cfg.text_steps)
        tokens, pixels, nfe = _joint_discrete(model, text, image, lens, seq_len, n_pix, cfg, gen, device)
        return output(tokens, _to_image(pixels, mc.levels, shape_c), nfe, cfg.text_steps)

    @staticmethod
    def image_condition(built: Built, images: Tensor) -> Tensor:
        """Images as the model's image stream: floats (N, C, S, S) for the continuous variant, levels
        (N, C*S*S) for the discrete one (floats are quantised; levels pass through)."""
        from mmdlm.models.image_mmdit import quantize

        mc = built.model.config
        shape_c = (mc.channels, mc.image_size, mc.image_size)
        if images.is_floating_point():
            if tuple(images.shape[1:]) != shape_c:
                raise ValueError(f"images must be (N, {mc.channels}, {mc.image_size}, {mc.image_size}), "
                                 f"got {tuple(images.shape)}")  # fmt: skip
            return images.float() if mc.variant == "continuous" else quantize(images, mc.levels)
        if mc.variant == "continuous" or tuple(images.shape[1:]) != (mc.num_pixel_values,):
            raise ValueError(f"images must be float (N, {', '.join(map(str, shape_c))}) in [-1, 1]")
        if bool(((images < 0) | (images >= mc.levels)).any()):
            raise ValueError(f"pixel levels must lie in [0, model.levels={mc.levels})")
        return images.long()

    @staticmethod
    def _protocol(cfg: ImageSampleConfig, built: Built, scale: float, unconditional: bool) -> dict[str, Any]:
        spec = built.extras["spec"]
        param = next(built.model.parameters())
        image = built.extras["image_process"]
        return {
            "family": spec.family,
            "variant": spec.model.variant,
            "mode": cfg.mode,
            "guidance_scale": scale,
            "unconditional": unconditional,
            "image_process": (
                {
                    "kind": "gaussian",
                    "parameterization": image.parameterization,
                    "schedule": image.config.schedule,
                }
                if isinstance(image, GaussianDiffusion)
                else {"kind": "masked", "levels": spec.model.levels}
            ),
            "precision": str(param.dtype).removeprefix("torch."),
            "device": param.device.type,
            "sample": cfg.model_dump(mode="json"),
        }


def _to_image(pixels: Tensor, levels: int, shape: tuple[int, ...]) -> Tensor:
    from mmdlm.models.image_mmdit import dequantize

    return dequantize(pixels, levels, shape)


@torch.no_grad()
def _joint_discrete(
    model: Any,
    text: MaskedProcess,
    pixels: MaskedProcess,
    lengths: Tensor,
    seq_len: int,
    n_pix: int,
    cfg: ImageSampleConfig,
    gen: torch.Generator,
    device: torch.device,
) -> tuple[Tensor, Tensor, int]:
    """Both token chains from all-[MASK], in lock-step on the same time grid, one network call per step."""
    from mmdlm.diffusion.base import SamplingOptions
    from mmdlm.sampling.ancestral import time_grid

    options = SamplingOptions(temperature=cfg.temperature)
    N = len(lengths)
    mask = length_mask(lengths, seq_len)
    pad = text.layout.pad_id if text.layout.pad_id is not None else text.layout.mask_id
    zt = torch.where(mask, text.prior((N, seq_len), device), torch.full_like(mask, pad, dtype=torch.long))
    zp = pixels.prior((N, n_pix), device)
    grid = time_grid(cfg.text_steps, text.t_eps)
    for i in range(cfg.text_steps):
        t = torch.full((N,), grid[i], device=device)
        logits, out = model(zt, zp, t, t, mask)
        zt = text.reverse_step(logits, zt, grid[i], grid[i + 1], gen, options)
        zp = pixels.reverse_step(out, zp, grid[i], grid[i + 1], gen, options)
    return zt, zp, cfg.text_steps


FAMILIES = {"image-mmdit": ImageMMDiTFamily()}
