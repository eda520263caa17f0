"""The gateway side, without a sampler process: auth and validation happen before anything is forwarded,
an unreachable sampler is a 503 that says where it was looked for, and protocols are compared field by
field. Job specs of the sampler and encoder kinds refuse bad input at submit."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from services.api.main import create_app
from services.common.auth import create_token
from services.common.db import Database
from services.common.settings import Settings
from services.encoder.encode_kinds import EncodeSpec
from services.sampler.kinds import EvaluateSpec, SampleSpec
from services.sampler.protocols import compare_groups, metric_group, order_metrics
from tests.utils.servers import free_port


@pytest.fixture
def gateway(tmp_path: Path) -> tuple[TestClient, str, int]:
    port = free_port()  # nothing listens there
    settings = Settings(home=tmp_path, sampler_url=f"http://127.0.0.1:{port}", sampler_timeout_s=5)  # type: ignore[call-arg]
    app = create_app(settings)
    with Database(settings.database_url).begin() as session:
        _, token = create_token(session, "alice")
    with TestClient(app) as client:
        yield client, token, port


def test_auth_and_validation_come_before_the_sampler(gateway: tuple[TestClient, str, int]) -> None:
    client, token, port = gateway
    assert client.post("/v1/generate", json={"model": "m"}).status_code == 401
    auth = {"Authorization": f"Bearer {token}"}
    bad = client.post("/v1/generate", json={"model": "m", "steps": 0}, headers=auth)
    assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == "steps"
    bad = client.post("/v1/completions", json={"model": "m", "logprobs": 3}, headers=auth)
    assert bad.status_code == 422 and "logprobs" in bad.json()["detail"]
    down = client.post("/v1/generate", json={"model": "m"}, headers=auth)
    assert down.status_code == 503
    assert f"127.0.0.1:{port}" in down.json()["detail"] and "MMDLM_SAMPLER_URL" in down.json()["detail"]


def test_models_routes_without_models(gateway: tuple[TestClient, str, int]) -> None:
    client, token, _ = gateway
    auth = {"Authorization": f"Bearer {token}"}
    assert client.get("/v1/models", headers=auth).json() == {"object": "list", "data": [], "count": 0}
    missing = client.get("/v1/models/compare", params={"ids": "abc"}, headers=auth)
    assert missing.status_code == 404 and "abc" in missing.json()["detail"]
    assert client.get("/v1/models/compare", params={"ids": ","}, headers=auth).status_code == 422
    assert client.get("/v1/models/nope", headers=auth).status_code == 404


def test_protocol_groups_compare_field_by_field() -> None:
    same = {"reference_model": "smol", "sampling_steps": 64}
    groups = compare_groups(
        {
            "a": {"generative": same, "nll": {"split": "validation"}},
            "b": {"generative": dict(same)},
            "c": None,
        }
    )
    assert groups["generative"] == {
        "comparable": True,
        "models": ["a", "b"],
        "protocol": same,
        "missing": ["c"],
    }
    assert groups["nll"]["comparable"] is False  # one model only: nothing to compare it with
    groups = compare_groups({"a": {"generative": same}, "b": {"generative": {**same, "sampling_steps": 16}}})
    assert groups["generative"]["comparable"] is False
    assert groups["generative"]["mismatches"] == {"sampling_steps": {"a": 64, "b": 16}}
    assert [metric_group(m) for m in ("val_ppl", "gen_entropy", "data_gen_ppl", "sweep_8_gen_ppl", "t2l_cosine")] == [
        "nll", "generative", "generative", "sweep", "t2l",
    ]  # fmt: skip
    assert order_metrics({"t2l_cosine", "gen_ppl", "val_nll"}) == ["val_nll", "gen_ppl", "t2l_cosine"]


@pytest.mark.parametrize(
    ("model", "data", "words"),
    [
        (EncodeSpec, {"kind": "encode"}, "exactly one source"),
        (EncodeSpec, {"kind": "encode", "dataset": "d", "texts": ["a", "b"]}, "exactly one source"),
        (EncodeSpec, {"kind": "encode", "texts": ["only one"]}, "at least 2"),
        (EncodeSpec, {"kind": "encode", "dataset": "d", "shard_rows": 0}, "shard_rows"),
        (SampleSpec, {"kind": "sample", "model": "m", "num_samples": 0}, "num_samples"),
        (SampleSpec, {"kind": "sample", "model": "m", "temperature": -1}, "temperature"),
        (EvaluateSpec, {"kind": "evaluate", "model": "m", "sts": {}}, "exactly one of pairs"),
        (EvaluateSpec, {"kind": "evaluate", "model": "m", "generative": {"steps_sweep": [0]}}, "positive"),
    ],
)
def test_job_specs_refuse_bad_input(model: type, data: dict[str, object], words: str) -> None:
    with pytest.raises(ValidationError, match=words):
        model.model_validate(data)


def test_evaluate_spec_maps_onto_the_library_config() -> None:
    spec = EvaluateSpec.model_validate({"kind": "evaluate", "model": "m", "max_batches": 2, "seed": 4})
    config = spec.eval_config("/data")
    assert (config.dataset, config.max_batches, config.seed, config.split) == ("/data", 2, 4, "validation")
    assert config.generative is not None and config.generative.reference_model == "smollm2-135m"
