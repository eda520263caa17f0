"""`POST /v1/completions` in the OpenAI shape, on top of the sampler's generation path.

Each prompt becomes one generation request of `n` samples: `prefix` mode with the prompt (BOS added) and
`max_tokens` positions after it, or `infill` mode when a `suffix` is given (the gap between prompt and
suffix is generated: diffusion models can do that, AR ones cannot). A completion ends at the first EOS
(finish_reason "stop"), at a stop sequence ("stop"), or after max_tokens ("length").

Streaming (`stream: true`) sends `data: {chunk}` server-sent events and ends with `data: [DONE]`. Text
streams as it becomes final: token by token for AR; for MDLM the revealed left-to-right prefix (a revealed
token never changes under the absorbing process); the other families change tokens until the last step,
so their text arrives in one chunk at the end.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import torch

from services.sampler.cache import LoadedModel
from services.sampler.engine import GenJob
from services.sampler.schemas import (
    CompletionChoice,
    CompletionRequest,
    CompletionResponse,
    GenerateRequest,
    RequestError,
    SamplingParams,
    Usage,
)
from services.sampler.service import Generated, SamplerService

STABLE_FAMILIES = frozenset({"ar", "mdlm"})
"""Families whose generated tokens never change once they are text: their completions stream early."""


@dataclass
class PromptJob:
    """One prompt of a completion request, resolved: where its completion sits in the rows."""

    index: int
    model: LoadedModel
    job: GenJob
    prompt_text: str
    prompt_tokens: int
    start: int  # first generated position
    length: int  # max_tokens


def _prompt_ids(
    model: LoadedModel, prompt: str | list[int], service: SamplerService
) -> tuple[list[int], str]:
    if isinstance(prompt, str):
        if len(prompt) > service.config.max_prompt_chars:
            raise RequestError(
                "prompt", f"{len(prompt)} characters exceed the limit of {service.config.max_prompt_chars} "
                "(MMDLM_SAMPLER_MAX_PROMPT_CHARS)",
            )  # fmt: skip
        return (model.tokenize(prompt) if prompt else []), prompt
    from services.sampler.resolve import check_ids

    check_ids(model, "prompt", list(prompt))  # before decoding: an unknown id must not reach the tokenizer
    return list(prompt), model.pipe.decode(torch.tensor([prompt]))[0]


def build_jobs(service: SamplerService, model: LoadedModel, req: CompletionRequest) -> list[PromptJob]:
    """Validate every prompt and build its job (runs in a thread: tokenizing may be slow)."""
    from services.sampler.resolve import check_ids

    if model.kind == "image":
        raise RequestError(
            "model", f"{model.artifact_id} is an image model ({model.family}); use POST /v1/generate (t2i / i2t / joint)"
        )  # fmt: skip
    params = SamplingParams.model_validate(req.model_dump(include=set(SamplingParams.model_fields)))
    bos = model.pipe.vocab.bos_id
    prompts = req.prompts()
    check_totals(service, len(prompts), req.n)
    out = []
    for i, prompt in enumerate(prompts):
        ids, text = _prompt_ids(model, prompt, service)
        check_ids(model, "prompt", ids)
        suffix = model.tokenize(req.suffix) if req.suffix else []
        common: dict[str, Any] = {
            **params.model_dump(),
            "model": req.model,
            "num_samples": req.n,
            "seed": req.seed,
        }
        if model.kind == "latent":
            if ids or suffix:
                raise RequestError("prompt", f"the {model.family} family generates text from latents, not from a prompt; "
                                   "send an empty prompt, or use /v1/generate with mode l2t / t2l / joint")  # fmt: skip
            if req.max_tokens > model.max_seq_len:
                raise RequestError(
                    "max_tokens", f"{req.max_tokens} exceeds the model's max_seq_len of {model.max_seq_len}"
                )
            job = _resolve(model, GenerateRequest(**common, mode="l2t", seq_len=req.max_tokens), service)
            out.append(PromptJob(i, model, job, text, 0, 0, req.max_tokens))
            continue
        given = 1 + len(ids) + len(suffix)
        total = given + req.max_tokens
        if given >= model.max_seq_len:
            raise RequestError("prompt", f"{len(ids)} prompt tokens (+{len(suffix)} suffix, +1 BOS) fill the model's "
                               f"context of {model.max_seq_len} tokens; nothing is left to generate")  # fmt: skip
        if total > model.max_seq_len:
            raise RequestError(
                "max_tokens", f"prompt ({len(ids)} tokens + BOS{f' + {len(suffix)} suffix' if suffix else ''}) + "
                f"max_tokens ({req.max_tokens}) = {total} exceeds the model's context of {model.max_seq_len} tokens",
            )  # fmt: skip
        if suffix:
            if model.kind == "ar":
                raise RequestError("suffix", "an AR model cannot infill between a prompt and a suffix")
            # the infill template is built from ids directly: [BOS] prompt [max_tokens gaps] suffix
            job = _resolve(model, GenerateRequest(**common, mode="unconditional", seq_len=total), service)
            template = [bos, *ids, *([-1] * req.max_tokens), *suffix]
            job.mode, job.infill, job.given = "infill", torch.tensor(template, dtype=torch.long), given
        else:
            job = _resolve(
                model,
                GenerateRequest(**common, mode="prefix", seq_len=total, prompt_ids=[bos, *ids]),
                service,
            )
        out.append(PromptJob(i, model, job, text, len(ids) + len(suffix), 1 + len(ids), req.max_tokens))
    return out


def check_totals(service: SamplerService, prompts: int, n: int) -> None:
    """The request as a whole is bounded, not only each prompt: prompts x n completions."""
    limit = service.config.max_samples
    if prompts * n > limit:
        raise RequestError(
            "n" if prompts == 1 else "prompt",
            f"{prompts} prompt(s) x n={n} = {prompts * n} completions exceed the limit of {limit} per request "
            "(MMDLM_SAMPLER_MAX_SAMPLES)",
        )


# the completion fields a generation request's fields come from, for error messages
_FIELDS = {"num_samples": "n", "seq_len": "max_tokens", "prompt_ids": "prompt", "mode": "prompt"}


def _resolve(model: LoadedModel, gen: GenerateRequest, service: SamplerService) -> GenJob:
    from services.sampler.resolve import resolve

    try:
        return resolve(model, gen, service.config, service.encoders)
    except RequestError as exc:
        field = _FIELDS.get(exc.field, exc.field)
        raise RequestError(field, exc.message.replace("num_samples", "n"), exc.status) from None


# --- turning rows into completions ------------------------------------------------------------------------------


@dataclass
class ChoiceText:
    """The completion text of one row, for whole rows (final) or partial states (streaming)."""

    model: LoadedModel
    start: int
    length: int
    stops: list[str]
    stable: bool
    emitted: str = ""
    finished: bool = False
    tokens: int = 0
    held: list[str] = field(default_factory=list)

    def text_of(self, row: list[int], final: bool) -> tuple[str, bool, int]:
        """(text, ended by EOS/stop, tokens counted) of the row's completion region."""
        vocab = self.model.pipe.vocab
        region = row[self.start : self.start + self.length]
        if not final:
            stable = []
            for token in region:
                if token >= vocab.vocab_size or token == vocab.mask_id:
                    break
                stable.append(token)
            region = stable
        ended = False
        if vocab.eos_id in region:
            region = region[: region.index(vocab.eos_id) + 1]
            ended = True
        text = self.model.pipe.decode(torch.tensor([region]))[0] if region else ""
        for stop in self.stops:
            at = text.find(stop)
            if at >= 0:
                text, ended = text[:at], True
        return text, ended, len(region)

    def update(self, row: list[int]) -> str:
        """New text that is final after this state (empty when nothing new is certain)."""
        if not self.stable or self.finished:
            return ""
        text, ended, _ = self.text_of(row, final=False)
        if not ended:
            text = text.rstrip("\ufffd")  # half of a multi-byte character: wait for the rest
            keep = max((len(s) - 1 for s in self.stops), default=0)  # a stop sequence may be starting
            text = text[: len(text) - keep] if keep else text
        return self._advance(text, ended)

    def finish(self, row: list[int]) -> tuple[str, str]:
        text, ended, tokens = self.text_of(row, final=True)
        self.tokens = tokens
        delta = self._advance(text, True) if not self.finished else ""
        return delta, "stop" if ended else "length"

    def _advance(self, text: str, ended: bool) -> str:
        if not text.startswith(self.emitted) or len(text) <= len(self.emitted):
            self.finished = self.finished or (ended and text.startswith(self.emitted))
            return ""
        delta = text[len(self.emitted) :]
        self.emitted = text
        self.finished = ended
        return delta


def _choices(pj: PromptJob, stops: list[str], stable: bool) -> list[ChoiceText]:
    return [ChoiceText(pj.model, pj.start, pj.length, stops, stable) for _ in range(pj.job.rows)]


def complete_response(
    req: CompletionRequest, jobs: list[PromptJob], results: list[Generated], service: SamplerService
) -> CompletionResponse:
    choices: list[CompletionChoice] = []
    diffusion = []
    completion_tokens = 0
    for pj, done in zip(jobs, results, strict=True):
        rows = done.output.tokens.tolist()
        for i, choice in enumerate(_choices(pj, req.stop or [], stable=False)):
            text, reason = choice.finish(rows[i])
            completion_tokens += choice.tokens
            prefix = pj.prompt_text if req.echo else ""
            choices.append(
                CompletionChoice(text=prefix + text, index=pj.index * req.n + i, finish_reason=reason)
            )  # type: ignore[arg-type]
        diffusion.append(_diffusion_info(done, service))
    prompt_tokens = sum(pj.prompt_tokens for pj in jobs)
    return CompletionResponse(
        id=f"cmpl-{uuid.uuid4().hex[:24]}", created=int(time.time()), model=req.model, choices=choices,
        usage=Usage(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                    total_tokens=prompt_tokens + completion_tokens),
        diffusion={"prompts": diffusion},
    )  # fmt: skip


def _diffusion_info(done: Generated, service: SamplerService) -> dict[str, Any]:
    out = done.output
    tokens = service.generated_tokens(done.model, done.job, out)
    return {
        "seed": done.job.seed, "steps": out.steps, "nfe": out.nfe, "tokens": tokens,
        "tokens_per_s": round(tokens / out.elapsed_s, 3) if out.elapsed_s > 0 else 0.0,
        "elapsed_s": round(out.elapsed_s, 6), "queue_s": round(done.batch.queue_s, 6),
        "batch_requests": out.batch_requests, "settings": service.protocol(done.model, done.job),
    }  # fmt: skip


def sse(data: dict[str, Any] | str) -> bytes:
    payload = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    return f"data: {payload}\n\n".encode()


async def stream_completion(
    req: CompletionRequest, jobs: list[PromptJob], service: SamplerService
) -> AsyncIterator[bytes]:
    """Chunks `data: {...}` in the OpenAI stream shape, then `data: [DONE]`."""
    cid = f"cmpl-{uuid.uuid4().hex[:24]}"
    created = int(time.time())
    completion_tokens = 0

    def chunk(index: int, text: str, reason: str | None) -> bytes:
        return sse({"id": cid, "object": "text_completion", "created": created, "model": req.model,
                    "choices": [{"text": text, "index": index, "logprobs": None, "finish_reason": reason}]})  # fmt: skip

    for pj in jobs:
        choices = _choices(pj, req.stop or [], stable=pj.model.family in STABLE_FAMILIES)
        base = pj.index * req.n
        if req.echo:
            for i in range(pj.job.rows):
                yield chunk(base + i, pj.prompt_text, None)
        async for kind, payload in _run_with_states(service, pj.model, pj.job):
            if kind == "state":
                for i, (choice, row) in enumerate(zip(choices, payload[1].tolist(), strict=True)):
                    delta = choice.update(row)
                    if delta:
                        yield chunk(base + i, delta, None)
            else:
                rows = payload.output.tokens.tolist()
                for i, choice in enumerate(choices):
                    delta, reason = choice.finish(rows[i])
                    completion_tokens += choice.tokens
                    yield chunk(base + i, delta, reason)
    if (req.stream_options or {}).get("include_usage"):
        prompt_tokens = sum(pj.prompt_tokens for pj in jobs)
        yield sse({"id": cid, "object": "text_completion", "created": created, "model": req.model, "choices": [],
                   "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                             "total_tokens": prompt_tokens + completion_tokens}})  # fmt: skip
    yield sse("[DONE]")


async def _run_with_states(
    service: SamplerService, model: LoadedModel, job: GenJob, every: int = 1
) -> AsyncIterator[tuple[str, Any]]:
    """Run `job` through the batcher and yield ("state", tokens (n, L)) while it samples, then
    ("done", Generated). States are handed over from the sampling thread without blocking it."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()

    def on_state(step: int, tokens: torch.Tensor) -> None:
        if step % every == 0:
            loop.call_soon_threadsafe(queue.put_nowait, ("state", (step, tokens)))

    job.on_state = on_state
    task = asyncio.create_task(service.submit(model, job))
    task.add_done_callback(lambda _: queue.put_nowait(("done", None)))
    try:
        while True:
            kind, payload = await queue.get()
            if kind == "state":
                yield kind, payload
            else:
                yield "done", task.result()
                return
    finally:
        if not task.done():
            task.cancel()


async def stream_states(
    service: SamplerService, model: LoadedModel, job: GenJob, req: GenerateRequest, every: int
) -> AsyncIterator[bytes]:
    """`/v1/generate/stream`: `event: state` with every `every`-th partly denoised sample (masked positions
    shown as `_`), then `event: result` with the full generation response."""
    from services.sampler.engine import render_state

    async for kind, payload in _run_with_states(service, model, job, every):
        if kind == "state":
            step, tokens = payload
            rows = tokens.tolist()
            states = [{"index": i, "text": render_state(row, model.pipe)} for i, row in enumerate(rows)]
            vocab = model.pipe.vocab
            hidden = int(((tokens >= vocab.vocab_size) | (tokens == vocab.mask_id)).sum())
            data = {"step": step, "steps": job.params.steps, "masked": hidden, "samples": states}
            yield f"event: state\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()
        else:
            result = service.response(payload, req).model_dump(mode="json")
            yield f"event: result\ndata: {json.dumps(result, separators=(',', ':'))}\n\n".encode()
