"""An image model through the platform over REST only, on the embedded default and on PostgreSQL + Redis
+ S3: `prepare-images` (the bundled digits) -> `train` image-mmdit (tiny, few steps) -> POST /v1/generate
through the gateway (t2i PNGs of the model's size, i2t captions of an uploaded PNG, bad uploads refused
naming the field) -> a `sample` job (PNG grids + captions) -> an `evaluate` job (t2i accuracy with its
classifier ceiling and unconditional baseline, Fréchet distance, i2t caption accuracy, each with its
protocol) -> the evaluation in /v1/models/{id} and /v1/models/compare. Numbers of a 30-step model mean
nothing; the learning test (tests/learning/test_image_learning.py) checks that it learns."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest

from mmdlm.data.png import decode_png
from services.common.client import ApiError
from tests.integration.sampler.helpers import sampler_env, sampler_process
from tests.utils.harness import Backend, Platform

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TRAIN_ENV = {"MMDLM_TRAIN_OMP_THREADS": "1", "MMDLM_TRAIN_SYNC_INTERVAL_S": "0.3"}
NETWORK = {"variant": "continuous", "hidden_size": 32, "n_blocks": 1, "n_heads": 2, "cond_dim": 32}
FAST = {"steps": 4, "latent_steps": 4}


def run_job(p: Platform, spec: dict[str, Any], timeout_s: float = 240) -> dict[str, Any]:
    job = p.client.submit(spec)
    done = p.wait(job["id"], timeout_s=timeout_s)
    assert done["status"] == "succeeded", f"{done}\n{p.logs()}"
    return done


def only_artifact(p: Platform, job: dict[str, Any], kind: str) -> dict[str, Any]:
    found = [a for a in (p.client.artifact(i) for i in job["artifacts"]) if a["kind"] == kind]
    assert len(found) == 1, (kind, job["artifacts"])
    return found[0]


def generate(p: Platform, **body: Any) -> dict[str, Any]:
    return p.client.request("POST", "/v1/generate", json=body)


def test_image_model_prepare_train_generate_sample_evaluate(
    backend: Backend, platform_factory: Any, tmp_path: Path
) -> None:
    port, env = sampler_env()
    p: Platform = platform_factory(
        backend, workers_queues=[["encode", "train", "sample"]], env={**env, **TRAIN_ENV}
    )
    prepared = run_job(p, {"kind": "prepare-images", "source": {"type": "digits"}})
    data = only_artifact(p, prepared, "image-dataset")
    assert data["metadata"]["resolution"] == 8 and data["metadata"]["channels"] == 1
    network = {**NETWORK, "max_seq_len": data["metadata"]["caption_len"]}
    training = p.client.submit({
        "kind": "train", "dataset": data["id"], "model": {"family": "image-mmdit", "model": network},
        "data": {"batch_size": 32}, "optimizer": {"lr": 2e-3}, "schedule": {"kind": "cosine", "warmup_steps": 2},
        "steps": 30, "precision": "fp32", "device": "cpu", "checkpoint": {"interval": 1000},
        "eval": {"interval": 1000, "batches": 1}, "log": {"interval": 10, "console": False},
    })  # fmt: skip
    with sampler_process(p, port):  # starts while the model trains
        trained = p.wait(training["id"], timeout_s=240)
        assert trained["status"] == "succeeded", f"{trained}\n{p.logs()}"
        model = only_artifact(p, trained, "model")["id"]

        # t2i: base64 PNGs of the model's size, with the direction's guidance in the protocol
        t2i = generate(p, model=model, caption="the digit seven", num_samples=3, seed=1, image_guidance_scale=2.0,
                       **FAST)  # fmt: skip
        assert t2i["mode"] == "t2i" and t2i["image_size"] == 8 and t2i["channels"] == 1
        assert t2i["settings"]["guidance_scale"] == 2.0
        for sample in t2i["samples"]:
            assert sample["text"] == "the digit seven"
            assert decode_png(base64.b64decode(sample["image"])).shape == (1, 8, 8)
        again = generate(p, model=model, caption="the digit seven", num_samples=3, seed=1, image_guidance_scale=2.0,
                         **FAST)  # fmt: skip
        assert [s["image"] for s in again["samples"]] == [s["image"] for s in t2i["samples"]]  # seeded

        # i2t: captions of an uploaded PNG; joint: both
        i2t = generate(p, model=model, image=t2i["samples"][0]["image"], num_samples=2, seed=2, **FAST)
        assert i2t["mode"] == "i2t" and len(i2t["samples"]) == 2
        assert all(s["image"] is None and isinstance(s["text"], str) for s in i2t["samples"])
        joint = generate(p, model=model, num_samples=2, seed=3, **FAST)
        assert joint["mode"] == "joint" and all(s["image"] for s in joint["samples"])

        # bad input: 422 naming the field, through the gateway
        for body, field in (
            ({"image": "%%% not base64"}, "image"),
            ({"caption": "the digit 7 zzz"}, "caption"),
            ({"caption": "a seven", "caption_guidance_scale": 2.0}, "caption_guidance_scale"),
            ({"prompt": "seven"}, "prompt"),
        ):
            with pytest.raises(ApiError) as err:
                generate(p, model=model, **body)
            assert err.value.status == 422 and field in err.value.detail, err.value.detail
        with pytest.raises(ApiError) as err:
            p.client.request("POST", "/v1/completions", json={"model": model, "prompt": ""})
        assert err.value.status == 422 and "model" in err.value.detail

        # a sample job: one PNG grid per chunk, a caption and a PNG per sample
        sampled = run_job(p, {"kind": "sample", "model": model, "num_samples": 10, "chunk_size": 8, "seed": 0,
                              "mode": "t2i", "caption": "a handwritten three", "guidance_scale": 2.0, **FAST})  # fmt: skip
        samples = only_artifact(p, sampled, "samples")
        local = tmp_path / "samples"
        p.client.download_all(samples["id"], local)
        manifest = json.loads((local / "manifest.json").read_text())
        assert manifest["images"]["grids"] == ["grids/chunk-000000.png", "grids/chunk-000001.png"]
        scale = manifest["images"]["grid"]["scale"]
        first = decode_png((local / "grids/chunk-000000.png").read_bytes())
        assert first.shape == (1, 1 + 8 * scale + 1, 1 + 8 * (8 * scale + 1))  # 8 cells in one row
        records = [json.loads(line) for line in (local / "samples.jsonl").read_text().splitlines()]
        assert len(records) == 10 and {r["text"] for r in records} == {"a handwritten three"}
        assert decode_png(base64.b64decode(records[9]["image"])).shape == (1, 8, 8)
        assert records[9]["grid"] == "grids/chunk-000001.png" and records[9]["cell"] == 1

        # an evaluate job: the three image metrics, each with its protocol, visible on the model
        spec = {"kind": "evaluate", "model": model, "dataset": data["id"],
                "images": {"num_images": 20, "classifier_epochs": 3, "classifier_max_train": 300,
                           "sample": {"text_steps": 4, "latent_steps": 4, "image_guidance_scale": 2.0}}}  # fmt: skip
        evaluated = run_job(p, spec)
        evaluation = only_artifact(p, evaluated, "evaluation")
        document = json.loads(p.client.download(evaluation["id"]))
        summary = document["summary"]
        for name in ("t2i_accuracy", "t2i_unconditional_accuracy", "t2i_classifier_accuracy", "frechet_distance",
                     "frechet_real_train_distance", "i2t_caption_accuracy", "i2t_unconditional_caption_accuracy"):  # fmt: skip
            assert name in summary, sorted(summary)
        assert 0 <= summary["t2i_accuracy"] <= 1 and summary["frechet_distance"] >= 0
        protocols = document["protocols"]
        assert set(protocols) == {"t2i", "frechet", "i2t"}
        assert protocols["t2i"]["num_samples"] == 20 and protocols["t2i"]["guidance_scale"] == 2.0
        assert "classifier" in protocols["t2i"] and "baseline" in protocols["i2t"]
        shown = p.client.request("GET", f"/v1/models/{model}")["latest_evaluation"]
        assert shown["summary"] == summary and shown["protocols"] == protocols
        table = p.client.request("GET", "/v1/models/compare", params={"ids": model})
        assert {"t2i", "frechet", "i2t"} <= set(table["groups"])

        # submit-time checks of the image kinds
        for bad, field in (
            ({"kind": "evaluate", "model": model}, "dataset"),
            ({"kind": "sample", "model": model, "mode": "i2t"}, "mode"),
            ({"kind": "sample", "model": model, "prompt": "seven"}, "prompt"),
        ):
            with pytest.raises(ApiError) as err:
                p.client.submit(bad)
            assert err.value.status == 422 and field in err.value.detail, err.value.detail
