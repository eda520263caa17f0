"""One stack for the session: API + a `sample` worker + the sampler service over PostgreSQL, Redis and a
real S3 server, with every family's tiny trained model and the datasets published as artifacts."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.integration.sampler.helpers import (
    TinyModels,
    build_tiny_models,
    model_metadata,
    publish_folder,
    sampler_env,
    sampler_process,
)
from tests.utils.fixtures import _backend
from tests.utils.harness import Platform


@dataclass
class Stack:
    platform: Platform
    tiny: TinyModels
    models: dict[str, str]  # family -> model artifact id
    dataset: str
    latents: str
    sampler_url: str


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> TinyModels:
    return build_tiny_models(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="session")
def stack(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, tiny_models: TinyModels
) -> Iterator[Stack]:
    workdir = tmp_path_factory.mktemp("sampler-stack")
    port, env = sampler_env()
    with (
        _backend("production", request, workdir / "backend") as backend,
        Platform(backend, workdir / "p", workers_queues=[["sample"]], env=env) as platform,
        sampler_process(platform, port),
    ):
        models = {
            family: publish_folder(platform, folder, kind="model", metadata=model_metadata(folder))
            for family, folder in tiny_models.models.items()
        }
        dataset = publish_folder(platform, tiny_models.dataset, kind="dataset")
        latents = publish_folder(platform, tiny_models.latents, kind="latent-dataset")
        yield Stack(platform, tiny_models, models, dataset, latents, f"http://127.0.0.1:{port}")


def model_dir(stack: Stack, family: str) -> Path:
    return stack.tiny.models[family]
