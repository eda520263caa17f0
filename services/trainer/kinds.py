"""The `train` job kind: its spec (built on `TrainConfig`) and the submit-time check. Imported by the API:
keep it free of torch.

A spec is a `TrainConfig` whose paths are replaced by what the platform owns:
  dataset          an artifact id (`dataset`, `latent-dataset` for the latent families, `image-dataset`
                   for image-mmdit), staged by the runner; `data.dataset`, `run_dir` and `resume` are not the user's to set;
  model.clusters   HDLM only: the id of a `clusters` artifact (staged, then replaced by its folder);
plus how to run it: `nproc_per_node`, `nnodes`, `launcher` (`local` torchrun on a train worker, or
`kubeflow` for more than one node). Everything else (model, process, optimizer, schedule, steps,
precision, checkpoint interval/keep, eval, debug fault injection) is the TrainConfig section itself.

    {"kind": "train", "dataset": "<artifact id>", "model": {"family": "mdlm", "model": "cpu-nano"},
     "steps": 200, "nproc_per_node": 2, "checkpoint": {"interval": 50}, "priority": 5}
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from mmdlm.config.base import StrictModel
from mmdlm.config.diffusion import GIDDProcessConfig
from mmdlm.config.train import MAX_STEPS as MAX_TRAIN_STEPS
from mmdlm.config.train import (
    CheckpointSection,
    DebugSection,
    EMASection,
    EvalSection,
    LogSection,
    ModelSpec,
    OptimizerSection,
    ScheduleSection,
    TrainConfig,
)
from services.common.crud import require_artifact
from services.common.errors import FieldError
from services.common.kinds import JobKind, register
from services.common.paths import check_user_paths
from services.trainer.settings import get_trainer_settings

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from services.common.auth import Principal

LATENT_FAMILIES = frozenset({"mmdit", "latent-dit", "cross-dit"})
"""Families whose training data is a `latent-dataset` (they implement `open_dataset`)."""


_SERVICE_FIELDS = frozenset({"kind", "dataset", "nproc_per_node", "nnodes", "launcher", "kubeflow"})


IMAGE_FAMILIES = frozenset({"image-mmdit"})
"""Families whose training data is an `image-dataset` (a `prepare-images` job's artifact)."""

LIBRARY_ONLY_FAMILIES: dict[str, str] = {}
"""Families the library trains but the service cannot stage data for, with the reason shown to the user."""


def dataset_kind(family: str) -> str:
    """The artifact kind a family trains on."""
    if family in IMAGE_FAMILIES:
        return "image-dataset"
    return "latent-dataset" if family in LATENT_FAMILIES else "dataset"


class TrainDataSection(StrictModel):
    """`TrainConfig.data` without the path: the dataset is the spec's `dataset` artifact."""

    batch_size: int = Field(32, ge=1)
    """Rows per device per micro-step. Global batch = batch_size * grad_accum * world size."""
    grad_accum: int = Field(1, ge=1)
    shuffle: bool = True


class KubeflowSection(StrictModel):
    """Cluster resources of a `launcher: kubeflow` job (per node)."""

    gpus_per_node: int = Field(0, ge=0, le=64)
    """GPUs requested per node (0: CPU pods, gloo). With GPUs it must equal nproc_per_node (a rank per GPU)."""
    cpu: str = "4"
    memory: str = "16Gi"
    image: str | None = None
    """Container image; default MMDLM_TRAIN_K8S_IMAGE."""


class TrainSpec(StrictModel):
    """A `train` job: a TrainConfig trained on an artifact, under torchrun, by the trainer service."""

    kind: Literal["train"] = "train"
    model: ModelSpec
    """Family, network and noise process (`family`: mdlm, gidd, hdlm, ar, or a latent family). HDLM:
    `model.clusters` is the id of a `clusters` artifact."""
    dataset: str = Field(min_length=1, max_length=64)
    """Id of the `dataset` artifact to train on (`latent-dataset` for the latent families)."""
    data: TrainDataSection = Field(default_factory=TrainDataSection)
    optimizer: OptimizerSection = Field(default_factory=OptimizerSection)
    schedule: ScheduleSection = Field(default_factory=ScheduleSection)
    steps: int = Field(1000, ge=1, le=MAX_TRAIN_STEPS)
    precision: Literal["bf16", "fp32"] = "bf16"
    grad_clip: float | None = Field(1.0, gt=0.0)
    ema: EMASection = Field(default_factory=EMASection)
    checkpoint: CheckpointSection = Field(default_factory=CheckpointSection)
    """Every `interval` steps a checkpoint is written and uploaded to the object store; the store keeps
    the newest `keep_last` and the best by validation loss."""
    eval: EvalSection = Field(default_factory=EvalSection)
    log: LogSection = Field(default_factory=LogSection)
    seed: int = Field(0, ge=0)
    compile: bool = False
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """`auto`: each rank's GPU (NCCL) when the worker has CUDA, else CPU (gloo)."""
    launcher: Literal["local", "kubeflow"] = "local"
    """`local`: torchrun on the train worker that claims the job; `kubeflow`: a Kubeflow Trainer job."""
    nproc_per_node: int = Field(1, ge=1, le=64)
    """Ranks per node (torchrun --nproc_per_node); at most MMDLM_TRAIN_MAX_PROCS for `launcher: local`."""
    nnodes: int = Field(1, ge=1, le=1024)
    """Nodes; more than one needs `launcher: kubeflow`."""
    kubeflow: KubeflowSection = Field(default_factory=KubeflowSection)
    debug: DebugSection = Field(default_factory=DebugSection)
    """Fault injection (tests): `crash_at_step`, `crash_rank`, `crash_mode`."""

    @field_validator("model")
    @classmethod
    def _known_family(cls, model: Any) -> Any:
        from mmdlm.families import names

        trainable = [name for name in names() if name not in LIBRARY_ONLY_FAMILIES]
        if model.family in LIBRARY_ONLY_FAMILIES:
            raise ValueError(
                f"family {model.family!r} cannot be trained as a job: {LIBRARY_ONLY_FAMILIES[model.family]}"
            )
        if model.family not in trainable:
            raise ValueError(
                f"family {model.family!r} has no trainable implementation yet; choose one of {', '.join(trainable)}"
            )
        return model

    @field_validator("nnodes")
    @classmethod
    def _one_node_locally(cls, nnodes: int, info: ValidationInfo) -> int:
        if nnodes > 1 and info.data.get("launcher", "local") == "local":
            raise ValueError(f"{nnodes} nodes need launcher: kubeflow (a local train worker runs one node)")
        return nnodes

    @field_validator("kubeflow")
    @classmethod
    def _one_gpu_per_rank(cls, kubeflow: KubeflowSection, info: ValidationInfo) -> KubeflowSection:
        # a rank per GPU: more GPUs than ranks idle, fewer make ranks share a device (NCCL refuses)
        nproc = info.data.get("nproc_per_node")
        if kubeflow.gpus_per_node and nproc is not None and kubeflow.gpus_per_node != nproc:
            raise ValueError(
                f"kubeflow.gpus_per_node ({kubeflow.gpus_per_node}) must equal nproc_per_node ({nproc}): "
                f"one rank per GPU; set it to {nproc}, or 0 for CPU pods"
            )
        return kubeflow

    @model_validator(mode="after")
    def _runnable(self) -> TrainSpec:
        # every cross-field rule of TrainConfig (schedule vs steps, placeholders, ...) holds for the spec too
        self.to_train_config("<dataset>", "<run_dir>", clusters_dir="<clusters>")
        return self

    @property
    def world_size(self) -> int:
        return self.nproc_per_node * self.nnodes

    @property
    def clusters_artifact(self) -> str | None:
        return getattr(self.model, "clusters", None) if self.model.family == "hdlm" else None

    def to_train_config(
        self, dataset_dir: str, run_dir: str, *, clusters_dir: str | None = None
    ) -> TrainConfig:
        """The library config the ranks run: local paths in, resume from the run dir's checkpoints."""
        # only TrainSpec's own fields: the API's request model adds the job options (priority, ...)
        data = self.model_dump(mode="json", include=set(TrainSpec.model_fields) - _SERVICE_FIELDS)
        data["data"] = {**data["data"], "dataset": str(dataset_dir)}
        if self.model.family == "hdlm":
            data["model"]["clusters"] = (
                str(clusters_dir) if clusters_dir is not None else data["model"]["clusters"]
            )
        data.update(run_dir=str(run_dir), resume="auto", save_final=True)
        return TrainConfig.model_validate(data)


def check(spec: TrainSpec, session: Session, user: Principal) -> None:
    """Refuse at submit what no worker can run: missing/foreign/wrong-kind artifacts, too many ranks."""
    check_user_paths(spec, user.name)  # latent families: a local model.encoder.model folder
    settings = get_trainer_settings()
    if spec.launcher == "local" and spec.nproc_per_node > settings.max_procs:
        raise FieldError(
            "nproc_per_node",
            f"{spec.nproc_per_node} ranks requested; train workers here run at most "
            f"{settings.max_procs} (MMDLM_TRAIN_MAX_PROCS)",
        )
    if spec.launcher == "kubeflow" and spec.nnodes > settings.max_nodes:
        raise FieldError(
            "nnodes", f"{spec.nnodes} nodes requested; this deployment allows {settings.max_nodes} "
            "(MMDLM_TRAIN_MAX_NODES)"
        )  # fmt: skip
    dataset = require_artifact(
        session, user, spec.dataset, field="dataset", kind=dataset_kind(spec.model.family)
    )
    meta = dataset.meta or {}
    if spec.model.family in IMAGE_FAMILIES:
        check_image_shape(spec, meta)
    check_quota(spec, meta.get("seq_len"), settings.max_tokens)
    vocab_size = (meta.get("tokenizer") or {}).get("vocab_size")
    process = getattr(spec.model, "process", None)
    if isinstance(process, GIDDProcessConfig) and isinstance(vocab_size, int):
        problem = process.alpha_problem(vocab_size)
        if problem is not None:
            raise FieldError("model.process.p_uniform", problem)
    clusters = spec.clusters_artifact
    if clusters is not None:
        require_artifact(session, user, clusters, field="model.clusters", kind="clusters")


def check_image_shape(spec: TrainSpec, meta: dict[str, Any]) -> None:
    """The network's image size and channels must be the image-dataset's (the artifact's metadata)."""
    network = spec.model.model
    for field, key in (("image_size", "resolution"), ("channels", "channels")):
        have, want = getattr(network, field, None), meta.get(key)
        if isinstance(want, int) and have is not None and have != want:
            raise FieldError(
                f"model.model.{field}",
                f"{have} does not match the image dataset's {key} {want}; set model.model.{field}: {want}",
            )
    caption_len = meta.get("caption_len")
    max_len = getattr(network, "max_seq_len", None)
    if isinstance(caption_len, int) and isinstance(max_len, int) and caption_len > max_len:
        raise FieldError(
            "model.model.max_seq_len",
            f"{max_len} is shorter than the image dataset's caption_len {caption_len}; set it >= {caption_len}",
        )


def check_quota(spec: TrainSpec, seq_len: int | None, max_tokens: int) -> None:
    """The operator's size quota: tokens the run will process (the dataset's seq_len, else the model's)."""
    length = seq_len or getattr(spec.model.model, "max_seq_len", None) or 1
    data = spec.data
    tokens = spec.steps * data.batch_size * data.grad_accum * spec.world_size * int(length)
    if tokens > max_tokens:
        raise FieldError(
            "steps",
            f"the job would process {tokens:.3g} tokens (steps {spec.steps} x batch_size {data.batch_size} x "
            f"grad_accum {data.grad_accum} x ranks {spec.world_size} x seq_len {length}); this deployment's "
            f"quota is {max_tokens:.3g} (MMDLM_TRAIN_MAX_TOKENS)",
        )


def _description() -> str:
    s = get_trainer_settings()
    return (
        "Train a model on a `dataset` artifact under torchrun (DDP; gloo on CPU, NCCL on GPU), with live "
        "metrics, checkpoints in the object store, resume after faults, and a `model` artifact. "
        f"This deployment: nproc_per_node <= {s.max_procs}, nnodes <= {s.max_nodes} (launcher: kubeflow)."
    )


def _extra() -> dict[str, Any]:
    s = get_trainer_settings()
    return {"max_procs": s.max_procs, "max_nodes": s.max_nodes, "max_tokens": s.max_tokens}


TRAIN = register(
    JobKind(
        name="train",
        spec=TrainSpec,
        queue="train",
        runner="services.trainer.runner:run",
        check=check,  # type: ignore[arg-type]
        description=_description(),
        extra=_extra(),
    )
)
