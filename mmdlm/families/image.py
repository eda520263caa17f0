"""Family `image-mmdit`: caption + image MMDiT on the captioned sklearn digits (spec §6, toy scale).

    family = FAMILIES["image-mmdit"]
    data = family.open_dataset(spec, "sklearn:digits")
    built = family.build(spec, data.vocab)
    out = family.generate(built, LatentSampleConfig(mode="t2l"), text_ids=ids, text_mask=mask)  # images
    out = family.generate(built, LatentSampleConfig(mode="l2t"), images=images)                 # captions

Modes use the latent families' names with the image as the "latent": `t2l` draws images for captions,
`l2t` captions for images, `joint` both. Returned images are (N, C, S, S) in [-1, 1] (`out.latents`).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from mmdlm.config.latent import ImageMMDiTSpec, LatentSampleConfig
from mmdlm.config.sample import SampleConfig
from mmdlm.diffusion.base import VocabLayout
from mmdlm.diffusion.gaussian import GaussianDiffusion
from mmdlm.diffusion.latent_objective import ImageMMDiTObjective
from mmdlm.diffusion.masked import MaskedProcess
from mmdlm.families import Built
from mmdlm.families.latent import LatentFamily
from mmdlm.sampling.latent import LatentSampleOutput, length_mask, sample_joint, sample_l2t, sample_t2l


class ImageMMDiTFamily(LatentFamily[ImageMMDiTSpec]):
    name = "image-mmdit"
    spec_type = ImageMMDiTSpec
    default_mode = "joint"

    def open_dataset(self, spec: Any, directory: str | Path, verify: bool = True) -> Any:  # noqa: ARG002
        from mmdlm.data.images import DigitsDataset

        spec = self.parse(spec)
        data = DigitsDataset.open(str(directory))
        if spec.model.image_size != 8 or spec.model.channels != 1:
            raise ValueError(
                f"image-mmdit: the digits are 8x8 with 1 channel, but model.image_size={spec.model.image_size} "
                f"and model.channels={spec.model.channels}"
            )
        if spec.model.variant == "discrete" and spec.model.levels != 17:
            raise ValueError(f"image-mmdit: the digits have 17 grey levels, model.levels={spec.model.levels}")
        return data

    def bind_dataset(self, built: Built, dataset: Any) -> None:
        """Caption-length histogram (pixels need no statistics: they are in [-1, 1] / grey levels)."""
        split = dataset.split("train")
        lengths = split.get_batch(range(len(split)))["attention_mask"].sum(1)
        counts = torch.bincount(torch.from_numpy(lengths), minlength=built.model.length_counts.numel())
        built.model.length_counts.copy_(counts[: built.model.length_counts.numel()].float())

    def build(self, spec: ImageMMDiTSpec | dict[str, Any], vocab: Any) -> Built:
        from mmdlm.models.image_mmdit import ImageMMDiT

        spec = self.parse(spec)
        text = MaskedProcess(VocabLayout.from_vocab(vocab), spec.objective.text)
        pixel_layout = VocabLayout(vocab_size=spec.model.levels + 1, mask_id=spec.model.levels)
        if spec.model.variant == "continuous":
            image: GaussianDiffusion | MaskedProcess = GaussianDiffusion(spec.objective.image)
        else:
            image = MaskedProcess(pixel_layout, spec.objective.text)
        model = ImageMMDiT(spec.model, text.layout.rows, pixel_layout.rows)
        objective = ImageMMDiTObjective(text, image, spec.objective)
        extras = {
            "text_process": text,
            "image_process": image,
            "process": text,
            "layout": text.layout,
            "spec": spec,
        }
        return Built(model=model, objective=objective, extras=extras)

    def generate(
        self,
        built: Built,
        config: SampleConfig | LatentSampleConfig,
        *,
        text_ids: Tensor | None = None,
        text_mask: Tensor | None = None,
        images: Tensor | None = None,
        unconditional: bool = False,
        generator: torch.Generator | None = None,
        **_: Any,
    ) -> LatentSampleOutput:
        """t2l: images for `text_ids` (N, L); l2t: captions for `images` ((N, C, S, S) floats, or (N, S*S)
        grey levels for the discrete variant); joint: both. `unconditional` hides the given condition
        (the classifier-free-guidance null branch), for baselines that keep everything else equal."""
        cfg = self._config(config)
        if unconditional:
            cfg = cfg.model_copy(update={"guidance_scale": 1.0})
        model = built.model
        mc = model.config
        text: MaskedProcess = built.extras["text_process"]
        image = built.extras["image_process"]
        device = next(model.parameters()).device
        gen = generator or torch.Generator().manual_seed(cfg.seed)
        continuous = mc.variant == "continuous"
        start = time.perf_counter()
        shape_c = (mc.channels, mc.image_size, mc.image_size)
        n_pix = mc.channels * mc.image_size**2
        if cfg.mode == "t2l":
            if text_ids is None:
                raise ValueError("mode t2l (caption -> image) needs text_ids")
            ids = text_ids.to(device).long()
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
                    eta=cfg.eta, guidance_scale=cfg.guidance_scale, clip_x0=min(cfg.clip_x0 or 1.0, 1.0), generator=gen,
                )  # fmt: skip
                pictures = out.clamp(-1, 1)
            else:

                def pixel_fn(
                    zt: Tensor,
                    t: Tensor,
                    m: Tensor,  # noqa: ARG001 - the sampler's TextFn signature
                    cond: Tensor | None,  # noqa: ARG001 - the condition is the caption `ids`
                    drop: Tensor | None,
                ) -> Tensor:
                    copies = len(zt) // N  # 2 when guidance batches the conditional and null branches
                    tok, tm = ids.repeat(copies, 1), mask.repeat(copies, 1)
                    return model(tok, zt, torch.zeros(len(zt), device=device), t, tm, drop_text=drop)[1]

                pixels, nfe = sample_l2t(
                    pixel_fn, image, torch.full((N,), n_pix, device=device), n_pix, None if unconditional else ids,
                    steps=cfg.text_steps,
                    sampler=cfg.text_sampler, temperature=cfg.temperature, guidance_scale=cfg.guidance_scale,
                    generator=gen,
                )  # fmt: skip
                pictures = _levels_to_image(pixels, mc.levels, shape_c)
            return LatentSampleOutput(
                tokens=ids.cpu(), nfe=nfe, elapsed_s=time.perf_counter() - start, steps=cfg.latent_steps,
                latents=pictures.cpu(), mode="t2l", protocol=self._protocol(cfg, built),
            )  # fmt: skip
        seq_len = cfg.seq_len or mc.max_seq_len
        if cfg.mode == "l2t":
            if images is None:
                raise ValueError("mode l2t (image -> caption) needs images")
            cond = images.to(device)
            cond = cond.float() if continuous else cond.long()
            N = len(cond)
            lengths = self._lengths(built, N, seq_len, None, gen).to(device)

            def caption_fn(
                zt: Tensor, t: Tensor, m: Tensor, img: Tensor | None, drop: Tensor | None
            ) -> Tensor:
                img = cond if img is None else img
                return model(zt, img, t, torch.zeros(len(zt), device=device), m, drop_image=drop)[0]

            tokens, nfe = sample_l2t(
                caption_fn, text, lengths, seq_len, None if unconditional else cond, steps=cfg.text_steps,
                sampler=cfg.text_sampler,
                temperature=cfg.temperature, guidance_scale=cfg.guidance_scale, generator=gen,
            )  # fmt: skip
            return LatentSampleOutput(
                tokens=tokens.cpu(), nfe=nfe, elapsed_s=time.perf_counter() - start, steps=cfg.text_steps,
                latents=None, mode="l2t", protocol=self._protocol(cfg, built),
            )  # fmt: skip
        N = cfg.num_samples
        lengths = self._lengths(built, N, seq_len, None, gen).to(device)
        if continuous:

            def joint_fn(zt: Tensor, t: Tensor, m: Tensor, z: Tensor, t_img: Tensor) -> tuple[Tensor, Tensor]:
                return model(zt, z, t, t_img, m)

            tokens, out, nfe = sample_joint(
                joint_fn, text, image, lengths, seq_len, (N, *shape_c), steps=cfg.text_steps,
                latent_sampler=cfg.latent_sampler, eta=cfg.eta, temperature=cfg.temperature,
                clip_x0=min(cfg.clip_x0 or 1.0, 1.0), generator=gen,
            )  # fmt: skip
            pictures = out.clamp(-1, 1)
        else:
            tokens, pixels, nfe = _joint_discrete(
                model, text, image, lengths, seq_len, n_pix, cfg, gen, device
            )
            pictures = _levels_to_image(pixels, mc.levels, shape_c)
        return LatentSampleOutput(
            tokens=tokens.cpu(), nfe=nfe, elapsed_s=time.perf_counter() - start, steps=cfg.text_steps,
            latents=pictures.cpu(), mode="joint", protocol=self._protocol(cfg, built),
        )  # fmt: skip

    @staticmethod
    def _protocol(cfg: LatentSampleConfig, built: Built) -> dict[str, Any]:
        spec = built.extras["spec"]
        return {"family": spec.family, "variant": spec.model.variant, "sample": cfg.model_dump(mode="json")}


def _levels_to_image(pixels: Tensor, levels: int, shape: tuple[int, ...]) -> Tensor:
    return (pixels.float() / (levels - 1) * 2 - 1).reshape(len(pixels), *shape)


@torch.no_grad()
def _joint_discrete(
    model: Any,
    text: MaskedProcess,
    pixels: MaskedProcess,
    lengths: Tensor,
    seq_len: int,
    n_pix: int,
    cfg: LatentSampleConfig,
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
