"""What `launcher: kubeflow` submits, for both APIs (Kubeflow Trainer v2 TrainJob, Training Operator v1
PyTorchJob), checked the way a cluster would check it: against the upstream CRDs (tests/deploy/crds,
strict), the Trainer admission rules for runtime patches, the pods the controllers would create (the
runtime merged with the TrainJob's patch, or the PyTorchJob's template), the NetworkPolicies of the
rendered base, and the environment the controllers inject, parsed by torchrun's own argument parser.

No Kubernetes API server can run here (no kube-apiserver package), so the launcher's calls are checked
against a small HTTP server that records the requests the official `kubernetes` client sends."""

from __future__ import annotations

import copy
import json
import re
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from services.deploy import k8s, kustomize
from services.trainer import kubeflow, node
from services.trainer.kinds import TrainSpec
from services.trainer.settings import TrainerSettings
from tests.deploy.support import K8S

CRDS = Path(__file__).parent / "crds"
CRD = {
    "TrainJob": CRDS / "trainer.kubeflow.org_trainjobs.yaml",
    "ClusterTrainingRuntime": CRDS / "trainer.kubeflow.org_clustertrainingruntimes.yaml",
    "PyTorchJob": CRDS / "kubeflow.org_pytorchjobs.yaml",
}
JOB = "0123456789abcdef0123456789abcdef"
APIS = ["trainjob", "pytorchjob"]
# kubeflow/trainer v2.3.0 pkg/constants/constants.go (TorchRunReservedEnvNames) and torch.go
TRAINER_TORCH_ENV = (
    "PET_NNODES",
    "PET_NPROC_PER_NODE",
    "PET_NODE_RANK",
    "PET_MASTER_ADDR",
    "PET_MASTER_PORT",
)


def settings(**overrides: Any) -> TrainerSettings:
    """The example (prod ConfigMap) settings with `overrides`, validated, no environment read."""
    return TrainerSettings.model_validate({**kubeflow.example_settings().model_dump(), **overrides})


def spec(*, gpus: int = 8, nnodes: int = 2, nproc: int = 8) -> TrainSpec:
    return TrainSpec.model_validate(
        {"dataset": "d" * 32, "model": {"family": "mdlm", "model": "small"}, "launcher": "kubeflow",
         "nnodes": nnodes, "nproc_per_node": nproc, "kubeflow": {"gpus_per_node": gpus}}
    )  # fmt: skip


def render(api: str, s: TrainerSettings | None = None, **spec_args: Any) -> dict[str, Any]:
    s = settings(**{**(s or settings()).model_dump(), "k8s_api": api})
    return kubeflow.render(JOB, 2, spec(**spec_args), s)


# --- what the controllers make of it ------------------------------------------------------------------------

# merge keys of the lists a strategic merge patch merges (k8s.io/api core/v1 and JobSet types)
MERGE_KEYS = {"replicatedJobs": "name", "containers": "name", "initContainers": "name", "volumes": "name",
              "env": "name", "volumeMounts": "mountPath", "imagePullSecrets": "name"}  # fmt: skip


def strategic_merge(base: Any, patch: Any, key: str = "") -> Any:
    """Kubernetes' strategic merge patch, for the fields a runtime patch can carry: maps merge, lists
    with a merge key merge item by item, other lists are replaced."""
    if isinstance(base, dict) and isinstance(patch, dict):
        out = dict(base)
        for k, v in patch.items():
            out[k] = strategic_merge(base[k], v, k) if k in base else copy.deepcopy(v)
        return out
    if isinstance(base, list) and isinstance(patch, list) and key in MERGE_KEYS:
        mk = MERGE_KEYS[key]
        out = [copy.deepcopy(item) for item in base]
        for item in patch:
            index = next((i for i, b in enumerate(out) if b.get(mk) == item.get(mk)), None)
            if index is None:
                out.append(copy.deepcopy(item))
            else:
                out[index] = strategic_merge(out[index], item, key)
        return out
    return copy.deepcopy(patch)


def node_pods(obj: dict[str, Any], runtime: dict[str, Any] | None = None) -> tuple[int, dict[str, Any]]:
    """(replicas, pod template) the controller creates from a TrainJob (on `runtime`) or a PyTorchJob."""
    if obj["kind"] == "PyTorchJob":
        worker = obj["spec"]["pytorchReplicaSpecs"]["Worker"]
        return worker["replicas"], copy.deepcopy(worker["template"])
    runtime = runtime or kubeflow.render_runtime(settings())
    jobset = runtime["spec"]["template"]["spec"]
    for patch in obj["spec"].get("runtimePatches") or []:  # Trainer: mergeRuntimePatches
        jobset = strategic_merge(jobset, patch["trainingRuntimeSpec"]["template"]["spec"])
    (job,) = [j for j in jobset["replicatedJobs"] if j["name"] == "node"]
    pod = copy.deepcopy(job["template"]["spec"]["template"])
    (container,) = [c for c in pod["spec"]["containers"] if c["name"] == "node"]
    trainer = obj["spec"]["trainer"]  # Trainer: the trainer fields override the runtime's container
    container.update(image=trainer["image"], command=trainer["command"], args=trainer["args"])
    container["env"] = strategic_merge(container.get("env") or [], trainer.get("env") or [], "env")
    container["resources"] = trainer["resourcesPerNode"]
    return trainer["numNodes"], pod


def injected_env(obj: dict[str, Any], node_rank: int) -> dict[str, str]:
    """The variables the controller adds to node `node_rank`'s container (upstream sources: crds/README)."""
    name = obj["metadata"]["name"]
    if obj["kind"] == "TrainJob":
        trainer = obj["spec"]["trainer"]
        return {
            "PET_NNODES": str(trainer["numNodes"]),
            "PET_NPROC_PER_NODE": str(trainer["numProcPerNode"]),
            "PET_NODE_RANK": str(node_rank),  # the JobSet pod's completion index
            "PET_MASTER_ADDR": f"{name}-node-0-0.{name}",
            "PET_MASTER_PORT": "29500",
        }
    policy = obj["spec"]["elasticPolicy"]
    port = policy.get("rdzvPort") or next(
        p["containerPort"]
        for p in obj["spec"]["pytorchReplicaSpecs"]["Worker"]["template"]["spec"]["containers"][0]["ports"]
        if p["name"] == "pytorchjob-port"
    )
    env = {"PYTHONUNBUFFERED": "1", "PET_NPROC_PER_NODE": obj["spec"]["nprocPerNode"]}
    env |= {
        "PET_RDZV_ENDPOINT": f"{policy.get('rdzvHost', f'{name}-worker-0')}:{port}",
        "PET_RDZV_BACKEND": policy.get("rdzvBackend", "c10d"),
        "PET_NNODES": f"{policy['minReplicas']}:{policy['maxReplicas']}",
        "PET_MAX_RESTARTS": str(policy["maxRestarts"]),
        "PET_RDZV_ID": policy["rdzvId"],
    }
    return env


def container_env(
    container: dict[str, Any], config_map: dict[str, str], secrets: dict[str, str], injected: dict[str, str]
) -> dict[str, str]:
    """The environment Kubernetes gives the container: envFrom, then env (secretKeyRef resolved), then
    the controller's variables. Raises KeyError for a reference to a missing ConfigMap/Secret key."""
    env: dict[str, str] = {}
    for source in container.get("envFrom") or []:
        assert set(source) == {"configMapRef"}, f"only the ConfigMap is mounted whole: {source}"
        env.update(config_map)
    for var in container.get("env") or []:
        if "value" in var:
            env[var["name"]] = var["value"]
        else:
            env[var["name"]] = secrets[var["valueFrom"]["secretKeyRef"]["key"]]
    env.update(injected)
    return env


def expand(args: list[str], env: dict[str, str]) -> list[str]:
    """Kubernetes' $(VAR) expansion of command/args: defined names are replaced, others kept."""
    return [re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: env.get(m[1], m[0]), a) for a in args]


# --- the shipped files and the client ------------------------------------------------------------------------


def test_shipped_examples_are_the_renderers_output(tmp_path: Path) -> None:
    assert kubeflow.main(["--check", str(K8S / "kubeflow")]) == 0
    kubeflow.main(["--write", str(tmp_path)])
    (tmp_path / "pytorchjob.yaml").write_text(
        (tmp_path / "pytorchjob.yaml").read_text().replace("c10d", "etcd")
    )
    assert kubeflow.main(["--check", str(tmp_path)]) == 1
    (runtime,) = kustomize.render(K8S / "kubeflow")
    assert runtime == kubeflow.render_runtime(kubeflow.example_settings())


def test_kubernetes_client_serialises_the_submitted_objects_unchanged() -> None:
    from kubernetes import client

    api = client.ApiClient()
    for name in APIS:
        obj = render(name)
        assert api.sanitize_for_serialization(obj) == obj
    options = client.V1DeleteOptions(propagation_policy="Foreground")
    assert api.sanitize_for_serialization(options) == {"propagationPolicy": "Foreground"}
    # the pod template is a valid V1PodTemplateSpec for the client's own model
    _, pod = node_pods(render("pytorchjob"))
    model = api._ApiClient__deserialize(pod, "V1PodTemplateSpec")  # type: ignore[attr-defined]
    assert api.sanitize_for_serialization(model) == pod


# --- schemas ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("api", APIS)
@pytest.mark.parametrize("variant", ["gpu", "cpu", "kueue+pvc"])
def test_rendered_objects_pass_the_upstream_crds(api: str, variant: str) -> None:
    s = (
        settings(k8s_queue_name="gpu-queue", k8s_cache_pvc="mmdlm-cache")
        if variant == "kueue+pvc"
        else settings()
    )
    obj = render(api, s, gpus=0 if variant == "cpu" else 8)
    assert k8s.validate_against_crd(obj, CRD[obj["kind"]]) == []
    assert k8s.validate_object(obj) == []  # the pod template through the strict built-in schemas
    runtime = kubeflow.render_runtime(s)
    assert k8s.validate_against_crd(runtime, CRD["ClusterTrainingRuntime"]) == []
    assert k8s.validate_object(runtime) == []


@pytest.mark.parametrize(
    "api, breakage, expected",
    [
        (
            "trainjob",
            lambda o: o["spec"]["trainer"].update(numProcPerNode="8"),
            "spec.trainer.numProcPerNode",
        ),
        (
            "trainjob",
            lambda o: o["spec"]["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"][
                "replicatedJobs"
            ][0]["template"]["spec"]["template"]["spec"].update(hostNetwork=True),
            "'hostNetwork' was unexpected",
        ),
        (
            "trainjob",
            lambda o: o["spec"]["runtimePatches"][0].pop("manager"),
            "'manager' is a required property",
        ),
        ("pytorchjob", lambda o: o["spec"].update(nprocPerNode=8), "spec.nprocPerNode"),
        ("pytorchjob", lambda o: o["spec"]["elasticPolicy"].update(rdzvPort="29500"), "rdzvPort"),
        (
            "pytorchjob",
            lambda o: o["spec"]["runPolicy"].update(cleanupPolicy="All"),
            "'cleanupPolicy' was unexpected",
        ),
    ],
)
def test_the_crd_check_catches_a_broken_object(api: str, breakage: Any, expected: str) -> None:
    obj = render(api)
    breakage(obj)
    problems = k8s.validate_against_crd(obj, CRD[obj["kind"]])
    assert any(expected in p for p in problems), problems


def test_trainjob_patch_follows_the_trainer_admission_rules() -> None:
    """kubeflow/trainer v2.3.0 pkg/runtime/framework/plugins/jobset/jobset.go and torch.go Validate."""
    obj = render("trainjob")
    runtime = kubeflow.render_runtime(settings())
    containers = {
        j["name"]: {c["name"] for c in j["template"]["spec"]["template"]["spec"]["containers"]}
        for j in runtime["spec"]["template"]["spec"]["replicatedJobs"]
    }
    assert containers == {"node": {"node"}}  # Trainer's trainer job and container are both `node`
    (patch,) = obj["spec"]["runtimePatches"]
    assert re.fullmatch(r"[a-z0-9.-]+/[a-z0-9./-]+", patch["manager"])  # a domain-prefixed path
    for job in patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]:
        assert job["name"] in containers
        for container in job["template"]["spec"]["template"]["spec"]["containers"]:
            assert container["name"] in containers[job["name"]]
            assert "env" not in container, "Trainer refuses env patches on the node container"
    assert not {e["name"] for e in obj["spec"]["trainer"]["env"]} & set(TRAINER_TORCH_ENV), "reserved names"
    ancestors = runtime["spec"]["template"]["spec"]["replicatedJobs"][0]["template"]["metadata"]["labels"]
    assert ancestors == {"trainer.kubeflow.org/trainjob-ancestor-step": "trainer"}
    assert "torch" in runtime["spec"]["mlPolicy"], "the torch plugin injects the PET_* variables"


# --- the pods -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("api", APIS)
def test_node_pods_carry_what_a_node_needs(api: str) -> None:
    replicas, pod = node_pods(render(api))
    assert replicas == 2
    spec_ = pod["spec"]
    (container,) = spec_["containers"]
    assert container["name"] == ("node" if api == "trainjob" else "pytorch")
    labels = pod["metadata"]["labels"]
    assert (
        labels.items()
        >= {**kubeflow.NODE_LABELS, kubeflow.JOB_ID_LABEL: JOB, kubeflow.ATTEMPT_LABEL: "2"}.items()
    )
    assert labels["app.kubernetes.io/component"] == "train-node"
    # settings from the ConfigMap; of the Secret, the two object-store keys and nothing else
    assert container["envFrom"] == [{"configMapRef": {"name": "mmdlm-config"}}]
    refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container["env"] if "valueFrom" in e}
    assert refs == {
        key: {"name": "mmdlm-secrets", "key": key} for key in ("MMDLM_S3_ACCESS_KEY", "MMDLM_S3_SECRET_KEY")
    }
    assert (
        "DATABASE" not in json.dumps(pod)
        and "BROKER" not in json.dumps(pod)
        and "TOKEN" not in json.dumps(pod)
    )
    # GPU nodes: one GPU per rank, the default selector and the toleration for the GPU taint
    assert (
        container["resources"]["limits"]["nvidia.com/gpu"]
        == container["resources"]["requests"]["nvidia.com/gpu"]
        == "8"
    )
    assert spec_["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert spec_["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    # a read-only root with writable mounts: /tmp, the job dir, /cache, /dev/shm in memory
    volumes = {v["name"]: v for v in spec_["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert set(mounts.values()) == set(volumes)
    assert volumes[mounts["/dev/shm"]]["emptyDir"]["medium"] == "Memory"
    assert "emptyDir" in volumes[mounts["/cache"]] and "/tmp" in mounts
    assert any(kubeflow.NODE_DIR.startswith(path + "/") for path in mounts)
    assert spec_["securityContext"] == {
        "runAsNonRoot": True, "runAsUser": 10001, "runAsGroup": 10001, "fsGroup": 10001,
        "seccompProfile": {"type": "RuntimeDefault"},
    }  # fmt: skip
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True, "capabilities": {"drop": ["ALL"]},
    }  # fmt: skip
    assert (
        spec_["automountServiceAccountToken"] is False and spec_["serviceAccountName"] == "mmdlm-train-node"
    )
    torchrun = container["args"][container["args"].index("torchrun") :]
    assert {"--log-dir=logs", "--redirects=3", "--tee=3", "--max-restarts=0"} <= set(torchrun)


@pytest.mark.parametrize("api", APIS)
def test_scheduling_and_cache_follow_the_settings(api: str) -> None:
    _, cpu = node_pods(render(api, gpus=0))
    assert "nodeSelector" not in cpu["spec"] and "tolerations" not in cpu["spec"], "CPU pods go anywhere"
    assert "nvidia.com/gpu" not in json.dumps(cpu["spec"]["containers"][0]["resources"])
    custom = settings(
        k8s_node_selector="pool=a100,zone=b", k8s_tolerations="gpu=yes:NoExecute,dedicated:NoSchedule",
        k8s_cache_pvc="mmdlm-cache", k8s_config_map="other-config", k8s_queue_name="team-a",
    )  # fmt: skip
    obj = render(api, custom)
    _, pod = node_pods(obj)  # on the shipped runtime: the worker's settings changed after installing it
    assert pod["spec"]["nodeSelector"] == {"pool": "a100", "zone": "b"}
    assert pod["spec"]["tolerations"] == [
        {"key": "gpu", "operator": "Equal", "value": "yes", "effect": "NoExecute"},
        {"key": "dedicated", "operator": "Exists", "effect": "NoSchedule"},
    ]
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    (cache,) = [
        volumes[m["name"]] for m in pod["spec"]["containers"][0]["volumeMounts"] if m["mountPath"] == "/cache"
    ]
    assert cache == {"name": "cache-pvc", "persistentVolumeClaim": {"claimName": "mmdlm-cache"}}
    assert all(len(v) == 2 for v in volumes.values()), "each volume has a name and one source"
    # envFrom is not patchable: a TrainJob reads the ConfigMap its runtime names (re-render the runtime)
    _, pod = node_pods(obj, kubeflow.render_runtime(custom))
    assert pod["spec"]["containers"][0]["envFrom"] == [{"configMapRef": {"name": "other-config"}}]
    assert obj["metadata"]["labels"][kubeflow.QUEUE_LABEL] == "team-a" and kubeflow.is_queued(obj)
    assert "nodeSelector" not in node_pods(render(api, settings(k8s_node_selector="none")))[1]["spec"]
    with pytest.raises(ValueError, match="key=value"):
        TrainerSettings.model_validate({"k8s_node_selector": "pool"})
    with pytest.raises(ValueError, match="NoSchedule"):
        TrainerSettings.model_validate({"k8s_tolerations": "gpu:Sometimes"})


def test_both_apis_make_the_same_pod() -> None:
    """One template: the TrainJob's pod (runtime + patch + trainer) is the PyTorchJob's, except for the
    container name and the rendezvous options each controller supplies differently."""
    _, a = node_pods(render("trainjob"))
    _, b = node_pods(render("pytorchjob"))
    for pod in (a, b):
        container = pod["spec"]["containers"][0]
        container["name"] = "X"
        container["args"] = [
            x for x in container["args"] if not x.startswith(("--rdzv", "--nnodes", "--nproc"))
        ]
    assert a == b


# --- the network --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("api", APIS)
def test_network_policies_let_the_ranks_reach_each_other(api: str) -> None:
    base = kustomize.render(K8S / "base")
    policies = [o for o in base if o["kind"] == "NetworkPolicy"]
    assert policies, "the base has NetworkPolicies (default deny)"
    namespace = next(o for o in base if o["kind"] == "Namespace")["metadata"]["name"]
    obj = render(api)
    assert obj["metadata"]["namespace"] == namespace
    _, pod = node_pods(obj)
    labels = pod["metadata"]["labels"]
    named = {p["name"]: p["containerPort"] for p in pod["spec"]["containers"][0]["ports"]}
    node = (namespace, labels)
    for port in (kubeflow.RDZV_PORT, 29400, 40123, 60999):  # c10d store, NCCL's ephemeral ports
        assert k8s.network_allows(policies, src=node, dst=node, port=port, named_ports=named), port
    # the check can fail: the API pods do not get in, and without the train-node policy neither do ranks
    api_pod = (namespace, {"app.kubernetes.io/name": "mmdlm", "app.kubernetes.io/component": "api"})
    assert not k8s.network_allows(policies, src=api_pod, dst=node, port=kubeflow.RDZV_PORT)
    others = [p for p in policies if p["metadata"]["name"] != "mmdlm-train-nodes"]
    assert not k8s.network_allows(others, src=node, dst=node, port=kubeflow.RDZV_PORT)
    other_job = (namespace, {**labels, kubeflow.JOB_ID_LABEL: "f" * 32})
    assert k8s.network_allows(policies, src=other_job, dst=node, port=kubeflow.RDZV_PORT)


# --- the environment ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("api", APIS)
def test_torchrun_reads_the_injected_environment(api: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The env each controller injects, through Kubernetes' $(VAR) expansion, into torchrun's own
    parser: c10d on node 0's port 29500, fixed size, one rank per GPU, logs kept."""
    from torch.distributed.run import get_args_parser

    obj = render(api)
    _, pod = node_pods(obj)
    (container,) = pod["spec"]["containers"]
    injected = injected_env(obj, node_rank=1)
    env = container_env(container, {}, {"MMDLM_S3_ACCESS_KEY": "a", "MMDLM_S3_SECRET_KEY": "s"}, injected)
    command = expand(container["args"], env)
    torchrun = command[command.index("torchrun") + 1 :]
    assert node.unexpanded(command) == []
    references = {m for a in container["args"] for m in re.findall(r"\$\((\w+)\)", a)}
    assert references <= set(TRAINER_TORCH_ENV) if api == "trainjob" else not references
    for key in [k for k in list(__import__("os").environ) if k.startswith("PET_")]:
        monkeypatch.delenv(key)
    for key, value in injected.items():
        monkeypatch.setenv(key, value)
    args = get_args_parser().parse_args(torchrun)
    name = obj["metadata"]["name"]
    host = f"{name}-node-0-0.{name}" if api == "trainjob" else f"{name}-worker-0"
    assert (args.rdzv_backend, args.rdzv_endpoint, args.rdzv_id) == ("c10d", f"{host}:29500", name)
    assert args.nnodes in ("2", "2:2") and args.nproc_per_node == "8" and args.max_restarts == 0
    assert (args.log_dir, args.redirects, args.tee) == ("logs", "3", "3")
    assert args.module and args.training_script == "services.trainer.rank"
    monkeypatch.setenv("PET_NODE_RANK", "1")
    assert node.node_name() == "node-1"
    # without the injected variables (a runtime without the torch policy) the agent refuses to start
    if api == "trainjob":
        assert node.unexpanded(expand(container["args"], {})) == sorted(
            set(TRAINER_TORCH_ENV) - {"PET_NODE_RANK"}
        )


def test_gpus_per_node_equals_nproc_per_node() -> None:
    assert spec(gpus=8, nproc=8).kubeflow.gpus_per_node == 8
    assert spec(gpus=0, nproc=8).kubeflow.gpus_per_node == 0  # CPU pods
    with pytest.raises(ValueError) as info:
        spec(gpus=4, nproc=8)
    (error,) = info.value.errors()  # type: ignore[attr-defined]
    assert (
        error["loc"] == ("kubeflow",)
        and "kubeflow.gpus_per_node (4) must equal nproc_per_node (8)" in error["msg"]
    )


def test_the_api_refuses_a_gpu_count_that_is_not_one_per_rank(tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from services.api.main import create_app
    from services.common.auth import create_token
    from services.common.db import Database
    from services.common.settings import Settings

    app_settings = Settings(_env_file=None, home=tmp_path, token_cache_s=0)  # type: ignore[call-arg]
    body = {"kind": "train", "dataset": "d" * 32, "model": {"family": "mdlm", "model": "small"},
            "launcher": "kubeflow", "nnodes": 2, "nproc_per_node": 8, "kubeflow": {"gpus_per_node": 4}}  # fmt: skip
    with TestClient(create_app(app_settings)) as client:
        with Database(app_settings.database_url).begin() as session:
            headers = {"Authorization": f"Bearer {create_token(session, 'alice')[1]}"}
        response = client.post("/v1/jobs", json=body, headers=headers)
    assert response.status_code == 422, response.text
    assert "kubeflow.gpus_per_node (4) must equal nproc_per_node (8)" in response.json()["detail"]
    assert any(e["field"].startswith("kubeflow") for e in response.json()["errors"])


# --- cleanup by label, against the client's real requests ------------------------------------------------------


class FakeApiServer:
    """Records each request of the `kubernetes` client and serves custom objects from a dict; the
    plurals in `missing` answer 404 (a cluster without that CRD). Deleted objects vanish after
    `linger` further list calls (foreground deletion takes a while)."""

    def __init__(
        self, objects: list[dict[str, Any]], missing: set[str] = frozenset(), linger: int = 0
    ) -> None:  # type: ignore[assignment]
        self.objects = objects
        self.missing = missing
        self.linger = linger
        self.requests: list[tuple[str, str, dict[str, list[str]], Any]] = []
        self.deleting: dict[str, int] = {}
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _answer(self, status: int, body: Any) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _handle(self) -> None:
                url = urlsplit(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length)) if length else None
                fake.requests.append((self.command, url.path, parse_qs(url.query), body))
                status, answer = fake.respond(self.command, url.path, parse_qs(url.query), body)
                self._answer(status, answer)

            do_GET = do_POST = do_DELETE = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def respond(self, method: str, path: str, query: dict[str, list[str]], body: Any) -> tuple[int, Any]:
        parts = path.strip("/").split("/")  # apis/<group>/<version>/namespaces/<ns>/<plural>[/<name>]
        plural = parts[5]
        if plural in self.missing:
            return 404, {"kind": "Status", "code": 404, "message": "the server could not find the resource"}
        mine = [o for o in self.objects if kubeflow._coords(o)[2] == plural]
        if method == "GET" and len(parts) == 6:
            for name in list(self.deleting):
                self.deleting[name] -= 1
                if self.deleting[name] < 0:
                    self.objects[:] = [o for o in self.objects if o["metadata"]["name"] != name]
                    del self.deleting[name]
            key, _, value = query["labelSelector"][0].partition("=")
            items = [
                o
                for o in self.objects
                if kubeflow._coords(o)[2] == plural and o["metadata"]["labels"].get(key) == value
            ]
            return 200, {"apiVersion": "v1", "kind": "List", "items": items}
        if method == "DELETE":
            self.deleting[parts[6]] = self.linger
            return 200, {"kind": "Status", "status": "Success"}
        if method == "POST":
            self.objects.append(body)
            return 201, body
        (obj,) = [o for o in mine if o["metadata"]["name"] == parts[6]]
        return 200, obj

    def __enter__(self) -> FakeApiServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def kube_api(self) -> kubeflow.KubeApi:
        from kubernetes import client

        configuration = client.Configuration(host=f"http://127.0.0.1:{self.server.server_address[1]}")
        return kubeflow.KubeApi(client.ApiClient(configuration))


@pytest.fixture
def attempts() -> Iterator[list[dict[str, Any]]]:
    s = settings()
    yield [
        kubeflow.render_trainjob(JOB, 1, spec(), s),
        kubeflow.render_pytorchjob(JOB, 2, spec(), s),
        kubeflow.render_trainjob("f" * 32, 1, spec(), s),  # another job: left alone
    ]


def test_submit_deletes_every_earlier_attempt_by_label_first(attempts: list[dict[str, Any]]) -> None:
    new = render("trainjob")  # attempt 2 of JOB, as a TrainJob
    with FakeApiServer(copy.deepcopy(attempts), linger=2) as server:
        stale = kubeflow.submit(server.kube_api(), new, wait_s=30, poll_s=0.01)
    assert stale == [f"TrainJob mmdlm-{JOB}-a1", f"PyTorchJob mmdlm-{JOB}-a2"]
    selector = {"labelSelector": [f"mmdlm.dev/job-id={JOB}"]}
    lists = [(m, p, q) for m, p, q, _ in server.requests if m == "GET"]
    assert lists[:2] == [
        ("GET", "/apis/trainer.kubeflow.org/v1alpha1/namespaces/mmdlm/trainjobs", selector),
        ("GET", "/apis/kubeflow.org/v1/namespaces/mmdlm/pytorchjobs", selector),
    ]
    deletes = [(p, b) for m, p, _, b in server.requests if m == "DELETE"]
    assert deletes == [
        (
            f"/apis/trainer.kubeflow.org/v1alpha1/namespaces/mmdlm/trainjobs/mmdlm-{JOB}-a1",
            {"propagationPolicy": "Foreground"},
        ),
        (
            f"/apis/kubeflow.org/v1/namespaces/mmdlm/pytorchjobs/mmdlm-{JOB}-a2",
            {"propagationPolicy": "Foreground"},
        ),
    ]
    # created only after a list came back empty: the old attempts were gone, not just marked
    methods = [m for m, *_ in server.requests]
    assert methods[-1] == "POST" and methods[-3:-1] == ["GET", "GET"]
    assert server.requests[-1][1:] == (
        "/apis/trainer.kubeflow.org/v1alpha1/namespaces/mmdlm/trainjobs",
        {},
        new,
    )
    assert [o["metadata"]["name"] for o in server.objects] == [
        f"mmdlm-{'f' * 32}-a1",
        new["metadata"]["name"],
    ]


def test_cancel_cleanup_tolerates_a_missing_crd_and_reports_stuck_deletions(
    attempts: list[dict[str, Any]],
) -> None:
    with FakeApiServer(copy.deepcopy(attempts), missing={"pytorchjobs"}) as server:
        assert kubeflow.delete_job_objects(server.kube_api(), "mmdlm", JOB) == [f"TrainJob mmdlm-{JOB}-a1"]
    with FakeApiServer(copy.deepcopy(attempts), linger=10**6) as server:
        with pytest.raises(RuntimeError, match="still exist"):
            kubeflow.delete_job_objects(server.kube_api(), "mmdlm", JOB, wait_s=0.2, poll_s=0.01)


# --- Kueue and the pending timeout ----------------------------------------------------------------------------


@pytest.mark.parametrize("api", APIS)
def test_a_queued_job_is_not_timed_out_while_it_waits(api: str) -> None:
    obj = render(api, settings(k8s_queue_name="gpu-queue"))
    assert obj["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "gpu-queue"
    suspended = obj["spec"]["suspend"] if api == "trainjob" else obj["spec"]["runPolicy"]["suspend"]
    assert suspended is True  # created suspended: Kueue admits it by unsuspending
    now = [0.0]
    clock = kubeflow.PendingClock(timeout_s=60, clock=lambda: now[0])
    for _ in range(10):  # ten minutes in the queue
        now[0] += 60
        assert not clock.expired(obj)
    admitted = copy.deepcopy(obj)
    admitted["spec"].pop("suspend", None)
    admitted["spec"].get("runPolicy", {}).pop("suspend", None)
    assert not clock.expired(admitted)  # the count starts at admission
    now[0] += 59
    assert not clock.expired(admitted)
    evicted = {**admitted, "status": {"conditions": [{"type": "Suspended", "status": "True"}]}}
    now[0] += 30
    assert not clock.expired(evicted)  # Kueue evicted it (pods not ready): queued again, count reset
    now[0] += 1
    assert not clock.expired(admitted)
    now[0] += 61
    assert clock.expired(admitted)
    unqueued = render(api)
    assert "kueue.x-k8s.io/queue-name" not in unqueued["metadata"]["labels"] and not kubeflow.is_queued(
        unqueued
    )


# --- the follower worker ------------------------------------------------------------------------------------------


def test_the_kubeflow_train_worker_holds_no_gpu() -> None:
    objs = kustomize.render(K8S / "kubeflow" / "follower")
    assert k8s.validate_documents(objs) == []
    deployments = {o["metadata"]["name"]: o for o in objs if o["kind"] == "Deployment"}
    train = deployments["mmdlm-worker-train"]["spec"]["template"]["spec"]
    assert "nvidia.com/gpu" not in json.dumps(train), "it only renders, submits and follows"
    assert "nodeSelector" not in train and "tolerations" not in train
    assert "nvidia.com/gpu" in json.dumps(deployments["mmdlm-sampler"]), "the rest of prod-gpu is unchanged"
    # its service account may do what the launcher does, cleanup by label included
    account = train["serviceAccountName"]
    binding = next(
        o
        for o in objs
        if o["kind"] == "RoleBinding"
        and {"kind": "ServiceAccount", "name": account, "namespace": "mmdlm"} in o["subjects"]
    )
    role = next(
        o for o in objs if o["kind"] == "Role" and o["metadata"]["name"] == binding["roleRef"]["name"]
    )
    for group, plural in (("trainer.kubeflow.org", "trainjobs"), ("kubeflow.org", "pytorchjobs")):
        verbs = {
            v
            for r in role["rules"]
            if group in r["apiGroups"] and plural in r["resources"]
            for v in r["verbs"]
        }
        assert {"create", "get", "list", "delete"} <= verbs, plural
