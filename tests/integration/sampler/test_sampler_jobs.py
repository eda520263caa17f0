"""`evaluate` and `sample` jobs on a real `sample` worker, and the model table of the gateway:
results equal the library's numbers for the same seed, and protocols are compared, never assumed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from mmdlm.config.eval import EvalConfig, GenerativeEvalConfig
from mmdlm.config.sample import SampleConfig
from mmdlm.eval.evaluate import evaluate
from services.common.client import ApiError
from tests.integration.sampler.conftest import Stack, model_dir

pytestmark = [pytest.mark.integration, pytest.mark.postgres, pytest.mark.redis, pytest.mark.slow]

GENERATIVE = {"sample": {"num_samples": 4, "steps": 8, "seed": 3}, "reference_batch_size": 4,
              "num_examples": 1}  # fmt: skip


def run_job(stack: Stack, spec: dict[str, Any], timeout_s: float = 180) -> dict[str, Any]:
    job = stack.platform.client.submit(spec)
    done = stack.platform.wait(job["id"], timeout_s=timeout_s)
    assert done["status"] == "succeeded", f"{done}\n{stack.platform.logs()}"
    return done


def evaluation_of(stack: Stack, job: dict[str, Any]) -> dict[str, Any]:
    [artifact_id] = job["artifacts"]
    artifact = stack.platform.client.artifact(artifact_id)
    assert artifact["kind"] == "evaluation"
    return json.loads(stack.platform.client.download(artifact_id))


def test_evaluation_equals_the_library_for_the_same_seed(stack: Stack) -> None:
    spec = {"kind": "evaluate", "model": stack.models["mdlm"], "dataset": stack.dataset, "batch_size": 8,
            "max_batches": 2, "num_time_samples": 2, "seed": 3,
            "generative": {**GENERATIVE, "steps_sweep": [4, 8]}}  # fmt: skip
    job = run_job(stack, spec)
    document = evaluation_of(stack, job)
    summary = document["summary"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the worker runs with OMP_NUM_THREADS=1: same kernels, same numbers
    try:
        library = evaluate(
            model_dir(stack, "mdlm"),
            EvalConfig(dataset=str(stack.tiny.dataset), batch_size=8, max_batches=2, num_time_samples=2, seed=3,
                       device="cpu", generative=GenerativeEvalConfig(**{**GENERATIVE, "steps_sweep": [4, 8]})),
        )  # fmt: skip
    finally:
        torch.set_num_threads(threads)
    assert library.nll is not None and library.generative is not None and library.sweep is not None
    assert summary["val_nll"] == pytest.approx(library.nll.nll, rel=1e-9)
    assert summary["val_ppl"] == pytest.approx(library.nll.ppl, rel=1e-9)
    assert summary["gen_ppl"] == pytest.approx(library.generative.gen_ppl, rel=1e-6)
    assert summary["gen_entropy"] == pytest.approx(library.generative.unigram_entropy, rel=1e-9)
    assert document["report"]["generative"]["examples"] == library.generative.examples
    for row in library.sweep.rows:
        assert summary[f"sweep_{row.protocol.sampling_steps}_gen_ppl"] == pytest.approx(row.gen_ppl, rel=1e-6)
    # the protocol travels with the numbers, with artifact ids instead of the worker's paths
    protocol = document["report"]["generative"]["protocol"]
    assert protocol["sampling_steps"] == 8 and protocol["sampler_precision"] == "float64"
    assert protocol["reference_model"] and protocol["model"] == f"artifact:{stack.models['mdlm']}"
    assert document["report"]["nll"]["protocol"]["dataset"] == f"artifact:{stack.dataset}"
    assert any("bundled corpus" in note for note in protocol["notes"])
    metrics = stack.platform.client.metrics(job["id"])["series"]
    assert metrics["gen_ppl"]["values"] == [pytest.approx(summary["gen_ppl"])]
    assert metrics["sweep_gen_ppl"]["steps"] == [4, 8]


def test_latent_evaluation_t2l_l2t_and_sts(stack: Stack) -> None:
    pairs = [
        {"sentence1": "A man plays a guitar.", "sentence2": "A man is playing guitar.", "score": 4.8},
        {"sentence1": "A dog runs in a field.", "sentence2": "A puppy runs across the grass.", "score": 4.0},
        {"sentence1": "The stock market fell.", "sentence2": "A woman slices an onion.", "score": 0.1},
        {"sentence1": "Kings ruled the land.", "sentence2": "The king ruled the country.", "score": 4.2},
    ]
    spec = {"kind": "evaluate", "model": stack.models["mmdit"], "dataset": stack.latents, "batch_size": 8,
            "max_batches": 1, "generative": {"sample": {"num_samples": 2, "steps": 4}, "data_reference": False,
                                              "num_examples": 1},
            "latent": {"num_rows": 4, "batch_size": 4, "sample": {"text_steps": 4, "latent_steps": 4}},
            "sts": {"pairs": pairs}}  # fmt: skip
    document = evaluation_of(stack, run_job(stack, spec))
    summary = document["summary"]
    for name in ("val_nll", "gen_ppl", "gen_entropy", "t2l_cosine", "t2l_mean_latent_cosine",
                 "l2t_round_trip_cosine", "l2t_unconditional_cosine", "sts_spearman", "sts_oracle_spearman"):  # fmt: skip
        assert name in summary, sorted(summary)
    assert -1 <= summary["t2l_cosine"] <= 1 and summary["sts_oracle_spearman"] > 0.5
    assert "given the clean latent" in " ".join(document["report"]["nll"]["protocol"]["notes"])
    assert set(document["protocols"]) >= {"nll", "generative", "t2l", "l2t", "sts"}


def test_submit_checks_refuse_what_cannot_run(stack: Stack) -> None:
    client = stack.platform.client
    cases = [
        ({"kind": "evaluate", "model": stack.dataset}, "model"),
        ({"kind": "evaluate", "model": stack.models["mdlm"], "dataset": stack.latents}, "dataset"),
        (
            {"kind": "evaluate", "model": stack.models["ar"], "generative": {"steps_sweep": [4]}},
            "generative.steps_sweep",
        ),
        ({"kind": "evaluate", "model": stack.models["latent-dit"], "sts": {"source": "stsb"}}, "sts"),
        ({"kind": "sample", "model": stack.models["ar"], "mode": "infill"}, "mode"),
        ({"kind": "sample", "model": stack.models["mdlm"], "steps": 0}, "steps"),
    ]
    for spec, field in cases:
        with pytest.raises(ApiError) as info:
            client.submit(spec)
        assert info.value.status == 422 and field in info.value.detail, info.value.detail


def test_sample_job_writes_the_set_and_chunks_equal_rest(stack: Stack, tmp_path: Path) -> None:
    spec = {"kind": "sample", "model": stack.models["mdlm"], "num_samples": 10, "chunk_size": 4, "steps": 8,
            "seed": 100, "prompt": "And the"}  # fmt: skip
    job = run_job(stack, spec)
    [artifact_id] = job["artifacts"]
    stack.platform.client.download_all(artifact_id, tmp_path / "samples")
    manifest = json.loads((tmp_path / "samples" / "manifest.json").read_text())
    assert manifest["format"] == "mmdlm.samples/v1" and manifest["count"] == 10 and manifest["chunks"] == 3
    assert manifest["protocol"]["steps"] == 8 and manifest["protocol"]["sampler_precision"] == "float64"
    rows = [json.loads(line) for line in (tmp_path / "samples" / "samples.jsonl").read_text().splitlines()]
    assert [r["index"] for r in rows] == list(range(10)) and [r["seed"] for r in rows[::4]] == [100, 101, 102]
    assert all(r["text"].startswith("And the") for r in rows)
    rest = stack.platform.client.request(
        "POST", "/v1/generate", json={"model": stack.models["mdlm"], "num_samples": 4, "steps": 8, "seed": 101,
                                      "prompt": "And the"},
    )  # fmt: skip
    assert [s["token_ids"] for s in rest["samples"]] == [r["token_ids"] for r in rows[4:8]]
    library = _library_chunk(stack, seed=100)
    assert library == [r["token_ids"] for r in rows[:4]]


def _library_chunk(stack: Stack, seed: int) -> list[list[int]]:
    from mmdlm.data.tokenizers import TextEncoder
    from mmdlm.pipeline import load_pretrained

    pipe = load_pretrained(model_dir(stack, "mdlm"))
    prompt = torch.tensor([pipe.vocab.bos_id, *TextEncoder(pipe.tokenizer)(["And the"])[0]])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return pipe.generate(
            SampleConfig(num_samples=4, seq_len=32, steps=8, seed=seed), prompt_ids=prompt
        ).ids.tolist()
    finally:
        torch.set_num_threads(threads)


def test_models_table_compares_only_equal_protocols(stack: Stack) -> None:
    client = stack.platform.client
    base = {"kind": "evaluate", "nll": False, "generative": {**GENERATIVE, "data_reference": False}}
    run_job(stack, {**base, "model": stack.models["gidd"]})
    run_job(stack, {**base, "model": stack.models["hdlm"]})
    listed = {m["id"]: m for m in client.request("GET", "/v1/models")["data"]}
    assert set(stack.models.values()) <= set(listed)
    assert (
        listed[stack.models["gidd"]]["family"] == "gidd" and listed[stack.models["gidd"]]["object"] == "model"
    )
    assert listed[stack.models["gidd"]]["latest_evaluation"]["summary"]["gen_ppl"] > 0
    ids = f"{stack.models['gidd']},{stack.models['hdlm']}"
    table = client.request("GET", "/v1/models/compare", params={"ids": ids})
    assert table["comparable"] and table["groups"]["generative"]["comparable"]
    assert "gen_ppl" in table["columns"] and "gen_entropy" in table["columns"]
    assert all(row["values"]["gen_ppl"] is not None and not row["not_comparable"] for row in table["rows"])
    # a newer evaluation of hdlm under other settings: the table flags it instead of comparing
    other = {
        **base,
        "generative": {**base["generative"], "sample": {"num_samples": 4, "steps": 16, "seed": 3}},
    }
    run_job(stack, {**other, "model": stack.models["hdlm"]})
    table = client.request("GET", "/v1/models/compare", params={"ids": ids})
    group = table["groups"]["generative"]
    assert not table["comparable"] and not group["comparable"]
    assert set(group["mismatches"]) >= {"sampling_steps", "sample_settings"}
    assert group["mismatches"]["sampling_steps"] == {stack.models["gidd"]: 8, stack.models["hdlm"]: 16}
    assert "sampling_steps" in table["rows"][1]["not_comparable"]["gen_ppl"]
    model = client.request("GET", f"/v1/models/{stack.models['hdlm']}")
    assert model["evaluations"] == 2 and len(model["all_evaluations"]) == 2
    with pytest.raises(ApiError) as info:
        client.request("GET", "/v1/models/compare", params={"ids": f"{stack.models['gidd']},{'0' * 32}"})
    assert info.value.status == 404 and "ids" in info.value.detail
