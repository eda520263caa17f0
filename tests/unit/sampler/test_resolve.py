"""Requests are refused before any compute, with the field that is wrong and the limit or fix."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from pydantic import ValidationError

from mmdlm import precision as precision_module
from services.sampler.cache import LoadedModel
from services.sampler.resolve import resolve
from services.sampler.schemas import CompletionRequest, GenerateRequest, RequestError
from services.sampler.settings import SamplerSettings

LIMITS = SamplerSettings(_env_file=None, max_samples=4, max_steps=100, max_prompt_chars=50)  # type: ignore[call-arg]


def refused(model: LoadedModel, **fields: object) -> RequestError:
    with pytest.raises(RequestError) as info:
        resolve(model, GenerateRequest(model="m", **fields), LIMITS)  # type: ignore[arg-type]
    return info.value


@pytest.mark.parametrize(
    ("family", "fields", "field", "words"),
    [
        ("mdlm", {"num_samples": 5}, "num_samples", "limit of 4"),
        ("mdlm", {"steps": 101}, "steps", "MMDLM_SAMPLER_MAX_STEPS"),
        ("mdlm", {"sampler": "topk"}, "sampler", "ancestral or cached"),
        ("ar", {"sampler": "cached"}, "sampler", "ar family"),
        ("ar", {"infill": ["a", 3]}, "mode", "cannot generate 'infill'"),
        ("mdlm", {"mode": "t2l"}, "mode", "supported: unconditional, prefix, infill"),
        ("mdlm", {"seq_len": 33}, "seq_len", "max_seq_len of 32"),
        ("mdlm", {"prompt": "x" * 51}, "prompt", "MMDLM_SAMPLER_MAX_PROMPT_CHARS"),
        ("mdlm", {"prompt": "the king and the queen", "seq_len": 3}, "prompt", "no room to generate"),
        ("mdlm", {"prompt_ids": [5, 99999]}, "prompt_ids", "id 99999"),
        ("mdlm", {"infill": ["a", 0]}, "infill[1]", "at least 1 token"),
        ("mdlm", {"infill": ["only given text", 2], "seq_len": 3}, "infill", "more than seq_len"),
        ("mdlm", {"infill": ["only given text"]}, "infill", "no gap"),
        ("mdlm", {"latent": [0.0] * 8}, "mode", "cannot generate 'l2t'"),
        ("mdlm", {"mode": "prefix", "text": "a"}, "text", "does not apply to mode 'prefix'"),
        ("mmdit", {"latent": [0.0] * 7}, "latent", "latent dimension is 8"),
        ("mmdit", {"mode": "t2l"}, "text", "needs the text"),
        ("mmdit", {"latent_text": "hello"}, "latent_text", "no sentence encoder"),
        ("mmdit", {"mode": "l2t", "length": 40}, "length", "longer than seq_len"),
        ("latent-dit", {"mode": "joint"}, "mode", "supported: unconditional, l2t"),
        ("latent-dit", {"self_correction_steps": 2}, "self_correction_steps", "discrete"),
    ],
)
def test_bad_requests_name_the_field(
    family: str, fields: dict[str, object], field: str, words: str, load_model: Callable[[str], LoadedModel]
) -> None:
    error = refused(load_model(family), **fields)
    assert error.field == field and words in error.message, error
    assert error.status == 422


def test_schema_refuses_non_finite_latents() -> None:
    """NaN/Infinity never reach the resolver: the edge policy of every StrictModel refuses them."""
    with pytest.raises(ValidationError, match="finite"):
        GenerateRequest(model="m", latent=[float("nan")] * 8)


def test_schema_refuses_nonpositive_steps_and_unknown_fields() -> None:
    with pytest.raises(ValidationError, match="steps"):
        GenerateRequest(model="m", steps=0)
    with pytest.raises(ValidationError, match="stepz"):
        GenerateRequest(model="m", stepz=3)  # type: ignore[call-arg]
    with pytest.raises(ValidationError, match="either prompt"):
        GenerateRequest(model="m", prompt="a", prompt_ids=[1])
    with pytest.raises(ValidationError, match="logprobs"):
        CompletionRequest(model="m", logprobs=2)
    assert CompletionRequest(model="m", stop="\n").stop == ["\n"]


@pytest.mark.parametrize(
    ("family", "fields", "mode"),
    [
        ("mdlm", {}, "unconditional"),
        ("mdlm", {"prompt": "The"}, "prefix"),
        ("mdlm", {"infill": ["The", 2]}, "infill"),
        ("ar", {"prompt": "The"}, "prefix"),
        ("mmdit", {}, "joint"),
        ("mmdit", {"latent": [0.0] * 8}, "l2t"),
        ("mmdit", {"text": "a tree"}, "t2l"),
        ("latent-dit", {}, "l2t"),
        ("cross-dit", {"mode": "unconditional"}, "l2t"),
    ],
)
def test_modes_are_inferred(
    family: str, fields: dict[str, object], mode: str, load_model: Callable[[str], LoadedModel]
) -> None:
    job = resolve(load_model(family), GenerateRequest(model="m", **fields), LIMITS)  # type: ignore[arg-type]
    assert job.mode == mode
    assert 0 <= job.seed < 2**31  # drawn when the request has none


def test_defaults_follow_the_model(load_model: Callable[[str], LoadedModel]) -> None:
    model = load_model("mdlm")
    job = resolve(model, GenerateRequest(model="m", prompt="The king", seed=7), LIMITS)
    assert job.seq_len == model.context == 32 and job.seed == 7
    assert job.prompt_ids is not None and job.prompt_ids[0] == model.pipe.vocab.bos_id
    assert job.given == job.prompt_ids.shape[-1]
    # special-token strings in a prompt are text, never the special ids
    job = resolve(model, GenerateRequest(model="m", prompt="[MASK] [PAD]"), LIMITS)
    vocab = model.pipe.vocab
    assert not ({vocab.mask_id, vocab.pad_id} & set(job.prompt_ids.tolist()))


@pytest.mark.parametrize("fast", [True, False])
def test_bf16_runs_in_fp32_where_it_is_slow(
    fast: bool, load_model: Callable[[str], LoadedModel], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bf16 request on a device without native bf16 samples in fp32 (as training and evaluation do), and
    the job's protocol, which the samples are reported with, names fp32."""
    monkeypatch.setattr(precision_module, "has_fast_bf16", lambda device_type: fast)
    job = resolve(load_model("mdlm"), GenerateRequest(model="m", precision="bf16"), LIMITS)
    assert job.params.precision == ("bf16" if fast else "fp32")
    assert job.params.protocol()["precision"] == job.params.precision
