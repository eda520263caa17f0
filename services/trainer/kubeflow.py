"""`launcher: kubeflow`: a multi-node job as a Kubeflow Trainer `TrainJob` (or a Training Operator v1
`PyTorchJob`), submitted and followed by the train worker that claimed the job.

    worker (this module)                              every node (services.trainer.node)
    ---------------------------------------------     ---------------------------------------------
    bundle -> runs/<job>/attempt-<n>/bundle.json  ->  stage dataset/clusters/checkpoint from the store
    render + submit the TrainJob (kubernetes API)     torchrun --rdzv-backend=c10d (node 0 hosts it)
    follow: status conditions -> job row;         <-  the node with global rank 0 uploads checkpoints,
      metrics.jsonl from the store -> metrics          metrics.jsonl, logs and final/ to the store
    cancel / lease lost -> delete the TrainJob
    success -> publish runs/<job>/final as `model`

The pods never touch the job table: they need only the object store (MMDLM_S3_* from a Secret). Every
attempt is a new TrainJob named after the job and attempt, so a resubmission never joins a stale
rendezvous, and resumes from the newest committed checkpoint like a local attempt. Pods stuck before
training (image pull, scheduling, C.2 "stuck in Initializing") fail the attempt after
MMDLM_TRAIN_K8S_PENDING_TIMEOUT_S. The cluster path is exercised by the manifest tests and the node
agent's local run; running it needs a cluster with Kubeflow Trainer (docs/ARCHITECTURE.md).
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from services.common import artifacts
from services.common.context import JobContext
from services.common.errors import JobCancelled, PermanentError
from services.common.store import ObjectStore
from services.trainer.kinds import TrainSpec, dataset_kind
from services.trainer.metrics import MetricsTail
from services.trainer.settings import TrainerSettings, get_trainer_settings
from services.trainer.sync import RunStore

logger = logging.getLogger(__name__)

NODE_DIR = "/var/lib/mmdlm/job"  # the pods' job volume (k8s/kubeflow templates)
TRAINJOB = ("trainer.kubeflow.org", "v1alpha1", "trainjobs", "TrainJob")
PYTORCHJOB = ("kubeflow.org", "v1", "pytorchjobs", "PyTorchJob")


def resource_name(job_id: str, attempt: int) -> str:
    """A DNS-1035 label unique per attempt: `mmdlm-<job id>-a<attempt>`."""
    return f"mmdlm-{job_id.lower()[:40]}-a{attempt}"


def bundle_key(job_id: str, attempt: int) -> str:
    return f"runs/{job_id}/attempt-{attempt}/bundle.json"


def final_marker_key(job_id: str) -> str:
    return f"runs/{job_id}/final.json"


def final_prefix(job_id: str) -> str:
    return f"runs/{job_id}/final/"


# --- rendering --------------------------------------------------------------------------------------------


def node_args(job_id: str, attempt: int, name: str, *, elastic_env: bool) -> list[str]:
    """The pod's args: the node agent, then the torchrun command it runs after staging.

    `elastic_env`: the Training Operator v1 injects PET_RDZV_* / PET_NNODES / PET_NPROC_PER_NODE,
    which torchrun reads itself; Kubeflow Trainer v2 injects PET_MASTER_ADDR/PORT, PET_NNODES and
    PET_NPROC_PER_NODE, which Kubernetes expands into the args below.
    """
    torchrun = ["torchrun"]
    if not elastic_env:
        torchrun += [
            "--rdzv-backend=c10d", "--rdzv-endpoint=$(PET_MASTER_ADDR):$(PET_MASTER_PORT)", f"--rdzv-id={name}",
            "--nnodes=$(PET_NNODES)", "--nproc-per-node=$(PET_NPROC_PER_NODE)",
        ]  # fmt: skip
    torchrun += ["--max-restarts=0", "-m", "services.trainer.rank", "--config", f"{NODE_DIR}/train.json"]
    return [
        "python",
        "-m",
        "services.trainer.node",
        "--job-id",
        job_id,
        "--attempt",
        str(attempt),
        "--",
        *torchrun,
    ]


def _resources(spec: TrainSpec, settings: TrainerSettings) -> dict[str, Any]:
    kf = spec.kubeflow
    requests: dict[str, str] = {"cpu": kf.cpu, "memory": kf.memory}
    limits: dict[str, str] = {"memory": kf.memory}
    if kf.gpus_per_node:
        requests[settings.k8s_gpu_resource] = limits[settings.k8s_gpu_resource] = str(kf.gpus_per_node)
    return {"requests": requests, "limits": limits}


def _labels(job_id: str, attempt: int) -> dict[str, str]:
    return {
        "app.kubernetes.io/part-of": "mmdlm",
        "mmdlm.dev/job-id": job_id,
        "mmdlm.dev/attempt": str(attempt),
    }


def render_trainjob(job_id: str, attempt: int, spec: TrainSpec, settings: TrainerSettings) -> dict[str, Any]:
    """A Kubeflow Trainer v2 TrainJob on the `k8s/kubeflow/clustertrainingruntime.yaml` runtime."""
    name = resource_name(job_id, attempt)
    env = [{"name": "MMDLM_JOB_ID", "value": job_id}]
    return {
        "apiVersion": f"{TRAINJOB[0]}/{TRAINJOB[1]}",
        "kind": TRAINJOB[3],
        "metadata": {"name": name, "namespace": settings.k8s_namespace, "labels": _labels(job_id, attempt)},
        "spec": {
            "runtimeRef": {
                "apiGroup": "trainer.kubeflow.org", "kind": "ClusterTrainingRuntime", "name": settings.k8s_runtime,
            },
            "trainer": {
                "image": spec.kubeflow.image or settings.k8s_image,
                "numNodes": spec.nnodes,
                "numProcPerNode": spec.nproc_per_node,
                "resourcesPerNode": _resources(spec, settings),
                "command": ["tini", "--", "mmdlm-entrypoint"],
                "args": node_args(job_id, attempt, name, elastic_env=False),
                "env": env,
            },
        },
    }  # fmt: skip


def render_pytorchjob(
    job_id: str, attempt: int, spec: TrainSpec, settings: TrainerSettings
) -> dict[str, Any]:
    """The same job for the Kubeflow Training Operator v1 (elastic, c10d, every replica a Worker)."""
    name = resource_name(job_id, attempt)
    container: dict[str, Any] = {
        "name": "pytorch",  # the operator requires this name
        "image": spec.kubeflow.image or settings.k8s_image,
        "command": ["tini", "--", "mmdlm-entrypoint"],
        "args": node_args(job_id, attempt, name, elastic_env=True),
        "env": [
            {"name": "MMDLM_JOB_ID", "value": job_id},
            {"name": "TORCH_NCCL_ASYNC_ERROR_HANDLING", "value": "1"},
        ],
        "resources": _resources(spec, settings),
        "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
        "volumeMounts": [{"name": "job", "mountPath": NODE_DIR}, {"name": "dshm", "mountPath": "/dev/shm"}],
    }
    if settings.k8s_env_from_secret:
        container["envFrom"] = [{"secretRef": {"name": settings.k8s_env_from_secret}}]
    pod: dict[str, Any] = {
        "restartPolicy": "Never",
        "containers": [container],
        "volumes": [{"name": "job", "emptyDir": {}}, {"name": "dshm", "emptyDir": {"medium": "Memory"}}],
    }
    if settings.k8s_service_account:
        pod["serviceAccountName"] = settings.k8s_service_account
    if settings.k8s_image_pull_secrets:
        pod["imagePullSecrets"] = [{"name": s} for s in settings.k8s_image_pull_secrets]
    return {
        "apiVersion": f"{PYTORCHJOB[0]}/{PYTORCHJOB[1]}",
        "kind": PYTORCHJOB[3],
        "metadata": {"name": name, "namespace": settings.k8s_namespace, "labels": _labels(job_id, attempt)},
        "spec": {
            "elasticPolicy": {
                "rdzvBackend": "c10d", "minReplicas": spec.nnodes, "maxReplicas": spec.nnodes, "maxRestarts": 0,
                "nProcPerNode": spec.nproc_per_node,
            },
            "runPolicy": {"cleanPodPolicy": "Running", "backoffLimit": 0, "ttlSecondsAfterFinished": 86400},
            "pytorchReplicaSpecs": {
                "Worker": {
                    "replicas": spec.nnodes, "restartPolicy": "Never",
                    "template": {"metadata": {"labels": _labels(job_id, attempt)}, "spec": pod},
                }
            },
        },
    }  # fmt: skip


def render(job_id: str, attempt: int, spec: TrainSpec, settings: TrainerSettings) -> dict[str, Any]:
    if settings.k8s_api == "pytorchjob":
        return render_pytorchjob(job_id, attempt, spec, settings)
    return render_trainjob(job_id, attempt, spec, settings)


# --- the bundle the nodes read ----------------------------------------------------------------------------


def make_bundle(
    job_id: str, attempt: int, spec: TrainSpec, dataset: dict[str, Any], clusters: dict[str, Any] | None,
    node_dir: str = NODE_DIR,
) -> dict[str, Any]:  # fmt: skip
    """What a node needs: the resolved config (node paths) and each input as {id, uri, files}."""
    config = spec.to_train_config(
        f"{node_dir}/dataset", f"{node_dir}/run", clusters_dir=f"{node_dir}/clusters" if clusters else None
    )
    return {
        "job_id": job_id, "attempt": attempt, "config": config.model_dump(mode="json"), "dataset": dataset,
        "clusters": clusters,
        "checkpoint": {"keep_last": spec.checkpoint.keep_last, "keep_best": spec.checkpoint.keep_best},
    }  # fmt: skip


def write_bundle(ctx: JobContext, spec: TrainSpec, node_dir: str = NODE_DIR) -> dict[str, Any]:
    """Store the attempt's bundle at `bundle_key` (the pods read it from there)."""

    def describe(artifact_id: str, kind: str) -> dict[str, Any]:
        row = artifacts.get_artifact(ctx.db, artifact_id)
        if row is None or row.owner_id != ctx.owner_id or row.kind != kind:
            raise PermanentError(f"artifact {artifact_id} ({kind}) is not available to this job")
        return {"id": row.id, "uri": row.uri, "files": row.meta.get("files", [])}

    clusters = spec.clusters_artifact
    bundle = make_bundle(
        ctx.job_id, ctx.attempt, spec, describe(spec.dataset, dataset_kind(spec.model.family)),
        describe(clusters, "clusters") if clusters else None, node_dir,
    )  # fmt: skip
    ctx.store.put_bytes(bundle_key(ctx.job_id, ctx.attempt), json.dumps(bundle, indent=1).encode())
    return bundle


# --- submit and follow ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Phase:
    done: bool
    succeeded: bool = False
    message: str = ""


def phase_of(obj: dict[str, Any]) -> Phase:
    """Map a TrainJob / PyTorchJob status to done/succeeded, from its conditions."""
    for cond in (obj.get("status") or {}).get("conditions") or []:
        if str(cond.get("status")) != "True":
            continue
        if cond.get("type") in ("Complete", "Succeeded"):
            return Phase(done=True, succeeded=True, message=cond.get("message", ""))
        if cond.get("type") == "Failed":
            return Phase(done=True, message=cond.get("message") or cond.get("reason") or "failed")
    return Phase(done=False)


class KubeApi:
    """The few custom-object calls the launcher makes, through the official `kubernetes` client."""

    def __init__(self) -> None:
        try:
            from kubernetes import client, config
        except ImportError:
            raise PermanentError(
                "launcher: kubeflow needs the `kubernetes` Python package on the train worker "
                "(pip install kubernetes) and access to a cluster with Kubeflow Trainer"
            ) from None
        try:
            config.load_incluster_config()
        except Exception:
            try:
                config.load_kube_config()
            except Exception as exc:
                raise PermanentError(
                    f"launcher: kubeflow: no Kubernetes configuration (in-cluster or ~/.kube/config): {exc}"
                ) from None
        self._client = client
        self._api = client.CustomObjectsApi()

    def create(self, obj: dict[str, Any]) -> None:
        group, version, plural = _coords(obj)
        self._api.create_namespaced_custom_object(group, version, obj["metadata"]["namespace"], plural, obj)

    def get(self, obj: dict[str, Any]) -> dict[str, Any]:
        group, version, plural = _coords(obj)
        meta = obj["metadata"]
        return self._api.get_namespaced_custom_object(group, version, meta["namespace"], plural, meta["name"])

    def delete(self, obj: dict[str, Any]) -> None:
        group, version, plural = _coords(obj)
        meta = obj["metadata"]
        options = self._client.V1DeleteOptions(propagation_policy="Foreground")
        try:
            self._api.delete_namespaced_custom_object(
                group, version, meta["namespace"], plural, meta["name"], body=options
            )
        except self._client.exceptions.ApiException as exc:
            if exc.status != 404:
                raise


def _coords(obj: dict[str, Any]) -> tuple[str, str, str]:
    for group, version, plural, kind in (TRAINJOB, PYTORCHJOB):
        if obj["kind"] == kind:
            return group, version, plural
    raise ValueError(f"not a Kubeflow job: {obj['kind']}")


def run_kubeflow(ctx: JobContext, api: Any | None = None) -> None:
    """One attempt of a `launcher: kubeflow` job: submit, follow, publish (see the module docstring)."""
    spec = ctx.spec
    assert isinstance(spec, TrainSpec)
    settings = get_trainer_settings()
    done = ctx.find_artifact("model")
    if done is not None:
        ctx.log(f"model already published by an earlier attempt: {done}")
        return
    api = api or KubeApi()
    write_bundle(ctx, spec)
    manifest = render(ctx.job_id, ctx.attempt, spec, settings)
    ctx.progress(0, spec.steps, f"submitting {manifest['kind']} {manifest['metadata']['name']}")
    api.create(manifest)
    ctx.log(
        f"submitted {manifest['kind']} {manifest['metadata']['namespace']}/{manifest['metadata']['name']}"
    )
    ctx.on_cancel(lambda: api.delete(manifest))
    phase = follow(ctx, api, manifest, spec, settings)
    if ctx.cancelled.is_set():
        raise JobCancelled(ctx.cancel_reason or "cancelled")
    if not phase.succeeded:
        raise RuntimeError(f"{manifest['kind']} {manifest['metadata']['name']} failed: {phase.message}")
    publish_final(ctx, spec, ctx.store)


def follow(
    ctx: JobContext, api: Any, manifest: dict[str, Any], spec: TrainSpec, settings: TrainerSettings
) -> Phase:
    """Poll the job's status and mirror the stored metrics into the job row until it ends."""
    run_store = RunStore(ctx.store, ctx.job_id)
    local = ctx.scratch_dir / "metrics.jsonl"
    tail = MetricsTail(local, ctx, spec.steps)
    submitted = time.monotonic()
    while not ctx.cancelled.is_set():
        phase = phase_of(api.get(manifest))
        if ctx.store.stat(run_store.metrics_key) is not None:
            local.write_bytes(ctx.store.get_bytes(run_store.metrics_key))
            tail.poll()
        if phase.done:
            return phase
        if not tail.first_step_seen and time.monotonic() - submitted > settings.k8s_pending_timeout_s:
            api.delete(manifest)
            return Phase(
                done=True, message=f"no training step within {settings.k8s_pending_timeout_s:g}s of submission "
                "(pods pending, image pull or rendezvous stuck); deleted it"
            )  # fmt: skip
        ctx.cancelled.wait(settings.k8s_poll_s)
    return Phase(done=True, message="cancelled")


def publish_final(ctx: JobContext, spec: TrainSpec, store: ObjectStore) -> str:
    """Download the `final/` model folder a node uploaded, add job_spec.json, publish it as `model`."""
    marker = json.loads(store.get_bytes(final_marker_key(ctx.job_id)))
    out = ctx.scratch_dir / "final"
    shutil.rmtree(out, ignore_errors=True)
    for record in marker["files"]:
        info = store.get_file(final_prefix(ctx.job_id) + record["path"], out / record["path"])
        if info.sha256 != record["sha256"]:
            raise RuntimeError(f"final model file {record['path']} is corrupt in the store")
    job_spec = {
        "job_id": ctx.job_id,
        "kind": ctx.kind,
        "attempt": ctx.attempt,
        "spec": spec.model_dump(mode="json"),
    }
    (out / "job_spec.json").write_text(json.dumps(job_spec, indent=2, sort_keys=True) + "\n")
    trained = json.loads((out / "config.json").read_text()).get("trained") or {}
    return ctx.publish_directory(
        Path(out), kind="model", name="model",
        metadata={"family": spec.model.family, "step": trained.get("step"), "dataset": spec.dataset,
                  "world_size": spec.world_size, "launcher": "kubeflow"},
    )  # fmt: skip
