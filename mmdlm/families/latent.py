"""The latent families `mmdit`, `latent-dit`, `cross-dit` (and `image-mmdit`, in `families/image.py`).

    family = FAMILIES["mmdit"]
    data = family.open_dataset(spec, "latents/")   # a latent dataset; refuses a latent_dim mismatch
    built = family.build(spec, data.vocab)          # Built(model, objective, extras)
    family.bind_dataset(built, data)                # latent statistics, length histogram, encoder record
    out = family.generate(built, LatentSampleConfig(mode="l2t"), latents=z)

Besides the `Family` protocol (`build`, `generate`) these families offer two hooks the training loop
calls when present: `open_dataset(spec, directory, verify)` (their data is a `latent-dataset`, not a
token `dataset`) and `bind_dataset(built, dataset)`; and the objective offers `set_step(step)`.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Generic, TypeVar

import numpy as np
import torch
from pydantic import BaseModel
from torch import Tensor

from mmdlm.config.latent import (
    CrossDiTSpec,
    EncoderConfig,
    LatentDiTSpec,
    LatentSampleConfig,
    MMDiTSpec,
)
from mmdlm.config.sample import SampleConfig
from mmdlm.data.latent import LatentDataset, check_latent_dim, manifest_format
from mmdlm.diffusion.base import VocabLayout
from mmdlm.diffusion.gaussian import GaussianDiffusion
from mmdlm.diffusion.latent_objective import LatentConditionedTextObjective, MMDiTObjective
from mmdlm.diffusion.masked import MaskedProcess
from mmdlm.families import Built
from mmdlm.sampling.latent import LatentSampleOutput, sample_joint, sample_l2t, sample_t2l

SpecT = TypeVar("SpecT", bound=BaseModel)

TEXT_GROUP = ("token_embed", "position_embed", "text_head", "final_norm.0")
LATENT_GROUP = ("latent_encoder", "latent_head", "final_norm.1")


class LatentFamily(Generic[SpecT]):
    name: str
    spec_type: type[SpecT]
    default_mode: str = "l2t"

    def parse(self, spec: SpecT | dict[str, Any]) -> SpecT:
        if isinstance(spec, self.spec_type):
            return spec
        if isinstance(spec, BaseModel):
            spec = spec.model_dump()
        return self.spec_type.model_validate(spec)

    # ---- data hooks ------------------------------------------------------------------------------------
    def open_dataset(
        self, spec: SpecT | dict[str, Any], directory: str | Path, verify: bool = True
    ) -> LatentDataset:
        """Open the training data and refuse, before any model is built, a latent width or encoder that
        does not match the spec."""
        spec = self.parse(spec)
        fmt = manifest_format(directory)
        if fmt == "mmdlm.tokens/v1":
            raise ValueError(
                f"family {self.name!r} trains on a latent dataset, but {directory} is a token dataset; "
                f"build one with `mmdlm encode {directory} <out>` and set data.dataset to it"
            )
        dataset = LatentDataset.open(directory, verify=verify)
        check_latent_dim(spec.model.latent_dim, dataset, self.name)  # type: ignore[attr-defined]
        encoder: EncoderConfig | None = spec.encoder  # type: ignore[attr-defined]
        if encoder is not None and encoder.name != dataset.encoder_name:
            raise ValueError(
                f"{self.name}: spec.encoder.name={encoder.name!r} but {directory} was encoded with "
                f"{dataset.encoder_name!r}; remove spec.encoder or use matching data"
            )
        return dataset

    def bind_dataset(self, built: Built, dataset: LatentDataset) -> None:
        """Load the dataset's latent statistics and length histogram into the model, and record the
        encoder in the spec (so a saved model can encode texts it is conditioned on)."""
        spec = built.extras["spec"]
        model = built.model
        mean, std = dataset.stats()
        model.latent_norm.load_stats(torch.from_numpy(mean), torch.from_numpy(std))
        counts = _length_counts(dataset, model.length_counts.numel() - 1)
        model.length_counts.copy_(torch.from_numpy(counts))
        if spec.encoder is None:
            spec.encoder = encoder_config_from_manifest(dataset.manifest.encoder)
            spec.encoder_role = dataset.manifest.role

    # ---- sampling helpers ------------------------------------------------------------------------------
    def _lengths(
        self, built: Built, n: int, seq_len: int, lengths: Tensor | None, generator: torch.Generator
    ) -> Tensor:
        if lengths is not None:
            lengths = torch.as_tensor(lengths, dtype=torch.long).reshape(-1)
            if lengths.numel() != n:
                raise ValueError(f"lengths has {lengths.numel()} entries, expected {n}")
            return lengths
        counts = built.model.length_counts[1 : seq_len + 1].float().cpu()
        if float(counts.sum()) <= 0:  # not trained on data with a histogram: full rows
            return torch.full((n,), seq_len, dtype=torch.long)
        return torch.multinomial(counts, n, replacement=True, generator=generator) + 1

    def _config(self, config: SampleConfig | LatentSampleConfig) -> LatentSampleConfig:
        if isinstance(config, LatentSampleConfig):
            return config
        return LatentSampleConfig(
            mode=self.default_mode,  # type: ignore[arg-type]
            num_samples=config.num_samples,
            seq_len=config.seq_len,
            text_steps=config.steps,
            temperature=max(config.temperature, 1e-6),
            seed=config.seed,
        )


def encoder_config_from_manifest(info: dict[str, Any]) -> EncoderConfig:
    from mmdlm.encoders import get_recipe

    recipe = get_recipe(str(info["name"]))
    model = info.get("model")
    return EncoderConfig(
        name=recipe.name,  # type: ignore[arg-type]
        model=None if model in (None, recipe.model_id) else str(model),
        revision=None if info.get("revision") in (None, "local") else str(info["revision"]),
        dim=int(info["dim"]) if recipe.matryoshka and int(info["dim"]) != recipe.dim else None,
        max_tokens=None if info.get("max_tokens") in (None, recipe.max_tokens) else int(info["max_tokens"]),
        instruction=info.get("instruction"),
        precision=info.get("precision", "fp32"),
    )


def _length_counts(dataset: LatentDataset, max_len: int) -> np.ndarray:
    counts = np.zeros(max_len + 1, dtype=np.float64)
    split = dataset.split("train")
    for start in range(0, len(split), 8192):
        mask = split.get_batch(np.arange(start, min(start + 8192, len(split))))["attention_mask"]
        counts += np.bincount(mask.sum(1), minlength=max_len + 1)[: max_len + 1]
    return counts.astype(np.float32)


def _freeze(model: torch.nn.Module, groups: list[str]) -> None:
    """Freeze only what the config lists (B4); names follow `mmdlm.models.mmdit`."""
    prefixes = {"text": TEXT_GROUP, "latent": LATENT_GROUP}
    for name, param in model.named_parameters():
        if any(name.startswith(p) for g in groups for p in prefixes[g]):
            param.requires_grad_(False)


class MMDiTFamily(LatentFamily[MMDiTSpec]):
    name = "mmdit"
    spec_type = MMDiTSpec
    default_mode = "joint"

    def build(self, spec: MMDiTSpec | dict[str, Any], vocab: Any) -> Built:
        from mmdlm.models.mmdit import MMDiT

        spec = self.parse(spec)
        layout = VocabLayout.from_vocab(vocab)
        text = MaskedProcess(layout, spec.objective.text)
        gaussian = GaussianDiffusion(spec.objective.latent)
        model = MMDiT(spec.model, layout.rows, spec.objective.latent.normalization)
        _freeze(model, list(spec.objective.freeze_groups))
        objective = MMDiTObjective(text, gaussian, spec.objective)
        extras = {
            "text_process": text,
            "latent_process": gaussian,
            "process": text,
            "layout": layout,
            "spec": spec,
        }
        return Built(model=model, objective=objective, extras=extras)

    def generate(
        self,
        built: Built,
        config: SampleConfig | LatentSampleConfig,
        *,
        latents: Tensor | np.ndarray | None = None,
        text_ids: Tensor | None = None,
        text_mask: Tensor | None = None,
        lengths: Tensor | None = None,
        prompt_ids: Tensor | None = None,
        infill: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> LatentSampleOutput:
        """One call for every mode (`config.mode`): l2t (given `latents` (N, D) in encoder space, or
        unconditional when None), t2l (given `text_ids` (N, L) and `text_mask`), joint (neither)."""
        if prompt_ids is not None or infill is not None:
            raise ValueError("prompts and infilling are not supported by the mmdit family; use mode=l2t/t2l")
        cfg = self._config(config)
        model = built.model
        text: MaskedProcess = built.extras["text_process"]
        gaussian: GaussianDiffusion = built.extras["latent_process"]
        device = next(model.parameters()).device
        gen = generator or torch.Generator().manual_seed(cfg.seed)
        seq_len = cfg.seq_len or model.config.max_seq_len
        if seq_len > model.config.max_seq_len:
            raise ValueError(f"seq_len={seq_len} exceeds model.max_seq_len={model.config.max_seq_len}")
        norm = model.latent_norm
        start = time.perf_counter()
        protocol = _protocol(cfg, built)
        if cfg.mode == "t2l":
            if text_ids is None:
                raise ValueError("mode t2l needs text_ids (N, L) (tokenised conditioning text)")
            ids = text_ids.to(device).long()
            mask = (
                torch.ones_like(ids, dtype=torch.bool) if text_mask is None else text_mask.to(device).bool()
            )

            def latent_fn(tok: Tensor, m: Tensor, z: Tensor, t: Tensor, drop: Tensor | None) -> Tensor:
                zeros = torch.zeros(tok.shape[0], device=device)
                return model(tok, z, zeros, t, attention_mask=m, drop_text=drop)[1]

            x0, nfe = sample_t2l(
                latent_fn, gaussian, ids, mask, (len(ids), 1, model.config.latent_dim), steps=cfg.latent_steps,
                sampler=cfg.latent_sampler, eta=cfg.eta, guidance_scale=cfg.guidance_scale,
                clip_x0=cfg.clip_x0, generator=gen,
            )  # fmt: skip
            out_latents = _to_encoder_space(norm, x0[:, 0], cfg.normalize_latent)
            return LatentSampleOutput(
                tokens=ids.cpu(), nfe=nfe, elapsed_s=time.perf_counter() - start, steps=cfg.latent_steps,
                latents=out_latents.cpu(), mode="t2l", protocol=protocol,
            )  # fmt: skip
        if cfg.mode == "l2t":
            cond = (
                None
                if latents is None
                else norm.normalize(torch.as_tensor(latents, dtype=torch.float32).to(device))
            )
            n = cfg.num_samples if cond is None else cond.shape[0]
            lens = self._lengths(built, n, seq_len, lengths, gen).to(device)

            def text_fn(zt: Tensor, t: Tensor, m: Tensor, z: Tensor | None, drop: Tensor | None) -> Tensor:
                zeros = torch.zeros(zt.shape[0], device=device)
                return model(
                    zt, None if z is None else z[:, None], t, zeros, attention_mask=m, drop_latent=drop
                )[0]

            tokens, nfe = sample_l2t(
                text_fn, text, lens, seq_len, cond, steps=cfg.text_steps, sampler=cfg.text_sampler,
                temperature=cfg.temperature, guidance_scale=cfg.guidance_scale, generator=gen,
            )  # fmt: skip
            return LatentSampleOutput(
                tokens=tokens.cpu(), nfe=nfe, elapsed_s=time.perf_counter() - start, steps=cfg.text_steps,
                latents=None if latents is None else torch.as_tensor(latents, dtype=torch.float32).cpu(),
                mode="l2t", protocol=protocol,
            )  # fmt: skip
        lens = self._lengths(built, cfg.num_samples, seq_len, lengths, gen).to(device)

        def joint_fn(zt: Tensor, t: Tensor, m: Tensor, z: Tensor, t_lat: Tensor) -> tuple[Tensor, Tensor]:
            return model(zt, z, t, t_lat, attention_mask=m)

        tokens, x0, nfe = sample_joint(
            joint_fn, text, gaussian, lens, seq_len, (len(lens), 1, model.config.latent_dim), steps=cfg.text_steps,
            latent_sampler=cfg.latent_sampler, eta=cfg.eta, temperature=cfg.temperature, clip_x0=cfg.clip_x0,
            generator=gen,
        )  # fmt: skip
        return LatentSampleOutput(
            tokens=tokens.cpu(), nfe=nfe, elapsed_s=time.perf_counter() - start, steps=cfg.text_steps,
            latents=_to_encoder_space(norm, x0[:, 0], cfg.normalize_latent).cpu(), mode="joint", protocol=protocol,
        )  # fmt: skip


def _to_encoder_space(norm: torch.nn.Module, x0: Tensor, unit: bool) -> Tensor:
    z = norm.denormalize(x0.float())
    return torch.nn.functional.normalize(z, dim=-1) if unit else z


def _protocol(cfg: LatentSampleConfig, built: Built) -> dict[str, Any]:
    spec = built.extras["spec"]
    return {
        "family": spec.family,
        "sample": cfg.model_dump(mode="json"),
        "text_process": built.extras["text_process"].describe(),
        "latent_process": (
            built.extras["latent_process"].config.model_dump(mode="json")
            if "latent_process" in built.extras
            else None
        ),
        "encoder": spec.encoder.model_dump(mode="json") if spec.encoder is not None else None,
    }


class _DiTFamily(LatentFamily[SpecT]):
    """Shared by `latent-dit` and `cross-dit`: text generation conditioned on a latent (l2t only)."""

    model_cls: Any

    def build(self, spec: SpecT | dict[str, Any], vocab: Any) -> Built:
        spec = self.parse(spec)
        layout = VocabLayout.from_vocab(vocab)
        objective_cfg = spec.objective  # type: ignore[attr-defined]
        text = MaskedProcess(layout, objective_cfg.text)
        model = self.model_cls(spec.model, layout.rows, objective_cfg.latent_normalization)  # type: ignore[attr-defined]
        objective = LatentConditionedTextObjective(text, objective_cfg)
        extras = {"text_process": text, "process": text, "layout": layout, "spec": spec}
        return Built(model=model, objective=objective, extras=extras)

    def generate(
        self,
        built: Built,
        config: SampleConfig | LatentSampleConfig,
        *,
        latents: Tensor | np.ndarray | None = None,
        lengths: Tensor | None = None,
        prompt_ids: Tensor | None = None,
        infill: Tensor | None = None,
        generator: torch.Generator | None = None,
        **_: Any,
    ) -> LatentSampleOutput:
        """Text from `latents` (N, D) in encoder space (l2t), or unconditional text when None."""
        if prompt_ids is not None or infill is not None:
            raise ValueError(f"prompts and infilling are not supported by the {self.name} family")
        cfg = self._config(config)
        if cfg.mode != "l2t":
            raise ValueError(
                f"family {self.name} only generates text from a latent (mode l2t), got {cfg.mode!r}"
            )
        model = built.model
        device = next(model.parameters()).device
        gen = generator or torch.Generator().manual_seed(cfg.seed)
        seq_len = cfg.seq_len or model.config.max_seq_len
        cond = (
            None
            if latents is None
            else model.latent_norm.normalize(torch.as_tensor(latents, dtype=torch.float32).to(device))
        )
        n = cfg.num_samples if cond is None else cond.shape[0]
        lens = self._lengths(built, n, seq_len, lengths, gen).to(device)

        def text_fn(zt: Tensor, t: Tensor, m: Tensor, z: Tensor | None, drop: Tensor | None) -> Tensor:
            return model(zt, t, m, latent=z, drop_latent=drop)

        start = time.perf_counter()
        tokens, nfe = sample_l2t(
            text_fn, built.extras["text_process"], lens, seq_len, cond, steps=cfg.text_steps,
            sampler=cfg.text_sampler, temperature=cfg.temperature, guidance_scale=cfg.guidance_scale, generator=gen,
        )  # fmt: skip
        return LatentSampleOutput(
            tokens=tokens.cpu(), nfe=nfe, elapsed_s=time.perf_counter() - start, steps=cfg.text_steps,
            latents=None if latents is None else torch.as_tensor(latents, dtype=torch.float32).cpu(),
            mode="l2t", protocol=_protocol(cfg, built),
        )  # fmt: skip


class LatentDiTFamily(_DiTFamily[LatentDiTSpec]):
    name = "latent-dit"
    spec_type = LatentDiTSpec

    @property
    def model_cls(self) -> Any:  # type: ignore[override]
        from mmdlm.models.latent_dit import LatentDiT

        return LatentDiT


class CrossDiTFamily(_DiTFamily[CrossDiTSpec]):
    name = "cross-dit"
    spec_type = CrossDiTSpec

    @property
    def model_cls(self) -> Any:  # type: ignore[override]
        from mmdlm.models.latent_dit import CrossDiT

        return CrossDiT


FAMILIES: dict[str, LatentFamily[Any]] = {
    "mmdit": MMDiTFamily(),
    "latent-dit": LatentDiTFamily(),
    "cross-dit": CrossDiTFamily(),
}
