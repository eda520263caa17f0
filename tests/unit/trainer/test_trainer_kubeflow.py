"""`launcher: kubeflow` manifests: the CRD envelope and every pod template against the strict Kubernetes
schema (the deployment's validator, `services.deploy.k8s`), c10d rendezvous, resources, status mapping."""

from __future__ import annotations

import pytest

from services.trainer.kinds import TrainSpec
from services.trainer.kubeflow import phase_of, render_pytorchjob, render_trainjob, resource_name
from services.trainer.settings import TrainerSettings

k8s = pytest.importorskip("services.deploy.k8s")
pytest.importorskip("kubernetes_validate")

JOB = "0123456789abcdef0123456789abcdef"


def _spec(gpus: int) -> TrainSpec:
    return TrainSpec.model_validate(
        {"dataset": "d" * 32, "model": {"family": "mdlm", "model": "small"}, "steps": 100,
         "schedule": {"warmup_steps": 10}, "launcher": "kubeflow", "nnodes": 4, "nproc_per_node": 8,
         "kubeflow": {"gpus_per_node": gpus, "cpu": "32", "memory": "256Gi"}}
    )  # fmt: skip


SETTINGS = TrainerSettings(
    _env_file=None, k8s_namespace="mmdlm", k8s_image="registry.example/mmdlm:0.1.0-cuda",
    k8s_env_from_secret="mmdlm-secrets", k8s_service_account="mmdlm-train-node", k8s_image_pull_secrets="regcred",
)  # fmt: skip


@pytest.mark.parametrize("gpus", [8, 0])
def test_trainjob_is_valid_and_uses_c10d(gpus: int) -> None:
    obj = render_trainjob(JOB, 3, _spec(gpus), SETTINGS)
    assert k8s.validate_object(obj) == []
    trainer = obj["spec"]["trainer"]
    assert (trainer["numNodes"], trainer["numProcPerNode"]) == (4, 8)
    assert obj["metadata"]["name"] == resource_name(JOB, 3) == f"mmdlm-{JOB}-a3"
    args = trainer["args"]
    assert "--rdzv-backend=c10d" in args and "--rdzv-endpoint=$(PET_MASTER_ADDR):$(PET_MASTER_PORT)" in args
    assert f"--rdzv-id={obj['metadata']['name']}" in args and args[args.index("--") + 1] == "torchrun"
    assert args[:5] == ["python", "-m", "services.trainer.node", "--job-id", JOB]
    gpu = trainer["resourcesPerNode"]["limits"].get("nvidia.com/gpu")
    assert gpu == ("8" if gpus else None)


def test_pytorchjob_is_valid_with_a_strict_pod_template() -> None:
    obj = render_pytorchjob(JOB, 1, _spec(8), SETTINGS)
    assert k8s.validate_object(obj) == []
    worker = obj["spec"]["pytorchReplicaSpecs"]["Worker"]
    assert worker["replicas"] == 4 and obj["spec"]["elasticPolicy"]["rdzvBackend"] == "c10d"
    pod = worker["template"]["spec"]
    assert pod["containers"][0]["name"] == "pytorch" and pod["imagePullSecrets"] == [{"name": "regcred"}]
    broken = render_pytorchjob(JOB, 1, _spec(8), SETTINGS)
    broken["spec"]["pytorchReplicaSpecs"]["Worker"]["template"]["spec"]["containers"][0]["gpus"] = 8
    assert k8s.validate_object(broken)  # an unknown pod field is refused (strict)


def test_status_conditions_map_to_the_job_outcome() -> None:
    assert not phase_of({}).done
    assert not phase_of({"status": {"conditions": [{"type": "Created", "status": "True"}]}}).done
    ok = phase_of({"status": {"conditions": [{"type": "Complete", "status": "True"}]}})
    assert ok.done and ok.succeeded
    failed = phase_of(
        {"status": {"conditions": [{"type": "Failed", "status": "True", "message": "node 2 OOM"}]}}
    )
    assert failed.done and not failed.succeeded and failed.message == "node 2 OOM"
