"""Settings of the trainer service, read from `MMDLM_TRAIN_*` (the platform's `Settings` ignores them).

They describe what THIS deployment's train workers offer, so the API can refuse a job that no worker
could run (a world size above `max_procs`) before it is queued, and the runner launches torchrun the
same way on every worker. Kubeflow fields are used only by `launcher: kubeflow` jobs.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Annotated

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class TrainerSettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="MMDLM_TRAIN_", env_file=".env", env_ignore_empty=True, extra="ignore"
    )

    max_procs: int = Field(default=8, ge=1, description="largest nproc_per_node a local train worker runs")
    max_nodes: int = Field(default=1, ge=1, description="largest nnodes of a kubeflow job")
    max_tokens: int = Field(
        default=10**13,
        ge=1,
        le=2**63 - 1,
        description="quota of one train job: steps x batch_size x grad_accum x ranks x seq_len (refused at submit)",
    )
    omp_threads: int = Field(default=0, ge=0, description="OMP_NUM_THREADS per rank; 0 = cores / ranks")
    stop_grace_s: float = Field(default=5.0, gt=0, description="SIGTERM -> SIGKILL delay on cancel")
    sync_interval_s: float = Field(default=1.0, gt=0, description="how often new checkpoints are uploaded")
    poll_interval_s: float = Field(default=0.2, gt=0, description="metrics.jsonl / rank log tail period")
    error_lines: int = Field(default=12, ge=1, description="traceback lines of the failed rank in the error")

    # --- launcher: kubeflow ------------------------------------------------------------------------------
    k8s_namespace: str = "default"
    k8s_image: str = Field(default="mmdlm:latest", description="image with mmdlm installed (the worker's)")
    k8s_api: str = Field(default="trainjob", pattern="^(trainjob|pytorchjob)$")
    k8s_runtime: str = Field(default="torch-distributed", description="TrainJob runtimeRef name")
    k8s_service_account: str = ""
    k8s_env_from_secret: str = Field(
        default="", description="Secret whose MMDLM_S3_ACCESS_KEY/SECRET_KEY (only those) the pods get"
    )
    k8s_config_map: str = Field(
        default="mmdlm-config",
        description="ConfigMap the pods read (envFrom; a TrainJob's comes from its runtime: re-render it)",
    )
    k8s_gpu_resource: str = "nvidia.com/gpu"
    k8s_node_selector: str = Field(
        default="nvidia.com/gpu.present=true",
        description="nodeSelector of GPU pods: key=value,... (`none`: no selector)",
    )
    k8s_tolerations: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["nvidia.com/gpu:NoSchedule"],
        description="tolerations of GPU pods: key[=value]:effect,... (no value: operator Exists; `none`)",
    )
    k8s_queue_name: str = Field(default="", description="Kueue LocalQueue (kueue.x-k8s.io/queue-name label)")
    k8s_cache_pvc: str = Field(default="", description="PVC mounted at /cache on the nodes; empty: emptyDir")
    k8s_image_pull_secrets: Annotated[list[str], NoDecode] = Field(default_factory=list)
    k8s_poll_s: float = Field(default=10.0, gt=0)
    k8s_pending_timeout_s: float = Field(
        default=1800.0, gt=0, description="a job whose pods never start fails after this (C.2: stuck jobs)"
    )

    @field_validator("k8s_image_pull_secrets", "k8s_tolerations", mode="before")
    @classmethod
    def _split(cls, value: object) -> object:
        if isinstance(value, str):
            return [p.strip() for p in value.split(",") if p.strip() and p.strip().lower() != "none"]
        return value

    @field_validator("k8s_node_selector")
    @classmethod
    def _pairs(cls, value: str) -> str:
        bad = [p for p in value.split(",") if p.strip() and p.strip().lower() != "none" and "=" not in p]
        if bad:
            raise ValueError(f"expected key=value pairs separated by commas, got {bad[0].strip()!r}")
        return value

    @property
    def node_selector(self) -> dict[str, str]:
        """MMDLM_TRAIN_K8S_NODE_SELECTOR as a nodeSelector ({} for `none`)."""
        pairs = [p.strip() for p in self.k8s_node_selector.split(",") if p.strip()]
        return dict(p.split("=", 1) for p in pairs if p.lower() != "none")

    @field_validator("k8s_tolerations")
    @classmethod
    def _tolerations(cls, value: list[str]) -> list[str]:
        for item in value:
            key, _, effect = item.rpartition(":")
            if not key or effect not in ("NoSchedule", "PreferNoSchedule", "NoExecute"):
                raise ValueError(
                    f"toleration {item!r}: expected key[=value]:NoSchedule|PreferNoSchedule|NoExecute"
                )
        return value


@lru_cache(maxsize=1)
def get_trainer_settings() -> TrainerSettings:
    return TrainerSettings()
