"""The rendered Kubeflow jobs, run. The pod each controller would create (tests/deploy/
test_kubeflow_render.py builds it from the TrainJob + runtime, or the PyTorchJob) is started as two local
node processes (2 nodes x 1 gloo rank, CPU) with exactly the environment Kubernetes would give it: the
ConfigMap, the two Secret keys it references, and the variables the controller injects (their names
from upstream; only the master host is 127.0.0.1 and the port a free one, since pod DNS does not exist
here). The node agents stage the bundle from a real S3 server, rendezvous through c10d, train, and leave
checkpoints, metrics, rank logs and `final/` + `final.json` in the store. The TrainJob runs through the
whole platform: API, train worker with the real `kubernetes` client, and a fake API server whose
"controller" starts the nodes (no kube-apiserver can run here)."""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from mmdlm.pipeline import load_pretrained
from services.common.artifacts import scan_directory
from services.common.settings import Settings
from services.common.store import open_store
from services.trainer import kubeflow
from services.trainer.kinds import TrainSpec
from services.trainer.settings import TrainerSettings
from services.trainer.sync import RunStore
from tests.deploy.test_kubeflow_render import FakeApiServer, container_env, expand, injected_env, node_pods
from tests.integration.trainer.conftest import TRAIN_ENV, publish_local_artifact, train_spec
from tests.utils.servers import S3Server, stop_process_group

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[3]
STEPS = 6


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_nodes(
    manifest: dict[str, Any],
    runtime: dict[str, Any],
    config_map: dict[str, str],
    secret: dict[str, str],
    workdir: Path,
) -> list[subprocess.Popen[bytes]]:
    """What the controller and the kubelets would do with `manifest`: one process group per node, with
    the container's args and the environment Kubernetes would give it (pod DNS names -> 127.0.0.1 and
    a free port). Each node's output goes to workdir/node-<rank>.log."""
    replicas, pod = node_pods(manifest, runtime)
    (container,) = pod["spec"]["containers"]
    port = str(_free_port())
    procs = []
    for rank in range(replicas):
        injected = injected_env(manifest, rank)
        if "PET_MASTER_ADDR" in injected:
            injected.update(PET_MASTER_ADDR="127.0.0.1", PET_MASTER_PORT=port)
        if "PET_RDZV_ENDPOINT" in injected:
            injected["PET_RDZV_ENDPOINT"] = f"127.0.0.1:{port}"
        env = container_env(container, config_map, secret, injected)
        assert not {"MMDLM_DATABASE_URL", "MMDLM_BROKER_URL"} & set(env), "the pods get the S3 keys only"
        args = expand(container["args"], env)
        assert args[0] == "python" and container["command"][-1] == "mmdlm-entrypoint"
        split = args.index("--")
        command = [sys.executable, *args[1:split], "--dir", str(workdir / f"node-{rank}"), *args[split:]]
        base = {k: v for k, v in os.environ.items() if not k.startswith(("MMDLM_", "PET_"))}
        # the image's PATH has torchrun; the image's workdir has the code; one thread per rank here
        base.update(PATH=f"{Path(sys.executable).parent}{os.pathsep}{base.get('PATH', '')}",
                    PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")  # fmt: skip
        with (workdir / f"node-{rank}.log").open("w") as log:
            procs.append(
                subprocess.Popen(
                    command, env={**base, **env}, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
                )
            )
    return procs


# the TrainJob path runs through the platform below (test_a_kubeflow_train_job_runs_end_to_end)
@pytest.mark.parametrize("api", ["pytorchjob"])
def test_rendered_job_trains_through_c10d_to_a_stored_model(
    api: str, tiny_dataset: Path, s3_server: S3Server, tmp_path: Path
) -> None:
    store_env = s3_server.env(bucket=f"mmdlm-kf-{secrets.token_hex(4)}")
    secret = {  # the mmdlm-secrets Secret: the pods must take the S3 keys and nothing else
        "MMDLM_S3_ACCESS_KEY": store_env.pop("MMDLM_S3_ACCESS_KEY"),
        "MMDLM_S3_SECRET_KEY": store_env.pop("MMDLM_S3_SECRET_KEY"),
        "MMDLM_DATABASE_URL": "postgresql://mmdlm:never@db.invalid/mmdlm",
        "MMDLM_BROKER_URL": "redis://:never@redis.invalid:6379/0",
    }
    config_map = {**store_env, "MMDLM_HOME": str(tmp_path / "home"), "HF_HUB_OFFLINE": "1"}
    store = open_store(
        Settings.model_validate(
            {
                k.removeprefix("MMDLM_").lower(): v
                for k, v in {**config_map, **secret}.items()
                if "S3" in k or "STORE" in k
            }
        )
    )
    job_id = secrets.token_hex(16)
    uri = f"artifacts/{'d' * 32}/dataset/"
    files = scan_directory(tiny_dataset)
    for record in files:
        store.put_file(uri + record.path, tiny_dataset / record.path)
    spec = TrainSpec.model_validate(
        {**train_spec("d" * 32, steps=STEPS, checkpoint={"interval": 3, "keep_last": 2, "keep_best": True},
                      eval={"interval": 3, "batches": 1}),
         "launcher": "kubeflow", "nnodes": 2, "nproc_per_node": 1}
    )  # fmt: skip
    bundle = kubeflow.make_bundle(
        job_id, 1, spec, {"id": "d" * 32, "uri": uri, "files": [f.as_dict() for f in files]}, None
    )
    store.put_bytes(kubeflow.bundle_key(job_id, 1), json.dumps(bundle).encode())

    settings = TrainerSettings.model_validate({**kubeflow.example_settings().model_dump(), "k8s_api": api})
    manifest = kubeflow.render(job_id, 1, spec, settings)
    procs = start_nodes(manifest, kubeflow.render_runtime(settings), config_map, secret, tmp_path)
    replicas = len(procs)
    deadline = time.monotonic() + 150
    while time.monotonic() < deadline and any(p.poll() is None for p in procs):
        time.sleep(0.5)
    for proc in procs:
        stop_process_group(proc)  # the agent, its torchrun and ranks (a pod's container exiting)
    outputs = [(tmp_path / f"node-{r}.log").read_text() for r in range(replicas)]
    assert [p.returncode for p in procs] == [0, 0], "\n---\n".join(o[-3000:] for o in outputs)

    run = RunStore(store, job_id)
    assert [m.step for m in run.markers()][-1] == STEPS
    steps = [json.loads(line)["step"] for line in run.metrics_lines() if "split" not in json.loads(line)]
    assert steps == list(range(1, STEPS + 1))
    marker = json.loads(store.get_bytes(kubeflow.final_marker_key(job_id)))
    out = tmp_path / "final"
    for record in marker["files"]:
        store.get_file(kubeflow.final_prefix(job_id) + record["path"], out / record["path"])
    assert load_pretrained(out).trained["step"] == STEPS
    # both nodes' rank logs (torchrun --log-dir/--redirects/--tee) came back, one folder per node
    logs = [info.key for info in store.list(run.logs_prefix(1))]
    assert any(key.endswith("stderr.log") for key in logs) and any(
        key.endswith("stdout.log") for key in logs
    ), logs
    if api == "trainjob":  # PET_NODE_RANK names the folder; PyTorchJob pods use their host name
        assert {key.removeprefix(run.logs_prefix(1)).split("/")[0] for key in logs} == {"node-0", "node-1"}


class FakeCluster(FakeApiServer):
    """The Kubernetes API for the launcher's custom objects, whose "controller" runs each created job's
    nodes as local processes (`start_nodes`) and reports their outcome as the job's conditions, the way
    Kubeflow Trainer does (Complete / Failed). Deleting a job stops its nodes."""

    def __init__(
        self, runtime: dict[str, Any], config_map: dict[str, str], secret: dict[str, str], workdir: Path
    ) -> None:
        super().__init__([])
        self.runtime, self.config_map, self.secret, self.workdir = runtime, config_map, secret, workdir
        self.nodes: dict[str, list[subprocess.Popen[bytes]]] = {}

    def respond(self, method: str, path: str, query: dict[str, list[str]], body: Any) -> tuple[int, Any]:
        parts = path.strip("/").split("/")
        if method == "POST":
            name = body["metadata"]["name"]
            node_dir = self.workdir / name
            node_dir.mkdir(parents=True)
            self.nodes[name] = start_nodes(body, self.runtime, self.config_map, self.secret, node_dir)
        elif method == "DELETE":
            for proc in self.nodes.get(parts[6], []):
                stop_process_group(proc)
        elif method == "GET" and len(parts) == 7:
            (obj,) = [o for o in self.objects if o["metadata"]["name"] == parts[6]]
            codes = [p.poll() for p in self.nodes[parts[6]]]
            conditions = []
            if any(c not in (None, 0) for c in codes):
                conditions = [{"type": "Failed", "status": "True", "message": f"node exit codes {codes}"}]
            elif all(c == 0 for c in codes):
                conditions = [{"type": "Complete", "status": "True", "message": "all nodes succeeded"}]
            return 200, {**obj, "status": {"conditions": conditions}}
        return super().respond(method, path, query, body)

    def __exit__(self, *exc: object) -> None:
        for procs in self.nodes.values():
            for proc in procs:
                stop_process_group(proc)
        super().__exit__(*exc)


def test_a_kubeflow_train_job_runs_end_to_end(
    make_backend: Any, platform_factory: Any, tiny_dataset: Path, tmp_path: Path
) -> None:
    """API -> train worker (launcher: kubeflow, real `kubernetes` client) -> TrainJob on a fake API
    server -> the rendered nodes train through c10d against the platform's S3 -> the worker publishes."""
    backend = make_backend("production")
    secret_keys = ("MMDLM_S3_ACCESS_KEY", "MMDLM_S3_SECRET_KEY", "MMDLM_DATABASE_URL", "MMDLM_BROKER_URL")
    secret = {k: v for k, v in backend.env.items() if k in secret_keys}
    config_map = {k: v for k, v in backend.env.items() if k not in secret_keys}
    config_map.update(MMDLM_HOME=str(tmp_path / "node-home"), HF_HUB_OFFLINE="1")
    settings = kubeflow.example_settings()
    with FakeCluster(kubeflow.render_runtime(settings), config_map, secret, tmp_path / "nodes") as cluster:
        kubeconfig = tmp_path / "kubeconfig"
        kubeconfig.write_text(json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": "fake",
            "clusters": [{"name": "fake", "cluster": {"server": f"http://127.0.0.1:{cluster.server.server_address[1]}"}}],
            "users": [{"name": "fake", "user": {}}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake"}}],
        }))  # fmt: skip
        env = {
            **TRAIN_ENV, "KUBECONFIG": str(kubeconfig), "MMDLM_TRAIN_MAX_NODES": "2",
            "MMDLM_TRAIN_K8S_NAMESPACE": "mmdlm", "MMDLM_TRAIN_K8S_RUNTIME": "mmdlm-torch",
            "MMDLM_TRAIN_K8S_ENV_FROM_SECRET": "mmdlm-secrets", "MMDLM_TRAIN_K8S_SERVICE_ACCOUNT": "mmdlm-train-node",
            "MMDLM_TRAIN_K8S_POLL_S": "0.5", "MMDLM_TRAIN_K8S_PENDING_TIMEOUT_S": "120",
        }  # fmt: skip
        p = platform_factory(backend, workers_queues=[["train"]], env=env)
        dataset = publish_local_artifact(p, tiny_dataset, kind="dataset")
        job = p.client.submit(
            {**train_spec(dataset, steps=STEPS, checkpoint={"interval": 3, "keep_last": 2, "keep_best": True},
                          eval={"interval": 3, "batches": 1}),
             "launcher": "kubeflow", "nnodes": 2, "nproc_per_node": 1}
        )  # fmt: skip
        done = p.wait(job["id"], timeout_s=180)
        nodes = "\n".join(
            path.read_text()[-2000:] for path in sorted((tmp_path / "nodes").rglob("node-*.log"))
        )
        assert done["status"] == "succeeded", (done, p.logs(), nodes)

    name = kubeflow.resource_name(job["id"], 1)
    selector = {"labelSelector": [f"mmdlm.dev/job-id={job['id']}"]}
    calls = [(m, pth, q) for m, pth, q, _ in cluster.requests]
    trainjobs = "/apis/trainer.kubeflow.org/v1alpha1/namespaces/mmdlm/trainjobs"
    post = calls.index(("POST", trainjobs, {}))
    assert calls[:post] == [
        ("GET", trainjobs, selector),
        ("GET", "/apis/kubeflow.org/v1/namespaces/mmdlm/pytorchjobs", selector),
    ]
    assert ("GET", f"{trainjobs}/{name}", {}) in calls[post:]
    [model_id] = done["artifacts"]
    artifact = p.client.artifact(model_id)
    assert artifact["kind"] == "model" and artifact["metadata"]["launcher"] == "kubeflow"
    assert artifact["metadata"]["step"] == STEPS and artifact["metadata"]["world_size"] == 2
    series = p.client.metrics(job["id"])["series"]
    assert series["loss"]["steps"] == list(range(1, STEPS + 1)), "the worker mirrored the nodes' metrics"
    local = tmp_path / "model"
    p.client.download_all(model_id, local)
    assert load_pretrained(local).trained["step"] == STEPS
    # the nodes' stored output: final/ + final.json, and each node's rank logs in its own folder
    # (PET_NODE_RANK), stdout and stderr of every rank (torchrun --log-dir/--redirects/--tee)
    store = p.store()
    run = RunStore(store, job["id"])
    assert store.stat(kubeflow.final_marker_key(job["id"])) is not None
    logs = [info.key.removeprefix(run.logs_prefix(1)) for info in store.list(run.logs_prefix(1))]
    assert {key.split("/")[0] for key in logs} == {"node-0", "node-1"}, logs
    assert (
        sum(key.endswith("/stderr.log") for key in logs)
        == sum(key.endswith("/stdout.log") for key in logs)
        == 2
    )
