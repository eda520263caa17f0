"""The Kubernetes manifests: every overlay rendered (the Python renderer, cross-checked with `kubectl
kustomize` where it exists), every object through the strict schemas of the targeted Kubernetes version
and the newest one kubernetes-validate ships (and once through its own CLI), the Kubeflow objects
through their envelope schemas plus their pod templates, and the wiring a cluster would only reveal at
run time: selectors, probes, GPU scheduling, settings and images."""

from __future__ import annotations

import copy
import json
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from services.deploy import k8s, kustomize
from tests.deploy.support import K8S, OVERLAYS, clean_env, run, tool

KUBEFLOW_TEMPLATES = ["trainjob.yaml", "pytorchjob.yaml", "clustertrainingruntime.yaml"]
HTTP_ROLES = {"mmdlm-api": 8000, "mmdlm-sampler": 8001}
WORKERS = ["mmdlm-worker-encode", "mmdlm-worker-train", "mmdlm-worker-sample"]
GPU_DEPLOYMENTS = ["mmdlm-sampler", *WORKERS]


@cache
def rendered(overlay: str) -> tuple[dict[str, Any], ...]:
    return tuple(kustomize.render(K8S / "overlays" / overlay))


def objects(overlay: str, kind: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in rendered(overlay) if o["kind"] == kind}


def pod_spec(obj: dict[str, Any]) -> dict[str, Any]:
    return obj["spec"]["template"]["spec"]


def key(obj: dict[str, Any]) -> tuple[str, str, str, str]:
    meta = obj["metadata"]
    return obj["apiVersion"], obj["kind"], meta.get("namespace", ""), meta["name"]


def test_the_overlays() -> None:
    assert OVERLAYS == ["dev-cpu", "prod-gpu"]


@pytest.mark.parametrize("overlay", OVERLAYS)
@pytest.mark.parametrize("version", [k8s.KUBERNETES_VERSION, "1.37.0"], ids=["oldest", "newest"])
def test_overlay_is_valid(overlay: str, version: str) -> None:
    problems = k8s.validate_documents(rendered(overlay), version)
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_kubernetes_validate_cli_agrees(overlay: str, tmp_path: Path) -> None:
    """The upstream command line on the rendered YAML, as a user would run it."""
    manifest = tmp_path / f"{overlay}.yaml"
    manifest.write_text(yaml.safe_dump_all(rendered(overlay), sort_keys=False))
    cmd = [tool("kubernetes-validate"), "--strict", "--quiet", "-k", k8s.KUBERNETES_VERSION, str(manifest)]
    result = run(cmd, env=clean_env(), timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("directory", ["base", "overlays/dev-cpu", "overlays/prod-gpu", "kubeflow"])
def test_python_renderer_matches_kubectl_kustomize(directory: str) -> None:
    if not kustomize.kubectl_available():
        pytest.skip("kubectl with kustomize is not installed; the Python rendering is checked alone")
    ours = {key(o): o for o in kustomize.render(K8S / directory)}
    theirs = {key(o): o for o in kustomize.render_with_kubectl(K8S / directory)}
    assert set(ours) == set(theirs)
    for name, obj in ours.items():
        assert json.dumps(obj, sort_keys=True) == json.dumps(theirs[name], sort_keys=True), name


@pytest.mark.parametrize("name", KUBEFLOW_TEMPLATES)
def test_kubeflow_objects_are_valid(name: str) -> None:
    (obj,) = k8s.load_manifests(K8S / "kubeflow" / name)
    assert (obj["apiVersion"], obj["kind"]) in k8s.CRDS
    assert list(k8s.embedded_objects(obj)), "its pod template is checked too"
    for version in (k8s.KUBERNETES_VERSION, "1.37.0"):
        problems = k8s.validate_object(obj, version)
        assert not problems, "\n".join(problems)


def test_trainjob_uses_the_runtime_and_c10d_rendezvous() -> None:
    (job,) = k8s.load_manifests(K8S / "kubeflow" / "trainjob.yaml")
    (runtime,) = kustomize.render(K8S / "kubeflow")
    assert job["spec"]["runtimeRef"] == {
        "apiGroup": "trainer.kubeflow.org",
        "kind": runtime["kind"],
        "name": runtime["metadata"]["name"],
    }
    trainer = job["spec"]["trainer"]
    args = trainer["args"]
    assert args[:3] == ["python", "-m", "services.trainer.node"] and args[args.index("--") + 1] == "torchrun"
    assert "--rdzv-backend=c10d" in args and f"--rdzv-id={job['metadata']['name']}" in args
    assert "--rdzv-endpoint=$(PET_MASTER_ADDR):$(PET_MASTER_PORT)" in args
    assert "--nproc-per-node=$(PET_NPROC_PER_NODE)" in args and "--nnodes=$(PET_NNODES)" in args
    assert args[-4:] == ["-m", "services.trainer.rank", "--config", "train.json"]
    gpus = trainer["resourcesPerNode"]["limits"]["nvidia.com/gpu"]
    assert int(gpus) == trainer["numProcPerNode"], "one rank per GPU"
    pod = runtime["spec"]["template"]["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]
    assert pod["metadata"]["labels"]["app.kubernetes.io/component"] == "train-node"  # NetworkPolicy
    assert any(v.get("emptyDir", {}).get("medium") == "Memory" for v in pod["spec"]["volumes"])
    refs = {next(iter(e.values()))["name"] for e in pod["spec"]["containers"][0]["envFrom"]}
    # secrets: only the two S3 keys, per job (tests/deploy/test_kubeflow_render.py)
    assert refs == {"mmdlm-config"}
    (patch,) = job["spec"]["runtimePatches"]
    pod_patch = patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"][0]["template"]["spec"]
    assert pod_patch["template"]["spec"]["nodeSelector"] == {"nvidia.com/gpu.present": "true"}


def test_pytorchjob_uses_elastic_c10d() -> None:
    (job,) = k8s.load_manifests(K8S / "kubeflow" / "pytorchjob.yaml")
    policy = job["spec"]["elasticPolicy"]
    assert policy["rdzvBackend"] == "c10d" and policy["minReplicas"] == policy["maxReplicas"]
    worker = job["spec"]["pytorchReplicaSpecs"]["Worker"]
    assert worker["replicas"] == policy["maxReplicas"]
    container = worker["template"]["spec"]["containers"][0]
    assert container["name"] == "pytorch"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == job["spec"]["nprocPerNode"]
    assert job["spec"]["runPolicy"]["cleanPodPolicy"] == "Running", "no rank outlives its job"


# --- the validators can fail -------------------------------------------------------------------------------------


def _deployment(overlay: str = "prod-gpu", name: str = "mmdlm-api") -> dict[str, Any]:
    return copy.deepcopy(objects(overlay, "Deployment")[name])


@pytest.mark.parametrize(
    "breakage, expected",
    [
        (lambda d: pod_spec(d)["containers"][0].update(readinesProbe={}), "'readinesProbe' was unexpected"),
        (lambda d: d["spec"].update(replicas="two"), "spec.replicas"),
        (lambda d: pod_spec(d)["containers"][0]["ports"][0].update(containerPort="http"), "containerPort"),
        (lambda d: d["spec"].pop("selector"), "'selector' is a required property"),
    ],
    ids=["unknown-field", "wrong-type", "wrong-port-type", "missing-required"],
)
def test_validator_catches_a_broken_manifest(breakage: Any, expected: str) -> None:
    broken = _deployment()
    breakage(broken)
    problems = k8s.validate_object(broken)
    assert problems and any(expected in p for p in problems), problems
    assert all(p.startswith("Deployment mmdlm/mmdlm-api: ") for p in problems)


def test_cli_catches_a_broken_manifest(tmp_path: Path) -> None:
    broken = _deployment()
    pod_spec(broken)["containers"][0]["imagePullPolicyy"] = "Always"
    manifest = tmp_path / "broken.yaml"
    manifest.write_text(yaml.safe_dump(broken))
    cmd = [tool("kubernetes-validate"), "--strict", "-k", k8s.KUBERNETES_VERSION, str(manifest)]
    result = run(cmd, env=clean_env(), timeout=120)
    assert result.returncode != 0 and "imagePullPolicyy" in result.stdout + result.stderr


@pytest.mark.parametrize(
    "name, breakage, expected",
    [
        ("trainjob.yaml", lambda o: o["spec"]["trainer"].update(numProcPerNode="auto"), "numProcPerNode"),
        ("trainjob.yaml", lambda o: o["spec"].pop("runtimeRef"), "'runtimeRef' is a required property"),
        ("trainjob.yaml", lambda o: o["spec"]["trainer"].update(gpus=8), "'gpus' was unexpected"),
        ("trainjob.yaml", lambda o: o["spec"]["trainer"]["env"][0].update(valu="x"), "'valu' was unexpected"),
        ("trainjob.yaml", lambda o: o["metadata"].update(name="Train_Job"), "metadata.name"),
        (
            "pytorchjob.yaml",
            lambda o: o["spec"]["elasticPolicy"].update(rdzvBackend="static"),
            "rdzvBackend",
        ),
        (
            "pytorchjob.yaml",
            lambda o: o["spec"]["pytorchReplicaSpecs"]["Worker"]["template"]["spec"].update(tolerationz=[]),
            "spec.pytorchReplicaSpecs.Worker.template: template.spec: Additional properties",
        ),
        (
            "clustertrainingruntime.yaml",
            lambda o: o["spec"]["template"]["spec"]["replicatedJobs"][0]["template"]["spec"]["template"][
                "spec"
            ]["containers"][0].update(image=7),
            "replicatedJobs.0.template: spec.template.spec.containers.0.image",
        ),
        ("clustertrainingruntime.yaml", lambda o: o["metadata"].update(namespace="mmdlm"), "namespace"),
    ],
    ids=[
        "trainjob-nproc-type",
        "trainjob-no-runtime",
        "trainjob-unknown-field",
        "trainjob-pod-env",
        "trainjob-name",
        "pytorchjob-rdzv",
        "pytorchjob-pod-template",
        "runtime-pod-template",
        "runtime-is-cluster-scoped",
    ],
)
def test_validator_catches_a_broken_kubeflow_object(name: str, breakage: Any, expected: str) -> None:
    (obj,) = k8s.load_manifests(K8S / "kubeflow" / name)
    breakage(obj)
    problems = k8s.validate_object(obj)
    assert problems and any(expected in p for p in problems), problems


def test_unknown_custom_resources_are_not_waved_through() -> None:
    problems = k8s.validate_object(
        {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}}
    )
    assert problems and "no schema" in problems[0]
    with pytest.raises(k8s.ManifestError) as info:
        k8s.validate_documents([{"kind": "Pod"}], raise_on_error=True)
    assert "needs apiVersion and kind" in str(info.value)


def test_renderer_refuses_what_it_cannot_render(tmp_path: Path) -> None:
    (tmp_path / "kustomization.yaml").write_text("resources: []\nnamespace: other\n")
    with pytest.raises(kustomize.UnsupportedKustomization, match="namespace"):
        kustomize.render(tmp_path)
    (tmp_path / "kustomization.yaml").write_text("resources: [missing.yaml]\n")
    with pytest.raises(kustomize.KustomizeError, match="missing.yaml"):
        kustomize.render(tmp_path)
    (tmp_path / "cm.yaml").write_text("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\ndata: {a: b}\n")
    (tmp_path / "p.yaml").write_text("- op: replace\n  path: /data/nope\n  value: x\n")
    (tmp_path / "kustomization.yaml").write_text(
        "resources: [cm.yaml]\npatches:\n  - path: p.yaml\n    target: {kind: ConfigMap, name: c}\n"
    )
    with pytest.raises(kustomize.KustomizeError, match="/data/nope does not exist"):
        kustomize.render(tmp_path)


# --- wiring ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_selectors_and_references_resolve(overlay: str) -> None:
    deployments = objects(overlay, "Deployment")
    workloads = {**deployments, **objects(overlay, "StatefulSet")}
    labels = {name: d["spec"]["template"]["metadata"]["labels"] for name, d in workloads.items()}

    def selects(selector: dict[str, str]) -> list[str]:
        return [n for n, lab in labels.items() if selector.items() <= lab.items()]

    for name, workload in workloads.items():
        assert workload["spec"]["selector"]["matchLabels"].items() <= labels[name].items(), name
    for name, service in objects(overlay, "Service").items():
        assert len(selects(service["spec"]["selector"])) == 1, f"Service {name} selects no single workload"
    for name, pdb in objects(overlay, "PodDisruptionBudget").items():
        assert selects(pdb["spec"]["selector"]["matchLabels"]) == [name], f"PDB {name}"
    for name, hpa in objects(overlay, "HorizontalPodAutoscaler").items():
        assert hpa["spec"]["scaleTargetRef"]["name"] in deployments, f"HPA {name}"
    assert set(objects(overlay, "HorizontalPodAutoscaler")) == set(HTTP_ROLES)
    services = objects(overlay, "Service")
    for rule in objects(overlay, "Ingress")["mmdlm"]["spec"]["rules"]:
        for path in rule["http"]["paths"]:
            backend = path["backend"]["service"]
            ports = {p["name"] for p in services[backend["name"]]["spec"]["ports"]}
            assert backend["port"]["name"] in ports
    accounts = set(objects(overlay, "ServiceAccount"))
    for name, deployment in deployments.items():
        assert pod_spec(deployment).get("serviceAccountName", "default") in accounts | {"default"}, name


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_probes_resources_security_and_settings(overlay: str) -> None:
    deployments = objects(overlay, "Deployment")
    app = {n: d for n, d in deployments.items() if n in HTTP_ROLES or n in WORKERS}
    assert set(app) == set(HTTP_ROLES) | set(WORKERS)
    for name, deployment in app.items():
        spec = pod_spec(deployment)
        (container,) = spec["containers"]
        assert container["resources"]["requests"].keys() >= {"cpu", "memory"}, name
        assert "memory" in container["resources"]["limits"], name
        assert spec["securityContext"]["runAsNonRoot"] is True, name
        assert container["securityContext"]["allowPrivilegeEscalation"] is False, name
        refs = [next(iter(e.values()))["name"] for e in container["envFrom"]]
        assert refs == ["mmdlm-config", "mmdlm-secrets"], name
        if name in HTTP_ROLES:
            assert container["readinessProbe"]["httpGet"]["path"] == "/readyz", name
            assert container["livenessProbe"]["httpGet"]["path"] == "/healthz", name
            assert container["ports"][0]["containerPort"] == HTTP_ROLES[name], name
            assert container["args"] == [name.removeprefix("mmdlm-")]
        else:
            queue = name.removeprefix("mmdlm-worker-")
            assert container["args"] == ["worker", "--queues", queue]
            # liveness is local (a broker outage never restarts a worker mid-job); the broker ping
            # is readiness
            assert container["livenessProbe"]["exec"]["command"] == [
                "mmdlm-entrypoint", "healthcheck", "worker", "--live",
            ]  # fmt: skip
            assert container["readinessProbe"]["exec"]["command"] == [
                "mmdlm-entrypoint", "healthcheck", "worker",
            ]  # fmt: skip
            assert "startupProbe" not in container, "a broker-dependent startup probe restarts too"


def test_gpu_scheduling_only_in_prod() -> None:
    for name in GPU_DEPLOYMENTS:
        spec = pod_spec(objects("prod-gpu", "Deployment")[name])
        limits = spec["containers"][0]["resources"]["limits"]
        assert int(limits["nvidia.com/gpu"]) >= 1, name
        assert spec["nodeSelector"] == {"nvidia.com/gpu.present": "true"}, name
        assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec["tolerations"]
        assert spec["containers"][0]["image"].endswith(":0.1.0-cuda"), name
        dev = pod_spec(objects("dev-cpu", "Deployment")[name])
        assert "nvidia.com/gpu" not in json.dumps(dev), name
        assert "nodeSelector" not in dev and dev["containers"][0]["image"] == "mmdlm:0.1.0-cpu"
    train = pod_spec(objects("prod-gpu", "Deployment")["mmdlm-worker-train"])
    assert int(train["containers"][0]["resources"]["limits"]["nvidia.com/gpu"]) == 8
    api = pod_spec(objects("prod-gpu", "Deployment")["mmdlm-api"])
    assert "nvidia.com/gpu" not in json.dumps(api), "the gateway never holds a GPU"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_image_placeholder_is_mapped(overlay: str) -> None:
    images = {c["image"] for o in rendered(overlay) for c in kustomize._containers(o)}
    assert not images & {"mmdlm", "mmdlm-cuda"}, images
    assert all(":" in image for image in images), "every image has an explicit tag"


def test_dev_overlay_brings_its_backing_services() -> None:
    names = {o["metadata"]["name"] for o in rendered("dev-cpu")}
    assert {"mmdlm-postgres", "mmdlm-redis", "mmdlm-minio", "mmdlm-minio-init", "mmdlm-secrets"} <= names
    config = objects("dev-cpu", "ConfigMap")["mmdlm-config"]["data"]
    secret = objects("dev-cpu", "Secret")["mmdlm-secrets"]["stringData"]
    assert config["MMDLM_S3_ENDPOINT"] == "mmdlm-minio:9000"
    assert "@mmdlm-postgres:5432/" in secret["MMDLM_DATABASE_URL"]
    assert secret["MMDLM_BROKER_URL"].startswith("redis://mmdlm-redis:6379/")
    infra = objects("dev-cpu", "Secret")["mmdlm-dev-infra"]["stringData"]
    assert f":{infra['POSTGRES_PASSWORD']}@" in secret["MMDLM_DATABASE_URL"]
    assert infra["APP_SECRET"] == secret["MMDLM_S3_SECRET_KEY"]
    assert {o["metadata"]["name"] for o in rendered("prod-gpu") if o["kind"] == "Secret"} == set()


def test_network_policies_default_deny_and_open_the_http_ports() -> None:
    policies = objects("prod-gpu", "NetworkPolicy")
    deny = policies["mmdlm-default-deny-ingress"]["spec"]
    assert deny["podSelector"] == {} and deny["policyTypes"] == ["Ingress"] and "ingress" not in deny
    for name, port in HTTP_ROLES.items():
        ports = [p["port"] for rule in policies[name]["spec"]["ingress"] for p in rule["ports"]]
        assert ports == [port], name


def test_command_line_check(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert k8s.main([str(K8S / "overlays" / "prod-gpu"), str(K8S / "kubeflow" / "trainjob.yaml")]) == 0
    assert "0 problems" in capsys.readouterr().out
    (job,) = k8s.load_manifests(K8S / "kubeflow" / "trainjob.yaml")
    job["spec"]["trainer"]["numNodes"] = 0
    broken = tmp_path / "job.yaml"
    broken.write_text(yaml.safe_dump(job))
    assert k8s.main([str(broken)]) == 1
    assert "spec.trainer.numNodes" in capsys.readouterr().err


def test_trainer_renders_jobs_this_deployment_can_run(monkeypatch: pytest.MonkeyPatch) -> None:
    """The train worker's own rendering (services.trainer.kubeflow), fed the prod-gpu ConfigMap, targets
    the runtime installed by k8s/kubeflow, writes under the runtime's job volume, and validates."""
    kubeflow = pytest.importorskip("services.trainer.kubeflow")
    from services.trainer.kinds import TrainSpec
    from services.trainer.settings import TrainerSettings

    for name, value in objects("prod-gpu", "ConfigMap")["mmdlm-config"]["data"].items():
        monkeypatch.setenv(name, value)
    settings = TrainerSettings(_env_file=None)  # type: ignore[call-arg]
    spec = TrainSpec.model_validate(
        {"dataset": "d" * 32, "model": {"family": "mdlm", "model": "small"}, "launcher": "kubeflow",
         "nnodes": 2, "nproc_per_node": 8, "kubeflow": {"gpus_per_node": 8}}
    )  # fmt: skip
    (runtime,) = kustomize.render(K8S / "kubeflow")
    pod = runtime["spec"]["template"]["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]["spec"]
    mounts = {m["mountPath"] for m in pod["containers"][0]["volumeMounts"]}
    assert any(kubeflow.NODE_DIR.startswith(m + "/") for m in mounts), (kubeflow.NODE_DIR, mounts)
    job = kubeflow.render_trainjob("0123456789abcdef", 1, spec, settings)
    assert job["spec"]["runtimeRef"]["name"] == runtime["metadata"]["name"]
    assert job["spec"]["runtimeRef"]["kind"] == runtime["kind"]
    assert job["metadata"]["namespace"] == objects("prod-gpu", "Namespace").popitem()[0]
    assert (
        job["spec"]["trainer"]["image"]
        == objects("prod-gpu", "Deployment")["mmdlm-worker-train"]["spec"]["template"]["spec"]["containers"][
            0
        ]["image"]
    )
    assert k8s.validate_object(job) == []
    assert k8s.validate_object(kubeflow.render_pytorchjob("0123456789abcdef", 1, spec, settings)) == []


# --- rollouts and upgrades ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_database_pod_migrates_first_and_no_job_blocks_a_reapply(overlay: str) -> None:
    """No migration Job (its pod template is immutable: the second `kubectl apply -k` with a new image
    would fail); instead each pod's first init container runs the idempotent `migrate` role."""
    deployments = objects(overlay, "Deployment")
    for name in [*HTTP_ROLES, *WORKERS]:
        spec = pod_spec(deployments[name])
        (init,) = spec["initContainers"]
        assert init["args"] == ["migrate"], name
        assert init["envFrom"] == spec["containers"][0]["envFrom"], name
        assert init["securityContext"]["readOnlyRootFilesystem"] is True, name
        volumes = {v["name"] for v in spec["volumes"]}
        assert {m["name"] for m in init["volumeMounts"]} <= volumes, name
    jobs = set(objects(overlay, "Job"))
    assert jobs == ({"mmdlm-minio-init"} if overlay == "dev-cpu" else set()), jobs
    config = objects(overlay, "ConfigMap")["mmdlm-config"]["data"]
    assert config["MMDLM_AUTO_MIGRATE"] == "false", "the servers themselves never migrate"


def test_gpu_deployments_roll_out_without_a_spare_gpu() -> None:
    """A surge pod would need a GPU that a full GPU pool does not have: it stays Pending and the rollout
    never finishes. GPU Deployments stop a pod before starting its successor."""
    gpu = {
        name: d
        for name, d in objects("prod-gpu", "Deployment").items()
        if "nvidia.com/gpu" in json.dumps(pod_spec(d)["containers"][0]["resources"])
    }
    assert set(gpu) == set(GPU_DEPLOYMENTS)
    for name, deployment in gpu.items():
        strategy = deployment["spec"]["strategy"]
        if strategy["type"] == "Recreate":
            continue
        rolling = strategy["rollingUpdate"]
        assert str(rolling["maxSurge"]) in ("0", "0%"), name
        assert str(rolling["maxUnavailable"]) not in ("0", "0%"), (
            f"{name}: maxSurge 0 needs maxUnavailable > 0"
        )
    assert gpu["mmdlm-worker-train"]["spec"]["strategy"] == {"type": "Recreate"}, "never two trainers at once"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_replicas_are_left_to_the_autoscalers(overlay: str) -> None:
    """`kubectl apply` would reset an HPA-scaled Deployment to a written-down replica count."""
    deployments = objects(overlay, "Deployment")
    for hpa in objects(overlay, "HorizontalPodAutoscaler").values():
        target = deployments[hpa["spec"]["scaleTargetRef"]["name"]]
        assert "replicas" not in target["spec"], target["metadata"]["name"]


def _config_references(objs: tuple[dict[str, Any], ...] | list[dict[str, Any]]) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for obj in objs:
        if obj["kind"] == "Deployment":
            for volume in pod_spec(obj)["volumes"]:
                if "configMap" in volume:
                    found.setdefault(obj["metadata"]["name"], set()).add(volume["configMap"]["name"])
    return found


def test_kustomize_config_map_hash_is_kubectls() -> None:
    """Reference values printed by `kubectl kustomize` (kustomize v5.5.0) for generated ConfigMaps."""
    assert kustomize.config_map_hash({"A": "1"}) == "89g4tffbfk"
    assert kustomize.config_map_hash({"A": "1", "B": "2"}) == "66h9cbh964"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_config_changes_roll_the_pods(overlay: str, tmp_path: Path) -> None:
    """Every pod mounts the generated, hash-named `mmdlm-config-revision`; editing the base ConfigMap or
    the overlay's config patch renames it, which changes every pod template: a rollout."""
    import shutil

    objs = rendered(overlay)
    (revision,) = [n for n in objects(overlay, "ConfigMap") if n.startswith("mmdlm-config-revision-")]
    refs = _config_references(objs)
    for name in [*HTTP_ROLES, *WORKERS]:
        assert refs[name] == {revision}, name
    data = objects(overlay, "ConfigMap")[revision]["data"]
    assert set(data) == {"configmap.yaml", "config.yaml"}, "base ConfigMap and the overlay's patch"
    kustomization = yaml.safe_load((K8S / "overlays" / overlay / "kustomization.yaml").read_text())
    config_patches = {
        p["path"] for p in kustomization["patches"] if p["target"].get("name") == "mmdlm-config"
    }
    (generator,) = kustomization["configMapGenerator"]
    assert set(generator["files"]) == config_patches, "every file that changes mmdlm-config is hashed"

    copy_root = tmp_path / "k8s"
    shutil.copytree(K8S, copy_root)
    patch = copy_root / "overlays" / overlay / "patches" / "config.yaml"
    patch.write_text(
        patch.read_text().replace('value: "2"', 'value: "3"').replace('value: "8"', 'value: "7"')
    )
    changed = kustomize.render(copy_root / "overlays" / overlay)
    (new_revision,) = {n for names in _config_references(changed).values() for n in names}
    assert new_revision != revision and new_revision.startswith("mmdlm-config-revision-")
    base = copy_root / "base" / "configmap.yaml"
    base.write_text(base.read_text().replace('MMDLM_LOG_LEVEL: "INFO"', 'MMDLM_LOG_LEVEL: "DEBUG"'))
    again = kustomize.render(copy_root / "overlays" / overlay)
    (third,) = {n for names in _config_references(again).values() for n in names}
    assert third not in (revision, new_revision)
    if kustomize.kubectl_available():
        theirs = _config_references(kustomize.render_with_kubectl(copy_root / "overlays" / overlay))
        assert {n for names in theirs.values() for n in names} == {third}
