"""The node agent of `launcher: kubeflow` pods, run here as one node: it stages the dataset from the
object store, runs torchrun with the c10d rendezvous the manifests use (2 gloo ranks), and leaves the
checkpoints, metrics and the final model in the store for the worker to publish."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from mmdlm.pipeline import load_pretrained
from services.common.artifacts import scan_directory
from services.common.store.local import LocalStore
from services.trainer import kubeflow
from services.trainer.kinds import TrainSpec
from services.trainer.sync import RunStore
from tests.integration.trainer.conftest import train_spec

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_node_agent_trains_through_c10d_and_stores_everything(tiny_dataset: Path, tmp_path: Path) -> None:
    home = tmp_path / "home"
    store = LocalStore(home / "store")
    job_id = "k" * 32
    uri = "artifacts/ds/dataset/"
    files = scan_directory(tiny_dataset)
    for record in files:
        store.put_file(uri + record.path, tiny_dataset / record.path)
    spec = TrainSpec.model_validate({**train_spec("d" * 32, steps=12), "launcher": "kubeflow"})
    node_dir = tmp_path / "node"
    bundle = kubeflow.make_bundle(
        job_id, 1, spec, {"id": "ds", "uri": uri, "files": [f.as_dict() for f in files]}, None, str(node_dir)
    )
    store.put_bytes(kubeflow.bundle_key(job_id, 1), json.dumps(bundle).encode())
    args = kubeflow.node_args(job_id, 1, "mmdlm-test", elastic_env=False)
    # what Kubeflow's torch plugin injects and Kubernetes expands into the args
    pet = {
        "PET_MASTER_ADDR": "127.0.0.1",
        "PET_MASTER_PORT": str(_free_port()),
        "PET_NNODES": "1",
        "PET_NPROC_PER_NODE": "2",
    }
    for key, value in pet.items():
        args = [a.replace(f"$({key})", value) for a in args]
    args = [a.replace(kubeflow.NODE_DIR, str(node_dir)) for a in args]
    split = args.index("--")
    args[split:split] = ["--dir", str(node_dir)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("MMDLM_")}
    env.update(MMDLM_HOME=str(home), OMP_NUM_THREADS="1", PYTHONPATH=str(Path(__file__).resolve().parents[3]))
    # the image puts the environment's scripts (torchrun) on PATH; so does an activated venv
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    result = subprocess.run([sys.executable, *args[1:]], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]

    run = RunStore(store, job_id)
    assert [m.step for m in run.markers()][-1] == 12
    steps = [json.loads(line)["step"] for line in run.metrics_lines() if "split" not in json.loads(line)]
    assert steps == list(range(1, 13))
    marker = json.loads(store.get_bytes(kubeflow.final_marker_key(job_id)))
    out = tmp_path / "final"
    for record in marker["files"]:
        store.get_file(kubeflow.final_prefix(job_id) + record["path"], out / record["path"])
    assert load_pretrained(out).trained["step"] == 12
