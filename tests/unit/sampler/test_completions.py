"""OpenAI completions on top of the sampler: prompts, suffix infilling, stop/EOS, usage, stream deltas."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import torch

from services.sampler.cache import LoadedModel
from services.sampler.completions import ChoiceText, build_jobs, complete_response, stream_completion
from services.sampler.schemas import CompletionRequest, RequestError
from services.sampler.settings import SamplerSettings


class FakeService:
    """The parts of SamplerService the completion helpers use, sampling in-process through the engine."""

    def __init__(self, model: LoadedModel) -> None:
        from services.sampler.batcher import MicroBatcher
        from services.sampler.engine import run_batch
        from services.sampler.service import SamplerService

        self.config = SamplerSettings(_env_file=None)  # type: ignore[call-arg]
        self.encoders = None
        self.executor = ThreadPoolExecutor(max_workers=1)
        self.batcher = MicroBatcher(
            lambda m, jobs: run_batch(m.pipe, jobs), self.executor, window_s=0.01, max_rows=64
        )
        self.model = model
        self.generated_tokens = SamplerService.generated_tokens
        self.protocol = SamplerService.protocol
        self.submit = lambda model, job: SamplerService.submit(self, model, job)  # type: ignore[arg-type]


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_choice_text_ends_at_eos_and_stop_sequences(load_model: Callable[[str], LoadedModel]) -> None:
    model = load_model("mdlm")
    vocab = model.pipe.vocab
    ids = model.tokenize(" the king said")
    row = [vocab.bos_id, 7, *ids, vocab.eos_id, *ids]
    choice = ChoiceText(model, start=2, length=len(row) - 2, stops=[], stable=True)
    text, ended, tokens = choice.text_of(row, final=True)
    assert text.strip() == "the king said" and ended and tokens == len(ids) + 1
    stop = ChoiceText(model, start=2, length=len(row) - 2, stops=["king"], stable=True)
    assert stop.finish(row) == (" the ", "stop")
    full = ChoiceText(model, start=2, length=len(ids), stops=[], stable=True)
    assert full.finish(row)[1] == "length"


def test_stable_prefix_streams_only_final_text(load_model: Callable[[str], LoadedModel]) -> None:
    model = load_model("mdlm")
    mask = model.pipe.vocab.mask_id
    ids = model.tokenize(" the king said unto them")
    choice = ChoiceText(model, start=0, length=len(ids), stops=[], stable=True)
    partial = [ids[0], ids[1], mask, ids[3], mask]
    first = choice.update(partial + ids[5:])
    assert first and "the" in first and "said" not in first  # stops at the first hidden position
    rest, reason = choice.finish(ids)
    assert first + rest == model.pipe.decode(torch.tensor([ids]))[0] and reason == "length"
    unstable = ChoiceText(model, start=0, length=len(ids), stops=[], stable=False)
    assert unstable.update(ids) == ""


def test_prompt_plus_max_tokens_past_the_context_is_refused(load_model: Callable[[str], LoadedModel]) -> None:
    service = FakeService(load_model("mdlm"))
    with pytest.raises(RequestError) as info:
        build_jobs(service, service.model, CompletionRequest(model="m", prompt="the king", max_tokens=40))  # type: ignore[arg-type]
    assert info.value.field == "max_tokens" and "context of 32" in info.value.message
    with pytest.raises(RequestError) as info:
        build_jobs(
            service, service.model, CompletionRequest(model="m", prompt="the king " * 30, max_tokens=1)
        )  # type: ignore[arg-type]
    assert info.value.field == "prompt"
    with pytest.raises(RequestError) as info:
        build_jobs(service, service.model, CompletionRequest(model="m", prompt="a", n=65, max_tokens=2))  # type: ignore[arg-type]
    assert info.value.field == "n" and "limit of 64" in info.value.message
    ar = FakeService(load_model("ar"))
    with pytest.raises(RequestError) as info:
        build_jobs(ar, ar.model, CompletionRequest(model="m", prompt="a", suffix="b", max_tokens=4))  # type: ignore[arg-type]
    assert info.value.field == "suffix"


def test_completion_response_shape_usage_and_suffix_infill(load_model: Callable[[str], LoadedModel]) -> None:
    model = load_model("mdlm")
    service = FakeService(model)
    req = CompletionRequest(model="m", prompt=["The king", "And the"], suffix=" of Egypt.", max_tokens=5, n=2, seed=3,
                            steps=6, echo=True)  # fmt: skip
    jobs = build_jobs(service, model, req)  # type: ignore[arg-type]
    assert [j.job.mode for j in jobs] == ["infill", "infill"]
    suffix = model.tokenize(" of Egypt.")
    template = jobs[0].job.infill.tolist()
    assert template[-len(suffix) :] == suffix and template.count(-1) == 5

    async def main() -> Any:
        results = await asyncio.gather(*(service.submit(pj.model, pj.job) for pj in jobs))
        return complete_response(req, jobs, list(results), service)  # type: ignore[arg-type]

    response = run(main())
    assert [c.index for c in response.choices] == [0, 1, 2, 3]
    assert response.choices[0].text.startswith("The king") and response.choices[2].text.startswith("And the")
    prompt_tokens = sum(len(model.tokenize(p)) + len(suffix) for p in ("The king", "And the"))
    assert response.usage.prompt_tokens == prompt_tokens
    assert 4 <= response.usage.completion_tokens <= 20
    assert response.usage.total_tokens == prompt_tokens + response.usage.completion_tokens
    assert response.diffusion["prompts"][0]["steps"] == 6


@pytest.mark.parametrize("family", ["ar", "mdlm", "gidd"])
def test_stream_chunks_concatenate_to_the_completion(
    family: str, load_model: Callable[[str], LoadedModel]
) -> None:
    model = load_model(family)
    service = FakeService(model)
    req = CompletionRequest(model="m", prompt="The king", max_tokens=12, n=2, seed=5, steps=12, stream=True,
                            stream_options={"include_usage": True})  # fmt: skip
    jobs = build_jobs(service, model, req)  # type: ignore[arg-type]

    async def collect() -> list[bytes]:
        return [chunk async for chunk in stream_completion(req, jobs, service)]  # type: ignore[arg-type]

    events = run(collect())
    assert events[-1] == b"data: [DONE]\n\n"
    payloads = [json.loads(e[len(b"data: ") :]) for e in events[:-1]]
    assert all(e.startswith(b"data: ") and e.endswith(b"\n\n") for e in events)
    texts = {0: "", 1: ""}
    reasons = {}
    for p in payloads[:-1]:
        (choice,) = p["choices"]
        texts[choice["index"]] += choice["text"]
        if choice["finish_reason"]:
            reasons[choice["index"]] = choice["finish_reason"]
    assert set(reasons) == {0, 1}
    assert payloads[-1]["usage"]["completion_tokens"] > 0
    # the same request without streaming gives the same texts (same seed, same engine)
    plain = req.model_copy(update={"stream": False})
    jobs = build_jobs(service, model, plain)  # type: ignore[arg-type]

    async def main() -> Any:
        results = await asyncio.gather(*(service.submit(pj.model, pj.job) for pj in jobs))
        return complete_response(plain, jobs, list(results), service)  # type: ignore[arg-type]

    response = run(main())
    assert [c.text for c in response.choices] == [texts[0], texts[1]]
    deltas = [p for p in payloads[:-1] if p["choices"][0]["text"]]
    if family in ("ar", "mdlm"):  # stable families stream before the end
        assert len(deltas) > 2
