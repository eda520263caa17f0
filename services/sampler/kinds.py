"""Job kinds of the `sample` queue: `sample` (a large sample set into the object store) and `evaluate`
(the evaluation protocol of `mmdlm.eval` on a `model` artifact). Imported by the API: keep it torch-free.

    {"kind": "sample", "model": "<model artifact>", "num_samples": 10000, "steps": 256, "seed": 0}
    {"kind": "evaluate", "model": "<model artifact>", "dataset": "<dataset artifact>",
     "generative": {"sample": {"num_samples": 64, "steps": 128}, "steps_sweep": [16, 64, 256]}}
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, model_validator

from mmdlm.config.base import StrictModel
from mmdlm.config.eval import GenerativeEvalConfig
from mmdlm.config.latent import ImageEvalConfig, LatentSampleConfig
from services.common.crud import require_artifact
from services.common.errors import FieldError
from services.common.kinds import JobKind, register
from services.common.paths import check_user_paths
from services.sampler.families import FAMILY_KINDS, SAMPLE_JOB_MODES, family_kind, modes_of
from services.sampler.schemas import MAX_SEED, Mode, SamplingParams

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from services.common.auth import Principal


def _model_family(session: Session, user: Principal, model: str) -> str | None:
    artifact = require_artifact(session, user, model, field="model", kind="model")
    family = (artifact.meta or {}).get("family")
    if family is not None and family not in FAMILY_KINDS:
        raise FieldError("model", f"family {family!r} cannot be sampled here (known: {sorted(FAMILY_KINDS)})")
    return family


# --- sample ------------------------------------------------------------------------------------------------------


class SampleSpec(SamplingParams):
    """`kind: sample`: `num_samples` samples of a model written as a `samples` artifact (JSONL of texts and
    token ids + the sampling protocol). Chunk k (`chunk_size` rows) is drawn with seed `seed + k`, so it
    equals POST /v1/generate with that seed and the same settings. Image models (mode joint, or t2i with a
    `caption`) also write one PNG grid per chunk, and each sample's PNG and caption."""

    kind: Literal["sample"] = "sample"
    model: str = Field(min_length=1, max_length=64)
    num_samples: int = Field(64, ge=1, le=10_000_000)
    chunk_size: int = Field(64, ge=1, le=4096)
    seed: int = Field(0, ge=0, le=MAX_SEED)
    mode: Mode | None = None
    seq_len: int | None = Field(None, ge=1)
    prompt: str | None = None
    infill: list[str | int] | None = None
    length: int | None = Field(None, ge=1)
    caption: str | None = Field(None, min_length=1, max_length=10_000)
    """Image models, mode t2i: the caption every image is drawn for (`guidance_scale` guides the image)."""
    grid_columns: int = Field(8, ge=1, le=64)
    """Image models: images per row of each chunk's PNG grid."""
    grid_scale: int = Field(0, ge=0, le=32)
    """Image models: each pixel drawn as scale x scale in the grids (0: enough to make small images ~32 px)."""
    device: Literal["auto", "cpu", "cuda"] = "auto"

    @model_validator(mode="after")
    def _seed_range(self) -> SampleSpec:
        chunks = -(-self.num_samples // self.chunk_size)
        if self.seed + chunks - 1 > MAX_SEED:
            raise ValueError(f"seed + number of chunks ({chunks}) must stay below 2**63")
        return self


def check_sample(spec: SampleSpec, session: Session, user: Principal) -> None:
    family = _model_family(session, user, spec.model)
    if family is None:
        return
    kind = family_kind(family)
    modes = SAMPLE_JOB_MODES.get(kind, modes_of(family))
    if spec.mode is not None and spec.mode not in modes:
        raise FieldError(
            "mode", f"a sample job of the {family} family cannot generate {spec.mode!r}; supported: {', '.join(modes)}"
        )  # fmt: skip
    if kind == "image":
        for name in ("prompt", "infill", "length", "seq_len"):
            if getattr(spec, name) is not None:
                raise FieldError(name, f"does not apply to an image model ({family}); t2i takes `caption`")
        mode = spec.mode or ("t2i" if spec.caption is not None else "joint")
        if mode == "t2i" and spec.caption is None:
            raise FieldError("caption", "mode t2i needs the caption the images are drawn for")
        if mode != "t2i" and spec.caption is not None:
            raise FieldError("caption", f"applies to mode t2i, not {mode!r}")
    elif spec.caption is not None:
        raise FieldError("caption", f"applies to image models (image-mmdit), not {family}")


# --- evaluate ----------------------------------------------------------------------------------------------------


class LatentEvalSection(StrictModel):
    """Latent families: t2l cosine (mmdit) and l2t round trip on `num_rows` rows of the dataset's split."""

    t2l: bool = True
    l2t: bool = True
    num_rows: int = Field(64, ge=1, le=100_000)
    batch_size: int = Field(32, ge=1)
    sample: LatentSampleConfig = Field(default_factory=LatentSampleConfig)
    """Sampling settings (text_steps, latent_steps, guidance ...); the mode is set per metric."""
    l2t_guidance_scale: float | None = Field(None, ge=0.0)
    """Classifier-free guidance for the round trip's text only (None: `sample.guidance_scale`). Guidance
    sharpens text generated from a latent, while the t2l mean is best unguided (measured in the demo)."""

    def round_trip_sample(self) -> LatentSampleConfig:
        return self.sample.guided(self.l2t_guidance_scale)


class StsPair(StrictModel):
    sentence1: str = Field(min_length=1)
    sentence2: str = Field(min_length=1)
    score: float


class StsSection(StrictModel):
    """STS correlation of the model's t2l latents (mmdit): inline `pairs`, or `source: stsb` (STS-B through
    `datasets`, which needs internet or a local cache on the worker)."""

    pairs: list[StsPair] | None = Field(None, min_length=3, max_length=20_000)
    source: Literal["stsb"] | None = None
    max_pairs: int | None = Field(None, ge=3)

    @model_validator(mode="after")
    def _one_source(self) -> StsSection:
        if (self.pairs is None) == (self.source is None):
            raise ValueError("give exactly one of pairs (inline) or source: stsb")
        return self


class ImageEvalSection(ImageEvalConfig):
    """Image models (image-mmdit), against the `image-dataset`'s real validation split (`mmdlm.eval.images`):
    t2i accuracy under a classifier trained on the real train split (its own accuracy the ceiling, images
    drawn with the caption hidden the baseline), Fréchet distance on the classifier's features, and i2t
    caption accuracy (captions drawn with the image hidden the baseline)."""

    metrics: list[Literal["t2i", "frechet", "i2t"]] = Field(
        default_factory=lambda: ["t2i", "frechet", "i2t"], min_length=1, max_length=3
    )


class EvaluateSpec(StrictModel):
    """`kind: evaluate`: validation NLL/PPL (exact for AR, ELBO bound otherwise; text NLL given the clean
    latent for latent families), generative PPL with entropy under a reference LM (+ the same on real rows),
    an optional steps sweep, and for latent families t2l cosine, l2t round trip and STS. Results become
    metrics of the job and an `evaluation` artifact with the full protocol."""

    kind: Literal["evaluate"] = "evaluate"
    model: str = Field(min_length=1, max_length=64)
    dataset: str | None = Field(None, min_length=1, max_length=64)
    """A `dataset` artifact (token families), `latent-dataset` (latent families; None skips NLL) or
    `image-dataset` (image models, required)."""
    split: str = "validation"
    batch_size: int = Field(16, ge=1)
    max_batches: int | None = Field(None, ge=1)
    num_time_samples: int = Field(4, ge=1)
    precision: Literal["fp32", "bf16"] = "fp32"
    seed: int = Field(0, ge=0)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    nll: bool = True
    generative: GenerativeEvalConfig | None = Field(default_factory=GenerativeEvalConfig)
    latent: LatentEvalSection | None = Field(default_factory=LatentEvalSection)
    """Only for latent families (ignored otherwise)."""
    sts: StsSection | None = None
    images: ImageEvalSection | None = Field(default_factory=ImageEvalSection)
    """Only for image models, whose evaluation is this section alone (nll, generative, latent and sts
    apply to text and latent families and are ignored for them)."""

    def eval_config(self, dataset_dir: str | None) -> Any:
        """The library EvalConfig of this job (`dataset_dir`: the staged dataset, or None)."""
        from mmdlm.config.eval import EvalConfig

        return EvalConfig(
            dataset=dataset_dir, split=self.split, batch_size=self.batch_size, max_batches=self.max_batches,
            num_time_samples=self.num_time_samples, precision=self.precision, seed=self.seed, device=self.device,
            nll=self.nll, generative=self.generative,
        )  # fmt: skip


def check_evaluate(spec: EvaluateSpec, session: Session, user: Principal) -> None:
    check_user_paths(spec, user.name)  # a local generative.reference_model folder
    family = _model_family(session, user, spec.model)
    if family is None:
        return
    kind = family_kind(family)
    if kind == "image":
        if spec.dataset is None:
            raise FieldError("dataset", "an image model is evaluated against an `image-dataset` artifact")
        if spec.images is None:
            raise FieldError("images", "the evaluation of an image model is this section; leave it on")
        if spec.sts is not None:
            raise FieldError("sts", f"STS uses t2l latents of the mmdit family, not {family}")
        require_artifact(session, user, spec.dataset, field="dataset", kind="image-dataset")
        return
    if spec.dataset is not None:
        require_artifact(
            session,
            user,
            spec.dataset,
            field="dataset",
            kind="latent-dataset" if kind == "latent" else "dataset",
        )
    if kind == "ar" and spec.generative is not None and spec.generative.steps_sweep:
        raise FieldError("generative.steps_sweep", "an AR model has no sampling steps to sweep")
    if spec.sts is not None and family != "mmdit":
        raise FieldError(
            "sts", f"STS uses t2l latents, which only the mmdit family generates (this model: {family})"
        )


def _limits() -> dict[str, Any]:
    """Shown in /v1/kinds: the job's bounds and the sampler's per-request limits (MMDLM_SAMPLER_*)."""
    from services.sampler.settings import get_sampler_settings

    s = get_sampler_settings()
    fields = SampleSpec.model_fields
    return {
        "num_samples": fields["num_samples"].metadata[-1].le,
        "chunk_size": fields["chunk_size"].metadata[-1].le,
        "requests": {
            "samples_per_request": s.max_samples,
            "steps": s.max_steps,
            "prompt_chars": s.max_prompt_chars,
            "embed_texts": s.embed_max_batch,
            "embed_chars": s.embed_max_chars,
            "stream_states": s.stream_max_states,
            "images": s.max_images,
            "image_bytes": s.max_image_bytes,
            "image_pixels": s.max_image_pixels,
        },
    }


SAMPLE = register(
    JobKind(
        name="sample",
        spec=SampleSpec,
        queue="sample",
        runner="services.sampler.sample_job:run",
        check=check_sample,  # type: ignore[arg-type]
        permanent_errors=(ValueError,),
        description="Draw a large sample set from a `model` artifact into a `samples` artifact (JSONL + protocol).",
        extra=_limits(),
    )
)

EVALUATE = register(
    JobKind(
        name="evaluate",
        spec=EvaluateSpec,
        queue="sample",
        runner="services.sampler.evaluate:run",
        check=check_evaluate,  # type: ignore[arg-type]
        permanent_errors=(ValueError, FileNotFoundError),
        description="Evaluate a `model` artifact: NLL/PPL, generative PPL + entropy, steps sweep, latent metrics, "
        "image metrics (t2i accuracy, Fréchet distance, i2t caption accuracy); "
        "results as metrics and an `evaluation` artifact carrying the protocol.",
    )
)
