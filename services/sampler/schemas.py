"""Request and response models of the sampler service (torch-free: the job kinds import them too).

`SamplingParams` is the one description of "how to sample" shared by `POST /v1/generate`, the extra
fields of `POST /v1/completions` and `kind: sample` jobs, so that the same settings mean the same samples
whichever way they are asked for.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from mmdlm.config.base import INT32_MAX, StrictModel
from mmdlm.config.latent import EncoderConfig

Mode = Literal["unconditional", "prefix", "infill", "l2t", "t2l", "joint", "t2i", "i2t"]
MAX_SEED = 2**63 - 1
EXAMPLE_MODEL = "0f8e5c1d2b3a4e6f8a9b0c1d2e3f4a5b"
MAX_STEPS = 1_000_000
"""Schema bound of any step count (the service's own limit, MMDLM_SAMPLER_MAX_STEPS, is lower)."""
MAX_LIST = 65_536
"""Schema bound of token/latent/template lists (the model's context refuses far fewer)."""
TokenId = Annotated[int, Field(ge=0, le=INT32_MAX)]
Gap = Annotated[int, Field(le=MAX_LIST)]
MAX_IMAGE_TEXT = 16 << 20
"""Schema bound of an uploaded base64 image (the service's own limit, MMDLM_SAMPLER_MAX_IMAGE_BYTES, is lower)."""


class RequestError(Exception):
    """A request the service refuses: HTTP `status` with a message that names the `field`."""

    def __init__(self, field: str, message: str, status: int = 422) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message
        self.status = status

    def body(self) -> dict[str, Any]:
        return {
            "detail": str(self),
            "errors": [{"field": self.field, "message": self.message, "type": "request"}],
        }


class SamplingParams(StrictModel):
    """How to sample. Diffusion fields are ignored by nothing: a field that does not apply to the model's
    family is refused (`sampler: topk` on an MDLM model, for instance), never silently dropped."""

    steps: int = Field(64, ge=1, le=MAX_STEPS)
    """Reverse steps (discrete diffusion) or text steps (latent families); AR takes one call per token."""
    sampler: Literal["ancestral", "cached", "topk"] = "ancestral"
    """ancestral: exact ancestral steps; cached: MDLM's ddpm_cache (skip the network while nothing changed;
    discrete families); topk: confidence top-k reveal (latent families)."""
    temperature: float = Field(1.0, ge=0.0)
    """0 is greedy (argmax) for discrete and AR models."""
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    min_p: float = Field(0.0, ge=0.0, lt=1.0)
    float64: bool = True
    """Step probabilities and categorical draws in float64 (the evaluation default)."""
    precision: Literal["fp32", "bf16"] = "fp32"
    """Network forward precision (bf16 autocast); the draws keep the dtype `float64` asks for."""
    self_correction_steps: int = Field(0, ge=0, le=4096)
    """Discrete diffusion: self-correction iterations after sampling (0 = off)."""
    latent_steps: int = Field(50, ge=1, le=MAX_STEPS)
    """Latent families: Gaussian steps for the latent (t2l, joint)."""
    latent_sampler: Literal["ddim", "ddpm"] = "ddim"
    eta: float = Field(0.0, ge=0.0, le=1.0)
    guidance_scale: float = Field(1.0, ge=0.0, le=1000.0)
    """Latent families: classifier-free guidance on the generated modality (1 = off)."""

    def protocol(self) -> dict[str, Any]:
        return self.model_dump(mode="json", include=set(SamplingParams.model_fields))


class GenerateRequest(SamplingParams):
    """`POST /v1/generate`: one conditioning, `num_samples` samples of it.

    mode (inferred when omitted): `prefix` when a prompt is given, `infill` with an infill template,
    `l2t` with a latent or latent_text, `t2l` with a text, else `unconditional` (token families) or the
    family's own default (`joint` for mmdit, `l2t` unconditional for latent-dit / cross-dit).
    Image models (image-mmdit): `t2i` with a caption, `i2t` with an image (base64 PNG), else `joint`;
    samples then carry base64 PNG images and captions.
    """

    model_config = ConfigDict(json_schema_extra={"examples": [
        {"model": EXAMPLE_MODEL, "prompt": "The castle", "num_samples": 2, "steps": 64, "seed": 7},
        {"model": EXAMPLE_MODEL, "infill": ["The castle", 6, "was built in", 3, "."], "sampler": "cached"},
    ]})  # fmt: skip

    model: str = Field(min_length=1, max_length=64)
    """Id of a `model` artifact (see GET /v1/models)."""
    mode: Mode | None = None
    num_samples: int = Field(1, ge=1, le=MAX_LIST)
    seq_len: int | None = Field(None, ge=1, le=MAX_LIST)
    """Sample length in tokens (BOS and prompt included); default: the model's training context."""
    seed: int | None = Field(None, ge=0, le=MAX_SEED)
    """Same seed, same request -> same samples, whatever else is batched with it. None: drawn and returned."""
    prompt: str | None = None
    """Text the samples start with (the document's BOS is added)."""
    prompt_ids: list[TokenId] | None = Field(None, max_length=MAX_LIST)
    """Alternative to `prompt`: token ids of the start of the row (BOS included if wanted)."""
    infill: list[str | Gap] | None = Field(None, max_length=MAX_LIST)
    """Infilling template: strings are given text, integers are that many tokens to generate, e.g.
    ["The castle", 6, "was built in", 3, "."]; positions past the template up to seq_len are generated."""
    latent: list[float] | None = Field(None, max_length=MAX_LIST)
    """l2t: the latent (encoder space) every sample is generated from; its length must be the model's."""
    latent_text: str | None = None
    """l2t: a text encoded with the model's own encoder first; its latent conditions the samples."""
    text: str | None = None
    """t2l: the text whose latent is generated."""
    length: int | None = Field(None, ge=1, le=MAX_LIST)
    """l2t / joint: tokens per sample (default: drawn from the training data's length histogram)."""
    caption: str | None = Field(None, min_length=1, max_length=MAX_LIST)
    """Image models, t2i: the caption every image is drawn for (words of the model's caption vocabulary)."""
    image: str | None = Field(None, min_length=1, max_length=MAX_IMAGE_TEXT)
    """Image models, i2t: the image to caption, a base64 PNG (a `data:image/png;base64,` prefix is allowed);
    resized (shorter side) and centre-cropped to the model's image size."""
    image_guidance_scale: float | None = Field(None, ge=0.0, le=1000.0)
    """Image models, t2i: classifier-free guidance of the image on the caption (None: `guidance_scale`)."""
    caption_guidance_scale: float | None = Field(None, ge=0.0, le=1000.0)
    """Image models, i2t: classifier-free guidance of the caption on the image (None: `guidance_scale`)."""
    return_token_ids: bool = True

    @model_validator(mode="after")
    def _one_prompt(self) -> GenerateRequest:
        if self.prompt is not None and self.prompt_ids is not None:
            raise ValueError("give either prompt (text) or prompt_ids, not both")
        if self.latent is not None and self.latent_text is not None:
            raise ValueError("give either latent (a vector) or latent_text (encoded first), not both")
        return self


class StreamRequest(GenerateRequest):
    """`POST /v1/generate/stream`: the same request; intermediate states arrive as server-sent events."""

    stream_every: int | None = Field(None, ge=1, le=MAX_STEPS)
    """Send every k-th state (default: about MMDLM_SAMPLER_STREAM_MAX_STATES states in all)."""


class SamplePublic(BaseModel):
    index: int
    text: str = Field(
        description="the sample's text; image models: its caption (given for t2i, generated otherwise)"
    )
    token_ids: list[int] | None = None
    latent: list[float] | None = None
    image: str | None = Field(
        None, description="image models, t2i / joint: the generated image, a base64 PNG"
    )


class GenerateResponse(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "id": "gen-5f1c", "object": "generation", "created": 1767261600, "model": EXAMPLE_MODEL, "family": "mdlm",
        "mode": "prefix", "samples": [{"index": 0, "text": "The castle was built in 1200.", "token_ids": [1, 412, 77]}],
        "seed": 7, "seq_len": 32, "steps": 64, "nfe": 64, "tokens": 28, "tokens_per_s": 950.0, "elapsed_s": 0.03,
        "queue_s": 0.004, "batch_requests": 1, "batch_rows": 2, "settings": {"steps": 64, "sampler": "ancestral"},
    }]})  # fmt: skip

    id: str
    object: Literal["generation"] = "generation"
    created: int
    model: str
    family: str
    mode: str
    samples: list[SamplePublic]
    seed: int
    seq_len: int
    steps: int = Field(description="reverse steps per sample (0 for AR: one network call per token)")
    image_size: int | None = Field(None, description="image models: side of the square images, in pixels")
    channels: int | None = Field(None, description="image models: 1 (grey) or 3 (RGB)")
    nfe: int = Field(description="network calls made for this request's batch")
    tokens: int = Field(description="tokens generated for this request (given positions excluded)")
    tokens_per_s: float = Field(description="tokens / the batch's sampling time")
    elapsed_s: float = Field(description="sampling time of the batch this request ran in")
    queue_s: float = Field(description="time from arrival to the start of its batch")
    batch_requests: int = Field(description="requests sampled together in one network batch")
    batch_rows: int
    settings: dict[str, Any] = Field(description="the full sampling protocol of these samples")


# --- OpenAI-compatible completions ---------------------------------------------------------------------------


class CompletionRequest(SamplingParams):
    """`POST /v1/completions` in the OpenAI shape; the diffusion settings (steps, sampler, min_p, float64,
    precision, ...) are extra fields. `suffix` makes a diffusion model infill between prompt and suffix."""

    model_config = ConfigDict(json_schema_extra={"examples": [
        {"model": EXAMPLE_MODEL, "prompt": "Once upon a time", "max_tokens": 16, "n": 2, "steps": 32},
        {"model": EXAMPLE_MODEL, "prompt": "The king", "suffix": "in the end.", "max_tokens": 8, "stream": True},
    ]})  # fmt: skip

    model: str = Field(min_length=1, max_length=64)
    prompt: (
        str
        | Annotated[list[str], Field(max_length=MAX_LIST)]
        | Annotated[list[int], Field(max_length=MAX_LIST)]
        | Annotated[list[Annotated[list[int], Field(max_length=MAX_LIST)]], Field(max_length=MAX_LIST)]
    ) = ""
    """A text, texts, token ids, or lists of token ids; prompts x n is at most MMDLM_SAMPLER_MAX_SAMPLES."""
    suffix: str | None = None
    max_tokens: int = Field(16, ge=1, le=MAX_LIST)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    n: int = Field(1, ge=1, le=MAX_LIST)
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=0, le=MAX_SEED)
    echo: bool = False
    logprobs: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    best_of: int | None = None
    logit_bias: dict[str, float] | None = None
    user: str | None = None

    @field_validator("stop")
    @classmethod
    def _stops(cls, stop: str | list[str] | None) -> list[str] | None:
        if stop is None:
            return None
        stops = [stop] if isinstance(stop, str) else list(stop)
        if len(stops) > 4 or any(not s for s in stops):
            raise ValueError("up to 4 non-empty stop sequences")
        return stops

    @model_validator(mode="after")
    def _supported(self) -> CompletionRequest:
        unsupported = {
            "logprobs": self.logprobs is not None,
            "presence_penalty": self.presence_penalty != 0,
            "frequency_penalty": self.frequency_penalty != 0,
            "best_of": self.best_of not in (None, self.n),
            "logit_bias": bool(self.logit_bias),
        }
        bad = [name for name, flag in unsupported.items() if flag]
        if bad:
            raise ValueError(f"not supported by diffusion sampling: {', '.join(bad)} (leave at the default)")
        return self

    def prompts(self) -> list[str | list[int]]:
        """One entry per prompt: a text or a list of token ids."""
        p = self.prompt
        if isinstance(p, str):
            return [p]
        if p and all(isinstance(x, int) for x in p):
            return [list(p)]  # type: ignore[arg-type]
        return list(p) if p else [""]  # type: ignore[arg-type]


class CompletionChoice(BaseModel):
    text: str
    index: int
    logprobs: None = None
    finish_reason: Literal["stop", "length"] | None


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class CompletionResponse(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "id": "cmpl-5f1c", "object": "text_completion", "created": 1767261600, "model": EXAMPLE_MODEL,
        "choices": [{"text": " there was a king", "index": 0, "logprobs": None, "finish_reason": "length"}],
        "usage": {"prompt_tokens": 4, "completion_tokens": 16, "total_tokens": 20},
        "diffusion": {"steps": 32, "nfe": 32, "seed": 7},
    }]})  # fmt: skip

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage
    system_fingerprint: str | None = None
    diffusion: dict[str, Any] = Field(
        default_factory=dict, description="steps, nfe, tokens/s, seed, settings"
    )


# --- embeddings ----------------------------------------------------------------------------------------------


class EmbedRequest(StrictModel):
    """`POST /v1/embed`: sentence embeddings of a small batch (limits: MMDLM_SAMPLER_EMBED_MAX_BATCH texts,
    MMDLM_SAMPLER_EMBED_MAX_CHARS characters each)."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"texts": ["a castle on a hill"], "encoder": "minilm"}]}
    )

    texts: list[str] = Field(min_length=1, max_length=MAX_LIST)
    encoder: EncoderConfig = Field(default_factory=EncoderConfig)
    """A recipe name (`"minilm"`) or an EncoderConfig; the device is the sampler's."""
    role: Literal["passage", "query"] = "passage"

    @field_validator("encoder", mode="before")
    @classmethod
    def _name_shorthand(cls, value: object) -> object:
        return {"name": value} if isinstance(value, str) else value


class Embedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float]


class EmbedResponse(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "object": "list", "data": [{"object": "embedding", "index": 0, "embedding": [0.01, -0.2, 0.05]}],
        "encoder": {"name": "minilm"}, "dim": 384, "elapsed_s": 0.01}]})  # fmt: skip

    object: Literal["list"] = "list"
    data: list[Embedding]
    encoder: dict[str, Any]
    dim: int
    elapsed_s: float
