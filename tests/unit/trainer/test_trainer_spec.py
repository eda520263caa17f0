"""The `train` spec: what it accepts, what it refuses (naming the field), and the TrainConfig it makes."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from services.trainer.kinds import TrainSpec, dataset_kind


def _spec(**overrides: object) -> dict:
    spec = {"dataset": "a" * 32, "model": {"family": "mdlm", "model": "cpu-nano"}, "steps": 50}
    spec["schedule"] = {"warmup_steps": 5}
    spec.update(overrides)
    return spec


def test_to_train_config_fills_the_paths_the_service_owns() -> None:
    spec = TrainSpec.model_validate(_spec(nproc_per_node=2, checkpoint={"interval": 10, "keep_last": 2}))
    config = spec.to_train_config("/cache/ds", "/scratch/run")
    assert config.data.dataset == "/cache/ds" and config.run_dir == "/scratch/run"
    assert config.resume == "auto" and config.save_final and config.checkpoint.interval == 10
    assert spec.world_size == 2 and spec.clusters_artifact is None


def test_hdlm_clusters_is_an_artifact_id_replaced_by_the_staged_folder() -> None:
    spec = TrainSpec.model_validate(
        _spec(model={"family": "hdlm", "model": "cpu-nano", "clusters": "c" * 32})
    )
    assert spec.clusters_artifact == "c" * 32
    assert spec.to_train_config("/d", "/r", clusters_dir="/cache/c").model.clusters == "/cache/c"


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"model": {"family": "nope"}}, ("model",)),
        ({"model": {"family": "hdlm"}}, ("model", "hdlm", "clusters")),
        ({"nnodes": 2}, ("nnodes",)),
        ({"nproc_per_node": 0}, ("nproc_per_node",)),
        ({"dataset": ""}, ("dataset",)),
        ({"data": {"dataset": "/etc"}}, ("data", "dataset")),
        ({"run_dir": "/tmp/x"}, ("run_dir",)),
    ],
)
def test_refused_specs_name_the_field(overrides: dict, field: tuple) -> None:
    with pytest.raises(ValidationError) as info:
        TrainSpec.model_validate(_spec(**overrides))
    assert field in [e["loc"][: len(field)] for e in info.value.errors()], info.value.errors()


def test_kubeflow_allows_several_nodes_and_latent_families_need_latent_datasets() -> None:
    spec = TrainSpec.model_validate(_spec(launcher="kubeflow", nnodes=4, nproc_per_node=8))
    assert spec.world_size == 32
    assert dataset_kind("mdlm") == "dataset" and dataset_kind("mmdit") == "latent-dataset"
    assert dataset_kind("image-mmdit") == "image-dataset"
