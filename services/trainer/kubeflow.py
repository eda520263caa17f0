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

The pods never touch the job table: they need only the object store (settings from the `mmdlm-config`
ConfigMap, and of the Secret only MMDLM_S3_ACCESS_KEY/SECRET_KEY). Every attempt is a new object named
after the job and attempt, so a resubmission never joins a stale rendezvous; before submitting it, every
TrainJob/PyTorchJob labelled with the job id is deleted and waited out (`delete_job_objects`), so a
restarted worker never runs two attempts at once; cancel deletes them the same way. Pods stuck before
training (image pull, scheduling, C.2 "stuck in Initializing") fail the attempt after
MMDLM_TRAIN_K8S_PENDING_TIMEOUT_S, counted from admission: a job held by a Kueue queue
(MMDLM_TRAIN_K8S_QUEUE_NAME; created suspended) waits as long as the queue needs. The cluster path is
exercised by tests/deploy/test_kubeflow_render.py (upstream CRDs, NetworkPolicies, injected env) and
tests/integration/trainer/test_kubeflow_node.py (the rendered pods run as local processes).
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

NODE_DIR = "/var/lib/mmdlm/job"  # the node agent's working dir in the pods (on the `data` volume)
TRAINJOB = ("trainer.kubeflow.org", "v1alpha1", "trainjobs", "TrainJob")
PYTORCHJOB = ("kubeflow.org", "v1", "pytorchjobs", "PyTorchJob")
RDZV_PORT = 29500  # Kubeflow Trainer's PET_MASTER_PORT; the PyTorchJob's rdzvPort
JOB_ID_LABEL = "mmdlm.dev/job-id"
ATTEMPT_LABEL = "mmdlm.dev/attempt"
QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
PATCH_MANAGER = "mmdlm.dev/train-worker"  # owner of the TrainJob's runtimePatches entry
# the labels the NetworkPolicies select (k8s/base/networkpolicies.yaml: ranks reach each other)
NODE_LABELS = {
    "app.kubernetes.io/name": "mmdlm",
    "app.kubernetes.io/component": "train-node",
    "app.kubernetes.io/part-of": "mmdlm",
}
# the only secrets a node needs: it reads and writes the object store, never the database or broker
NODE_SECRET_KEYS = ("MMDLM_S3_ACCESS_KEY", "MMDLM_S3_SECRET_KEY")
UID = 10001  # the images' `mmdlm` user


def resource_name(job_id: str, attempt: int) -> str:
    """A DNS-1035 label unique per attempt: `mmdlm-<job id>-a<attempt>`."""
    return f"mmdlm-{job_id.lower()[:40]}-a{attempt}"


def bundle_key(job_id: str, attempt: int) -> str:
    return f"runs/{job_id}/attempt-{attempt}/bundle.json"


def final_marker_key(job_id: str) -> str:
    return f"runs/{job_id}/final.json"


def final_prefix(job_id: str) -> str:
    return f"runs/{job_id}/final/"


# --- rendering: one pod template, two APIs -----------------------------------------------------------------
#
# `node_pod` is the single source of what a node pod is (labels, security, volumes, settings, secrets,
# scheduling). A PyTorchJob embeds it whole; a TrainJob gets it from the `mmdlm-torch` runtime (rendered
# from it by `render_runtime`) plus, per job, its `trainer` fields and a `runtimePatches` entry carrying
# every patchable part of it, so a TrainJob's pods equal a PyTorchJob's even when the worker's settings
# changed after the runtime was installed. `python -m services.trainer.kubeflow --write k8s/kubeflow`
# writes the shipped examples from these functions; tests/deploy checks they are current.


def node_args(job_id: str, attempt: int, name: str, *, api: str) -> list[str]:
    """The pod's args: the node agent, then the torchrun command it runs after staging (in its job dir).

    TrainJob: Kubeflow Trainer's torch plugin injects PET_NNODES, PET_NPROC_PER_NODE, PET_NODE_RANK,
    PET_MASTER_ADDR and PET_MASTER_PORT; Kubernetes expands the $(VAR) references below from them (the
    node agent refuses to start if one was not set). PyTorchJob (elastic policy): the Training Operator
    injects PET_RDZV_ENDPOINT, PET_RDZV_BACKEND, PET_RDZV_ID, PET_NNODES (min:max) and
    PET_NPROC_PER_NODE, which torchrun reads as its defaults. `--log-dir` + `--redirects 3 --tee 3`: each
    rank's stdout/stderr goes to the pod log and to a file the node agent uploads (tracebacks come back).
    """
    torchrun = ["torchrun"]
    if api == "trainjob":
        torchrun += [
            "--rdzv-backend=c10d", "--rdzv-endpoint=$(PET_MASTER_ADDR):$(PET_MASTER_PORT)", f"--rdzv-id={name}",
            "--nnodes=$(PET_NNODES)", "--nproc-per-node=$(PET_NPROC_PER_NODE)",
        ]  # fmt: skip
    torchrun += [
        "--max-restarts=0", "--log-dir=logs", "--redirects=3", "--tee=3",
        "-m", "services.trainer.rank", "--config", "train.json",
    ]  # fmt: skip
    agent = ["python", "-m", "services.trainer.node", "--job-id", job_id, "--attempt", str(attempt)]
    return [*agent, "--", *torchrun]


def _resources(spec: TrainSpec, settings: TrainerSettings) -> dict[str, Any]:
    kf = spec.kubeflow
    requests: dict[str, str] = {"cpu": kf.cpu, "memory": kf.memory}
    limits: dict[str, str] = {"memory": kf.memory}
    if kf.gpus_per_node:
        requests[settings.k8s_gpu_resource] = limits[settings.k8s_gpu_resource] = str(kf.gpus_per_node)
    return {"requests": requests, "limits": limits}


def _labels(job_id: str, attempt: int, settings: TrainerSettings) -> dict[str, str]:
    labels = {"app.kubernetes.io/part-of": "mmdlm", JOB_ID_LABEL: job_id, ATTEMPT_LABEL: str(attempt)}
    if settings.k8s_queue_name:
        labels[QUEUE_LABEL] = settings.k8s_queue_name
    return labels


def tolerations(settings: TrainerSettings) -> list[dict[str, str]]:
    """`key[=value]:effect` -> a toleration (operator Exists without a value)."""
    out = []
    for item in settings.k8s_tolerations:
        key, _, effect = item.rpartition(":")
        name, has_value, value = key.partition("=")
        entry = {"key": name, "operator": "Equal" if has_value else "Exists"}
        if has_value:
            entry["value"] = value
        out.append({**entry, "effect": effect})
    return out


def node_env(job_id: str | None, settings: TrainerSettings) -> list[dict[str, Any]]:
    """Per-job environment of a node container: the job id and the store's two secret keys only."""
    env: list[dict[str, Any]] = []
    if job_id is not None:
        env.append({"name": "MMDLM_JOB_ID", "value": job_id})
    if settings.k8s_env_from_secret:
        env += [
            {"name": key, "valueFrom": {"secretKeyRef": {"name": settings.k8s_env_from_secret, "key": key}}}
            for key in NODE_SECRET_KEYS
        ]
    env += [
        {"name": "NCCL_DEBUG", "value": "WARN"},
        {"name": "TORCH_NCCL_ASYNC_ERROR_HANDLING", "value": "1"},
        {"name": "HF_HOME", "value": "/cache/huggingface"},
    ]
    return env


def node_pod(
    settings: TrainerSettings,
    *,
    container_name: str,
    image: str,
    args: list[str] | None = None,
    env: list[dict[str, Any]] | None = None,
    resources: dict[str, Any] | None = None,
    labels: dict[str, str] | None = None,
    gpus: bool = True,
) -> dict[str, Any]:
    """The pod template of every node of a job (both APIs): see the comment above."""
    container: dict[str, Any] = {
        "name": container_name,
        "image": image,
        "command": ["tini", "--", "mmdlm-entrypoint"],
    }
    if args is not None:
        container["args"] = args
    container["envFrom"] = [{"configMapRef": {"name": settings.k8s_config_map}}]
    if env is not None:
        container["env"] = env
    container["ports"] = [{"name": "pytorchjob-port", "containerPort": RDZV_PORT, "protocol": "TCP"}]
    if resources is not None:
        container["resources"] = resources
    container["securityContext"] = {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }
    container["volumeMounts"] = [
        {"name": "tmp", "mountPath": "/tmp"},
        {"name": "data", "mountPath": str(Path(NODE_DIR).parent)},
        # its own volume name for a PVC: a TrainJob's patch merges volumes by name, and merging a PVC into
        # the runtime's `cache` emptyDir would make one volume with two sources (mounts merge by path)
        {"name": "cache-pvc" if settings.k8s_cache_pvc else "cache", "mountPath": "/cache"},
        {"name": "dshm", "mountPath": "/dev/shm"},
    ]
    cache: dict[str, Any] = (
        {"name": "cache-pvc", "persistentVolumeClaim": {"claimName": settings.k8s_cache_pvc}}
        if settings.k8s_cache_pvc
        else {"name": "cache", "emptyDir": {"sizeLimit": "50Gi"}}
    )
    spec: dict[str, Any] = {"restartPolicy": "Never"}
    if settings.k8s_service_account:
        spec["serviceAccountName"] = settings.k8s_service_account
    spec["automountServiceAccountToken"] = False  # the nodes never call the Kubernetes API
    spec["terminationGracePeriodSeconds"] = 120
    spec["securityContext"] = {
        "runAsNonRoot": True, "runAsUser": UID, "runAsGroup": UID, "fsGroup": UID,
        "seccompProfile": {"type": "RuntimeDefault"},
    }  # fmt: skip
    if gpus and settings.node_selector:
        spec["nodeSelector"] = settings.node_selector
    if gpus and settings.k8s_tolerations:
        spec["tolerations"] = tolerations(settings)
    if settings.k8s_image_pull_secrets:
        spec["imagePullSecrets"] = [{"name": s} for s in settings.k8s_image_pull_secrets]
    spec["containers"] = [container]
    spec["volumes"] = [
        {"name": "tmp", "emptyDir": {"sizeLimit": "1Gi"}},
        {"name": "data", "emptyDir": {"sizeLimit": "200Gi"}},
        cache,
        {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "64Gi"}},
    ]
    return {"metadata": {"labels": {**NODE_LABELS, **(labels or {})}}, "spec": spec}


def render_runtime(settings: TrainerSettings) -> dict[str, Any]:
    """The `ClusterTrainingRuntime` every TrainJob names (`k8s/kubeflow/clustertrainingruntime.yaml`):
    the node pod without per-job fields or GPU scheduling (each TrainJob patches those in)."""
    pod = node_pod(settings, container_name="node", image=settings.k8s_image, gpus=False)
    return {
        "apiVersion": f"{TRAINJOB[0]}/{TRAINJOB[1]}",
        "kind": "ClusterTrainingRuntime",
        "metadata": {
            "name": settings.k8s_runtime,
            "labels": {"trainer.kubeflow.org/framework": "torch", "app.kubernetes.io/part-of": "mmdlm"},
        },
        "spec": {
            "mlPolicy": {"numNodes": 1, "torch": {}},
            "template": {"spec": {"replicatedJobs": [{
                "name": "node",  # Trainer's name for the trainer job and its container
                "template": {
                    "metadata": {"labels": {"trainer.kubeflow.org/trainjob-ancestor-step": "trainer"}},
                    # no Job-level retry: a failed rank fails the TrainJob, and the platform's next
                    # attempt resumes from the last checkpoint (no hung half-jobs)
                    "spec": {"backoffLimit": 0, "template": pod},
                },
            }]}},
        },
    }  # fmt: skip


def _node_pod_for(
    job_id: str, attempt: int, spec: TrainSpec, settings: TrainerSettings, api: str
) -> dict[str, Any]:
    name = resource_name(job_id, attempt)
    return node_pod(
        settings,
        container_name="node" if api == "trainjob" else "pytorch",  # names each controller requires
        image=spec.kubeflow.image or settings.k8s_image,
        args=node_args(job_id, attempt, name, api=api),
        env=node_env(job_id, settings),
        resources=_resources(spec, settings),
        labels=_labels(job_id, attempt, settings),
        gpus=spec.kubeflow.gpus_per_node > 0,
    )


def render_trainjob(job_id: str, attempt: int, spec: TrainSpec, settings: TrainerSettings) -> dict[str, Any]:
    """A Kubeflow Trainer v2 TrainJob on the `render_runtime` runtime, patched with this job's pod."""
    name = resource_name(job_id, attempt)
    pod = _node_pod_for(job_id, attempt, spec, settings, "trainjob")
    (container,) = pod["spec"]["containers"]
    patchable = ("serviceAccountName", "terminationGracePeriodSeconds", "securityContext", "nodeSelector",
                 "tolerations", "imagePullSecrets", "volumes")  # fmt: skip
    pod_patch = {key: pod["spec"][key] for key in patchable if key in pod["spec"]}
    # container env is not patchable on the trainer container: it goes in `trainer.env`
    pod_patch["containers"] = [
        {
            "name": "node",
            "securityContext": container["securityContext"],
            "volumeMounts": container["volumeMounts"],
        }
    ]
    job_spec: dict[str, Any] = {
        "runtimeRef": {"apiGroup": TRAINJOB[0], "kind": "ClusterTrainingRuntime", "name": settings.k8s_runtime},
        "trainer": {
            "image": container["image"],
            "command": container["command"],
            "args": container["args"],
            "env": container["env"],
            "numNodes": spec.nnodes,
            "numProcPerNode": spec.nproc_per_node,
            "resourcesPerNode": container["resources"],
        },
        "runtimePatches": [{
            "manager": PATCH_MANAGER,
            "trainingRuntimeSpec": {"template": {"spec": {"replicatedJobs": [{
                "name": "node",
                "template": {"spec": {"template": {"metadata": pod["metadata"], "spec": pod_patch}}},
            }]}}},
        }],
    }  # fmt: skip
    if settings.k8s_queue_name:
        job_spec["suspend"] = True  # Kueue admits (unsuspends) it when the queue has quota
    return {
        "apiVersion": f"{TRAINJOB[0]}/{TRAINJOB[1]}",
        "kind": TRAINJOB[3],
        "metadata": {
            "name": name,
            "namespace": settings.k8s_namespace,
            "labels": _labels(job_id, attempt, settings),
        },
        "spec": job_spec,
    }


def render_pytorchjob(
    job_id: str, attempt: int, spec: TrainSpec, settings: TrainerSettings
) -> dict[str, Any]:
    """The same job for the Kubeflow Training Operator v1 (elastic, c10d, every replica a Worker)."""
    name = resource_name(job_id, attempt)
    run_policy: dict[str, Any] = {
        "cleanPodPolicy": "Running",
        "backoffLimit": 0,
        "ttlSecondsAfterFinished": 86400,
    }
    if settings.k8s_queue_name:
        run_policy["suspend"] = True  # Kueue admits (unsuspends) it when the queue has quota
    return {
        "apiVersion": f"{PYTORCHJOB[0]}/{PYTORCHJOB[1]}",
        "kind": PYTORCHJOB[3],
        "metadata": {"name": name, "namespace": settings.k8s_namespace, "labels": _labels(job_id, attempt, settings)},
        "spec": {
            "elasticPolicy": {
                "rdzvBackend": "c10d", "rdzvPort": RDZV_PORT, "rdzvId": name,
                "minReplicas": spec.nnodes, "maxReplicas": spec.nnodes, "maxRestarts": 0,
            },
            "nprocPerNode": str(spec.nproc_per_node),
            "runPolicy": run_policy,
            "pytorchReplicaSpecs": {
                "Worker": {
                    "replicas": spec.nnodes, "restartPolicy": "Never",
                    "template": _node_pod_for(job_id, attempt, spec, settings, "pytorchjob"),
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
    job_id: str, attempt: int, spec: TrainSpec, dataset: dict[str, Any], clusters: dict[str, Any] | None
) -> dict[str, Any]:
    """What a node needs: the config (paths relative to the node's job dir, which the node agent
    resolves, so every node of any layout reads the same bundle) and each input as {id, uri, files}."""
    config = spec.to_train_config("dataset", "run", clusters_dir="clusters" if clusters else None)
    return {
        "job_id": job_id, "attempt": attempt, "config": config.model_dump(mode="json"), "dataset": dataset,
        "clusters": clusters,
        "checkpoint": {"keep_last": spec.checkpoint.keep_last, "keep_best": spec.checkpoint.keep_best},
    }  # fmt: skip


def write_bundle(ctx: JobContext, spec: TrainSpec) -> dict[str, Any]:
    """Store the attempt's bundle at `bundle_key` (the pods read it from there)."""

    def describe(artifact_id: str, kind: str) -> dict[str, Any]:
        row = artifacts.get_artifact(ctx.db, artifact_id)
        if row is None or row.owner_id != ctx.owner_id or row.kind != kind:
            raise PermanentError(f"artifact {artifact_id} ({kind}) is not available to this job")
        return {"id": row.id, "uri": row.uri, "files": row.meta.get("files", [])}

    clusters = spec.clusters_artifact
    bundle = make_bundle(
        ctx.job_id, ctx.attempt, spec, describe(spec.dataset, dataset_kind(spec.model.family)),
        describe(clusters, "clusters") if clusters else None,
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


def is_queued(obj: dict[str, Any]) -> bool:
    """Held by a queue (Kueue): suspended, or with a `Suspended` condition, so not yet admitted."""
    spec = obj.get("spec") or {}
    if spec.get("suspend") or (spec.get("runPolicy") or {}).get("suspend"):
        return True
    conditions = (obj.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Suspended" and str(c.get("status")) == "True" for c in conditions)


class PendingClock:
    """The pending timeout counts only while the job is admitted: a job waiting in a Kueue queue can
    wait as long as the queue needs, and a job Kueue evicts (suspends again) starts a fresh count."""

    def __init__(self, timeout_s: float, clock: Any = time.monotonic) -> None:
        self.timeout_s = timeout_s
        self._clock = clock
        self._since: float | None = None

    def expired(self, obj: dict[str, Any]) -> bool:
        if is_queued(obj):
            self._since = None
            return False
        now = self._clock()
        if self._since is None:
            self._since = now
        return now - self._since > self.timeout_s


class KubeApi:
    """The few custom-object calls the launcher makes, through the official `kubernetes` client.

    `api_client`: a configured `kubernetes.client.ApiClient` (tests point one at a recording server);
    by default the in-cluster service account, else ~/.kube/config."""

    def __init__(self, api_client: Any | None = None) -> None:
        try:
            from kubernetes import client, config
        except ImportError:
            raise PermanentError(
                "launcher: kubeflow needs the `kubernetes` Python package on the train worker "
                "(pip install kubernetes) and access to a cluster with Kubeflow Trainer"
            ) from None
        if api_client is None:
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
        self._api = client.CustomObjectsApi(api_client)

    def create(self, obj: dict[str, Any]) -> None:
        group, version, plural = _coords(obj)
        self._api.create_namespaced_custom_object(group, version, obj["metadata"]["namespace"], plural, obj)

    def get(self, obj: dict[str, Any]) -> dict[str, Any]:
        group, version, plural = _coords(obj)
        meta = obj["metadata"]
        return self._api.get_namespaced_custom_object(group, version, meta["namespace"], plural, meta["name"])

    def list(self, kind: tuple[str, str, str, str], namespace: str, selector: str) -> list[dict[str, Any]]:
        """Objects of `kind` matching a label selector; none when the cluster lacks that CRD (404)."""
        group, version, plural, _ = kind
        try:
            found = self._api.list_namespaced_custom_object(
                group, version, namespace, plural, label_selector=selector
            )
        except self._client.exceptions.ApiException as exc:
            if exc.status == 404:
                return []
            raise
        return list(found.get("items") or [])

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


def delete_job_objects(
    api: Any, namespace: str, job_id: str, *, wait_s: float = 0.0, poll_s: float = 1.0
) -> list[str]:
    """Delete every TrainJob and PyTorchJob of `job_id` (label `mmdlm.dev/job-id`, any attempt), then
    wait up to `wait_s` until they are gone (foreground deletion: their pods first). Returns the names.

    Run before each submission and on cancel, so a restarted worker never has two attempts running."""
    selector = f"{JOB_ID_LABEL}={job_id}"
    names: list[str] = []
    for kind in (TRAINJOB, PYTORCHJOB):
        for obj in api.list(kind, namespace, selector):
            obj.setdefault("kind", kind[3])
            obj["metadata"].setdefault("namespace", namespace)
            api.delete(obj)
            names.append(f"{kind[3]} {obj['metadata']['name']}")
    deadline = time.monotonic() + wait_s
    while names and wait_s > 0:
        left = [
            o["metadata"]["name"]
            for kind in (TRAINJOB, PYTORCHJOB)
            for o in api.list(kind, namespace, selector)
        ]
        if not left:
            break
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"earlier attempts of job {job_id} still exist {wait_s:g}s after deleting them: {left}"
            )
        time.sleep(poll_s)
    return names


def submit(api: Any, manifest: dict[str, Any], *, wait_s: float, poll_s: float) -> list[str]:
    """Create `manifest` after deleting (and waiting out) every object of the same job id: returns
    what was deleted. Attempt n never overlaps attempt n-1, whichever worker submitted that one."""
    meta = manifest["metadata"]
    stale = delete_job_objects(
        api, meta["namespace"], meta["labels"][JOB_ID_LABEL], wait_s=wait_s, poll_s=poll_s
    )
    api.create(manifest)
    return stale


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
    namespace = settings.k8s_namespace
    write_bundle(ctx, spec)
    manifest = render(ctx.job_id, ctx.attempt, spec, settings)
    ctx.progress(0, spec.steps, f"submitting {manifest['kind']} {manifest['metadata']['name']}")
    stale = submit(api, manifest, wait_s=settings.k8s_pending_timeout_s, poll_s=settings.k8s_poll_s)
    if stale:
        ctx.log(f"deleted the earlier attempts' objects first: {', '.join(stale)}")
    ctx.log(f"submitted {manifest['kind']} {namespace}/{manifest['metadata']['name']}")
    ctx.on_cancel(lambda: delete_job_objects(api, namespace, ctx.job_id))
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
    pending = PendingClock(settings.k8s_pending_timeout_s)
    queued = False
    while not ctx.cancelled.is_set():
        obj = api.get(manifest)
        phase = phase_of(obj)
        if ctx.store.stat(run_store.metrics_key) is not None:
            local.write_bytes(ctx.store.get_bytes(run_store.metrics_key))
            tail.poll()
        if phase.done:
            return phase
        if is_queued(obj) != queued:
            queued = not queued
            ctx.progress(0, spec.steps, "waiting in the queue (suspended)" if queued else "admitted")
        if not tail.first_step_seen and pending.expired(obj):
            api.delete(manifest)
            return Phase(
                done=True, message=f"no training step within {settings.k8s_pending_timeout_s:g}s of admission "
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


# --- the shipped examples (k8s/kubeflow) ------------------------------------------------------------------

EXAMPLE_JOB_ID = "0123456789abcdef0123456789abcdef"
_HEADER = "# GENERATED by `python -m services.trainer.kubeflow --write k8s/kubeflow`: do not edit.\n"
_ABOUT = {
    "clustertrainingruntime.yaml": """\
# The runtime behind every MM-DLM TrainJob (runtimeRef: ClusterTrainingRuntime/mmdlm-torch), applied once
# with `kubectl apply -k k8s/kubeflow`: the node pod of services.trainer.kubeflow.node_pod without the
# per-job fields, which each TrainJob sets (trainer: image, args, env, resources) and patches in
# (runtimePatches: job labels, GPU nodeSelector/tolerations, volumes, security, service account).
""",
    "trainjob.yaml": """\
# An example of the Kubeflow Trainer v2 TrainJob a train worker submits for a `launcher: kubeflow` job
# (2 nodes x 8 GPUs), one per attempt, with the prod settings of k8s/base/configmap.yaml. Every node runs
# the node agent (stage the inputs from the object store), which runs torchrun with the c10d rendezvous
# on node 0: Trainer's torch plugin injects PET_NNODES, PET_NPROC_PER_NODE, PET_NODE_RANK,
# PET_MASTER_ADDR and PET_MASTER_PORT (29500) and Kubernetes expands the $(VAR)s in args from them.
""",
    "pytorchjob.yaml": """\
# The same job for clusters still on the Kubeflow Training Operator v1 (MMDLM_TRAIN_K8S_API=pytorchjob):
# elastic policy, every replica a Worker; the operator injects PET_RDZV_ENDPOINT (<name>-worker-0:29500),
# PET_RDZV_BACKEND=c10d, PET_RDZV_ID, PET_NNODES=2:2 and PET_NPROC_PER_NODE, which torchrun reads.
""",
}


def example_settings() -> TrainerSettings:
    """The prod-gpu ConfigMap's kubeflow settings (model_validate: no environment is read)."""
    return TrainerSettings.model_validate(
        {"k8s_namespace": "mmdlm", "k8s_image": "mmdlm:0.1.0-cuda", "k8s_runtime": "mmdlm-torch",
         "k8s_service_account": "mmdlm-train-node", "k8s_env_from_secret": "mmdlm-secrets"}
    )  # fmt: skip


def examples() -> dict[str, str]:
    """File name -> the YAML text shipped in k8s/kubeflow."""
    import yaml

    settings = example_settings()
    spec = TrainSpec.model_validate(
        {"dataset": "d" * 32, "model": {"family": "mdlm", "model": "small"}, "launcher": "kubeflow",
         "nnodes": 2, "nproc_per_node": 8, "kubeflow": {"gpus_per_node": 8, "cpu": "32", "memory": "256Gi"}}
    )  # fmt: skip
    objects = {
        "clustertrainingruntime.yaml": render_runtime(settings),
        "trainjob.yaml": render_trainjob(EXAMPLE_JOB_ID, 1, spec, settings),
        "pytorchjob.yaml": render_pytorchjob(EXAMPLE_JOB_ID, 1, spec, settings),
    }
    return {
        name: _HEADER + _ABOUT[name] + yaml.safe_dump(obj, sort_keys=False, width=120)
        for name, obj in objects.items()
    }


def main(argv: list[str] | None = None) -> int:
    """`python -m services.trainer.kubeflow --write DIR` writes the examples; `--check DIR` exits 1 when
    a file differs from what the renderer makes (tests/deploy runs it)."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(prog="python -m services.trainer.kubeflow")
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--write", type=Path, metavar="DIR")
    group.add_argument("--check", type=Path, metavar="DIR")
    args = parser.parse_args(argv)
    stale = []
    for name, text in examples().items():
        if args.write:
            (args.write / name).write_text(text)
        elif not (args.check / name).is_file() or (args.check / name).read_text() != text:
            stale.append(name)
    for name in stale:
        sys.stderr.write(f"{args.check / name} differs from the renderer: run --write {args.check}\n")
    return 1 if stale else 0


if __name__ == "__main__":
    raise SystemExit(main())
