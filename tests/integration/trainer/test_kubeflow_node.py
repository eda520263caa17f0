"""The rendered Kubeflow job, run: for each API, the pod the controller would create (tests/deploy/
test_kubeflow_render.py builds it from the TrainJob + runtime, or the PyTorchJob) is started as two local
node processes (2 nodes x 1 gloo rank, CPU) with exactly the environment Kubernetes would give it: the
ConfigMap, the two Secret keys it references, and the variables the controller injects (their names
from upstream; only the master host is 127.0.0.1 and the port a free one, since pod DNS does not exist
here). The node agents stage the bundle from a real S3 server, rendezvous through c10d, train, and leave
checkpoints, metrics, rank logs and `final/` + `final.json` in the store."""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mmdlm.pipeline import load_pretrained
from services.common.artifacts import scan_directory
from services.common.settings import Settings
from services.common.store import open_store
from services.trainer import kubeflow
from services.trainer.kinds import TrainSpec
from services.trainer.settings import TrainerSettings
from services.trainer.sync import RunStore
from tests.deploy.test_kubeflow_render import container_env, expand, injected_env, node_pods
from tests.integration.trainer.conftest import train_spec
from tests.utils.servers import S3Server, stop_process_group

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[3]
STEPS = 6


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("api", ["trainjob", "pytorchjob"])
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
    replicas, pod = node_pods(manifest, kubeflow.render_runtime(settings))
    (container,) = pod["spec"]["containers"]
    port = str(_free_port())
    procs = []
    for rank in range(replicas):
        injected = injected_env(manifest, rank)
        for key in ("PET_MASTER_ADDR", "PET_RDZV_ENDPOINT"):  # pod DNS names -> this machine
            if key in injected:
                injected[key] = "127.0.0.1" if key == "PET_MASTER_ADDR" else f"127.0.0.1:{port}"
        if "PET_MASTER_PORT" in injected:
            injected["PET_MASTER_PORT"] = port
        env = container_env(container, config_map, secret, injected)
        assert not {"MMDLM_DATABASE_URL", "MMDLM_BROKER_URL"} & set(env)
        args = expand(container["args"], env)
        assert args[0] == "python" and container["command"][-1] == "mmdlm-entrypoint"
        split = args.index("--")
        node_dir = tmp_path / f"node-{rank}"
        command = [sys.executable, *args[1:split], "--dir", str(node_dir), *args[split:]]
        base = {k: v for k, v in os.environ.items() if not k.startswith(("MMDLM_", "PET_"))}
        # the image's PATH has torchrun; the image's workdir has the code; one thread per rank here
        base.update(PATH=f"{Path(sys.executable).parent}{os.pathsep}{base.get('PATH', '')}",
                    PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")  # fmt: skip
        log = (tmp_path / f"node-{rank}.log").open("w")
        procs.append(
            (subprocess.Popen(command, env={**base, **env}, stdout=log, stderr=subprocess.STDOUT), log)
        )
    deadline = time.monotonic() + 150
    while time.monotonic() < deadline and any(p.poll() is None for p, _ in procs):
        time.sleep(0.5)
    for proc, log in procs:
        stop_process_group(proc)  # the agent, its torchrun and ranks (a pod's container exiting)
        log.close()
    outputs = [(tmp_path / f"node-{r}.log").read_text() for r in range(replicas)]
    assert [p.returncode for p, _ in procs] == [0, 0], "\n---\n".join(o[-3000:] for o in outputs)

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
