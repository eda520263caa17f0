"""Generation through the gateway's REST API: every family and mode, seeds that survive batching, the
OpenAI completions endpoint with streaming, the denoising stream, embeddings, and bad requests."""

from __future__ import annotations

import json
import threading
from typing import Any

import httpx
import numpy as np
import pytest
import torch

from mmdlm.config.sample import SampleConfig
from mmdlm.data.tokenizers import TextEncoder
from mmdlm.pipeline import load_pretrained
from services.common.client import ApiError
from tests.integration.sampler.conftest import Stack, model_dir

pytestmark = [pytest.mark.integration, pytest.mark.postgres, pytest.mark.redis]


def post(stack: Stack, path: str, body: dict[str, Any], token: str | None = None) -> httpx.Response:
    token = stack.platform.token if token is None else token
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.post(stack.platform.url + path, json=body, headers=headers, timeout=120)


def generate(stack: Stack, family: str, **fields: Any) -> dict[str, Any]:
    return stack.platform.client.request(
        "POST", "/v1/generate", json={"model": stack.models[family], **fields}
    )


def sse_events(response: httpx.Response) -> list[tuple[str, str]]:
    """(event, data) pairs of a server-sent event stream."""
    events, kind, data = [], "message", []
    for line in response.iter_lines():
        if line == "":
            if data:
                events.append((kind, "\n".join(data)))
            kind, data = "message", []
        elif line.startswith("event:"):
            kind = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].strip())
    return events


CASES = [
    ("mdlm", {"prompt": "And the king", "num_samples": 2}, "prefix"),
    ("mdlm", {"infill": ["The", 3, "of the", 2, "."]}, "infill"),
    ("gidd", {"num_samples": 2}, "unconditional"),
    ("hdlm", {"prompt": "In the"}, "prefix"),
    ("hdlm", {"infill": ["The", 4, "."]}, "infill"),
    ("ar", {"prompt": "And the", "temperature": 0.8, "top_p": 0.9}, "prefix"),
    ("ar", {"min_p": 0.05}, "unconditional"),
    ("mmdit", {"latent_steps": 6}, "joint"),
    ("mmdit", {"text": "The river flows to the sea.", "latent_steps": 6}, "t2l"),
    ("mmdit", {"latent_text": "The river flows to the sea.", "length": 12}, "l2t"),
    ("latent-dit", {"latent": "embed"}, "l2t"),
    ("cross-dit", {"sampler": "topk"}, "l2t"),
]


@pytest.mark.parametrize(("family", "fields", "mode"), CASES, ids=[f"{c[0]}-{c[2]}" for c in CASES])
def test_every_family_and_mode_generates_through_rest(
    stack: Stack, family: str, fields: dict[str, Any], mode: str
) -> None:
    fields = dict(fields)
    if fields.get("latent") == "embed":
        embedded = stack.platform.client.request("POST", "/v1/embed", json={"texts": ["A castle on a hill."]})
        fields["latent"] = embedded["data"][0]["embedding"]
    out = generate(stack, family, steps=8, seed=1, **fields)
    n = fields.get("num_samples", 1)
    assert (out["mode"], out["family"], len(out["samples"])) == (mode, family, n)
    assert out["seed"] == 1 and out["settings"]["seed"] == 1 and out["settings"]["steps"] == 8
    assert out["nfe"] > 0 and out["elapsed_s"] > 0
    sample = out["samples"][0]
    assert len(sample["token_ids"]) == out["seq_len"]
    if mode == "t2l":
        assert out["tokens"] == 0 and len(sample["latent"]) == 384
        return
    assert out["tokens"] > 0 and out["tokens_per_s"] > 0 and sample["text"]
    if mode == "prefix":
        assert sample["text"].startswith(fields["prompt"])
    if mode == "joint":
        assert len(sample["latent"]) == 384
    if family == "ar":
        assert out["steps"] == 0 and out["nfe"] == out["seq_len"] - (3 if mode == "prefix" else 0)
    if mode == "l2t" and "length" in fields:
        assert sum(t != 0 for t in sample["token_ids"]) <= fields["length"] + 1


@pytest.mark.parametrize("family", ["mdlm", "ar"])
def test_a_seed_gives_the_library_samples(stack: Stack, family: str) -> None:
    out = generate(stack, family, prompt="And the king", num_samples=3, steps=10, seed=7, seq_len=24)
    pipe = load_pretrained(model_dir(stack, family))
    prompt = torch.tensor([pipe.vocab.bos_id, *TextEncoder(pipe.tokenizer)(["And the king"])[0]])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        library = pipe.generate(SampleConfig(num_samples=3, seq_len=24, steps=10, seed=7), prompt_ids=prompt)
    finally:
        torch.set_num_threads(threads)
    assert [s["token_ids"] for s in out["samples"]] == library.ids.tolist()
    assert out["nfe"] == library.nfe
    again = generate(stack, family, prompt="And the king", num_samples=3, steps=10, seed=7, seq_len=24)
    assert [s["text"] for s in again["samples"]] == [s["text"] for s in out["samples"]]


def test_concurrent_requests_share_batches_and_keep_their_seeds(stack: Stack) -> None:
    settings = {"steps": 24, "num_samples": 2, "seq_len": 32, "temperature": 0.9}
    results: dict[int, dict[str, Any]] = {}
    errors: list[BaseException] = []

    def call(seed: int) -> None:
        try:
            results[seed] = post(
                stack, "/v1/generate", {"model": stack.models["mdlm"], "seed": seed, **settings}
            ).json()
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=call, args=(seed,)) for seed in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert max(r["batch_requests"] for r in results.values()) > 1, [
        r["batch_requests"] for r in results.values()
    ]
    for seed in (0, 5):  # alone now, same samples
        solo = generate(stack, "mdlm", seed=seed, **settings)
        assert solo["batch_requests"] == 1
        assert [s["token_ids"] for s in solo["samples"]] == [s["token_ids"] for s in results[seed]["samples"]]


@pytest.mark.parametrize("family", ["ar", "mdlm"])
def test_completions_in_the_openai_shape_with_streaming(stack: Stack, family: str) -> None:
    body = {"model": stack.models[family], "prompt": ["And the king", "In the"], "max_tokens": 10, "n": 2,
            "temperature": 0.9, "seed": 3, "steps": 12}  # fmt: skip
    response = post(stack, "/v1/completions", body)
    assert response.status_code == 200, response.text
    plain = response.json()
    assert plain["object"] == "text_completion" and plain["model"] == stack.models[family]
    assert [c["index"] for c in plain["choices"]] == [0, 1, 2, 3]
    assert all(c["finish_reason"] in ("stop", "length") and c["logprobs"] is None for c in plain["choices"])
    usage = plain["usage"]
    assert (
        usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
        and usage["prompt_tokens"] > 0
    )
    headers = {"Authorization": f"Bearer {stack.platform.token}"}
    with httpx.stream("POST", stack.platform.url + "/v1/completions", json={**body, "stream": True},
                      headers=headers, timeout=120) as stream:  # fmt: skip
        assert stream.status_code == 200 and stream.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in stream.iter_lines() if line]
    assert all(line.startswith("data: ") for line in lines) and lines[-1] == "data: [DONE]"
    texts = dict.fromkeys(range(4), "")
    finished = {}
    for line in lines[:-1]:
        chunk = json.loads(line[len("data: ") :])
        assert chunk["object"] == "text_completion"
        (choice,) = chunk["choices"]
        texts[choice["index"]] += choice["text"]
        if choice["finish_reason"]:
            finished[choice["index"]] = choice["finish_reason"]
    assert [texts[i] for i in range(4)] == [c["text"] for c in plain["choices"]]
    assert finished == {c["index"]: c["finish_reason"] for c in plain["choices"]}
    assert len(lines) > 5  # AR and MDLM stream their text as it becomes final, not in one piece


def test_denoising_states_stream_then_the_result(stack: Stack) -> None:
    body = {"model": stack.models["mdlm"], "steps": 16, "stream_every": 4, "seed": 9, "num_samples": 2}
    headers = {"Authorization": f"Bearer {stack.platform.token}"}
    with httpx.stream(
        "POST", stack.platform.url + "/v1/generate/stream", json=body, headers=headers, timeout=120
    ) as r:
        assert r.status_code == 200
        events = sse_events(r)
    kinds = [k for k, _ in events]
    assert kinds == ["state"] * 4 + ["result"]
    states = [json.loads(d) for _, d in events[:-1]]
    assert [s["step"] for s in states] == [4, 8, 12, 16]
    masked = [s["masked"] for s in states]
    assert masked == sorted(masked, reverse=True) and masked[-1] == 0 and masked[0] > 0
    assert "_" in states[0]["samples"][0]["text"]
    result = json.loads(events[-1][1])
    plain = generate(stack, "mdlm", steps=16, seed=9, num_samples=2)
    assert [s["token_ids"] for s in result["samples"]] == [s["token_ids"] for s in plain["samples"]]


def test_embeddings_match_the_library_encoder(stack: Stack) -> None:
    from mmdlm.encoders import load_encoder

    texts = ["A castle on a hill.", "The river flows to the sea."]
    out = stack.platform.client.request("POST", "/v1/embed", json={"texts": texts, "encoder": "minilm"})
    assert out["dim"] == 384 and out["encoder"]["name"] == "minilm"
    got = np.array([d["embedding"] for d in out["data"]], dtype=np.float32)
    expected = load_encoder("minilm").encode(texts)
    np.testing.assert_allclose(got, expected, atol=1e-5)


def refused(
    stack: Stack, path: str, body: dict[str, Any], status: int, field: str, token: str | None = None
) -> str:
    response = post(stack, path, body, token)
    assert response.status_code == status, response.text
    detail = response.json()["detail"]
    assert field in detail, detail
    return detail


def test_bad_requests_are_refused_naming_the_problem(stack: Stack) -> None:
    mdlm, mmdit = stack.models["mdlm"], stack.models["mmdit"]
    refused(stack, "/v1/generate", {"model": "0" * 32}, 404, "model")
    refused(stack, "/v1/generate", {"model": stack.dataset}, 404, "model")  # an artifact, but not a model
    refused(stack, "/v1/generate", {"model": mdlm, "steps": 0}, 422, "steps")
    refused(stack, "/v1/generate", {"model": mdlm, "steps": -3}, 422, "steps")
    refused(stack, "/v1/generate", {"model": mdlm, "stepz": 3}, 422, "stepz")
    detail = refused(stack, "/v1/generate", {"model": mdlm, "prompt": "and the king " * 20}, 422, "prompt")
    assert "no room to generate" in detail
    refused(
        stack, "/v1/generate", {"model": mdlm, "prompt": "x" * 30_000}, 422, "MMDLM_SAMPLER_MAX_PROMPT_CHARS"
    )
    detail = refused(
        stack,
        "/v1/completions",
        {"model": mdlm, "prompt": "and the king", "max_tokens": 200},
        422,
        "max_tokens",
    )
    assert "context of 32" in detail
    detail = refused(stack, "/v1/generate", {"model": mmdit, "latent": [0.1] * 10}, 422, "latent")
    assert "384" in detail
    refused(stack, "/v1/generate", {"model": mmdit, "sampler": "cached"}, 422, "sampler")
    refused(stack, "/v1/generate", {"model": stack.models["ar"], "infill": ["a", 2]}, 422, "mode")
    refused(stack, "/v1/generate", {"model": mdlm}, 401, "bearer", token="")
    other = stack.platform.create_token("mallory")
    refused(stack, "/v1/generate", {"model": mdlm}, 404, "model", token=other)  # another user's model
    refused(stack, "/v1/embed", {"texts": ["a"] * 9}, 413, "MMDLM_SAMPLER_EMBED_MAX_BATCH")
    refused(stack, "/v1/embed", {"texts": ["ok", "x" * 301]}, 422, "texts[1]")
    refused(stack, "/v1/embed", {"texts": []}, 422, "texts")
    # the sampler itself checks the token too (it is never an open door)
    direct = httpx.post(stack.sampler_url + "/v1/generate", json={"model": mdlm}, timeout=30)
    assert direct.status_code == 401


def test_the_gateway_lists_what_the_sampler_holds(stack: Stack) -> None:
    generate(stack, "gidd", steps=2)
    loaded = stack.platform.client.request("GET", "/v1/sampler/models")
    assert stack.models["gidd"] in {m["id"] for m in loaded["data"]}
    assert loaded["cache"]["bytes"] <= loaded["cache"]["budget"] and loaded["batching"]["enabled"]
    with pytest.raises(ApiError) as info:
        stack.platform.new_client(None).request("GET", "/v1/sampler/models")
    assert info.value.status == 401
