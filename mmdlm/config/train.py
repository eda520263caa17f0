"""`TrainConfig`: everything `python -m mmdlm.training` / `mmdlm train` needs, one section per component.

Importable without torch (the trainer service validates `train` job specs with it). Each section is handed
only to the component it configures (optimizer, schedule, checkpointing, ...); runtime objects (device,
process group, tokenizer) never live here. Reference values are the spec's (§8.3): AdamW(0.9, 0.99,
eps 1e-9, wd 0.02), peak lr 5e-4, 10k warmup steps then cosine to 10% of peak, gradient clipping at 1.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from mmdlm.config.ar import ARSpec
from mmdlm.config.base import StrictModel
from mmdlm.config.latent import CrossDiTSpec, ImageMMDiTSpec, LatentDiTSpec, MMDiTSpec
from mmdlm.config.model import GIDDSpec, HDLMSpec, MDLMSpec

PLACEHOLDER = "???"

ModelSpec = Annotated[
    MDLMSpec | GIDDSpec | HDLMSpec | ARSpec | MMDiTSpec | LatentDiTSpec | CrossDiTSpec | ImageMMDiTSpec,
    Field(discriminator="family"),
]
"""The family-tagged network + process spec; `family` picks the class (and `mmdlm.families` the builder)."""


MAX_STEPS = 1_000_000_000
"""Optimizer steps of one run: far past any real run, and every step/progress counter stays in range."""


class DataSection(StrictModel):
    dataset: str = Field(min_length=1)
    """Directory of a `dataset` artifact (`mmdlm.data.prepare.prepare_dataset` output)."""
    batch_size: int = Field(32, ge=1)
    """Rows per device per micro-step. Global batch = batch_size * grad_accum * world size."""
    grad_accum: int = Field(1, ge=1)
    """Micro-steps per optimizer step; gradients sync across ranks only on the last one."""
    shuffle: bool = True
    """Reshuffle training rows every epoch (seeded by `seed`); False reads rows in order (tests, debugging)."""


class OptimizerSection(StrictModel):
    name: Literal["adamw"] = "adamw"
    lr: float = Field(5e-4, gt=0.0)
    """Peak learning rate (reached at the end of warmup)."""
    betas: tuple[float, float] = (0.9, 0.99)
    eps: float = Field(1e-9, gt=0.0)
    """Small on purpose (spec): safe because master weights and Adam moments are float32 (spec bug 24)."""
    weight_decay: float = Field(0.02, ge=0.0)
    decay_all: bool = False
    """False (default): no weight decay on norm weights, biases and embeddings (every tensor with fewer
    than 2 dims, plus embedding tables). True decays every parameter, as the original code did."""

    @field_validator("betas")
    @classmethod
    def _betas_in_range(cls, betas: tuple[float, float]) -> tuple[float, float]:
        if not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"each beta must be in [0, 1), got {betas}")
        return betas


class ScheduleSection(StrictModel):
    """lr(step) for the optimizer step with 0-based index `step` (S = TrainConfig.steps, W = warmup_steps).

    Every kind warms up linearly, lr = peak * step / W for step < W (so the very first step has lr 0, as in
    the spec); after warmup, with r = min_lr_ratio:
      cosine    peak * (r + (1 - r) * (1 + cos(pi * (step - W) / (S - W))) / 2)   (spec: r = 0.1)
      linear    peak * (r + (1 - r) * (1 - (step - W) / (S - W)))                   (spec: r = 0)
      constant  peak   (unlike the original, whose `constant` ignored warmup)
    """

    kind: Literal["cosine", "linear", "constant"] = "cosine"
    warmup_steps: int = Field(10_000, ge=0)
    min_lr_ratio: float = Field(0.1, ge=0.0, le=1.0)


class EMASection(StrictModel):
    enabled: bool = False
    decay: float = Field(0.9999, gt=0.0, lt=1.0)
    """Per optimizer step: ema = decay * ema + (1 - decay) * weights (float32 shadow copy)."""


class CheckpointSection(StrictModel):
    interval: int = Field(1000, ge=1)
    """Write run_dir/checkpoints/step-NNNNNNNN every this many optimizer steps (and at the last step)."""
    keep_last: int = Field(3, ge=1)
    """Delete older checkpoints beyond the newest `keep_last`, except the best one."""
    keep_best: bool = True
    """Also write a checkpoint whenever the validation NLL improves, and never delete the best one."""


class EvalSection(StrictModel):
    interval: int = Field(1000, ge=1)
    """Validate every this many optimizer steps (and after the last step). Validation uses the EMA
    weights when EMA is on."""
    batches: int | None = Field(20, ge=1)
    """Validation batches per rank (None = the whole split)."""
    batch_size: int | None = Field(None, ge=1)
    """Rows per device per validation batch (None = data.batch_size)."""
    num_time_samples: int = Field(1, ge=1)
    """Time draws per sequence for the diffusion ELBO bound (AR is exact)."""


class LogSection(StrictModel):
    interval: int = Field(10, ge=1)
    """Write a metrics line every this many steps; the only place the loop syncs tensors to the host."""
    console: bool = True
    """Also log rank-0 progress lines through the `logging` module (rich handler on a terminal)."""


class DebugSection(StrictModel):
    crash_at_step: int | None = Field(None, ge=0)
    """Fault injection for tests of the trainer service: raise (or exit) just before this optimizer step."""
    crash_rank: int | None = Field(None, ge=0)
    """Only this rank crashes (None: every rank)."""
    crash_mode: Literal["raise", "exit", "kill"] = "raise"
    """`raise` a RuntimeError, `exit` with status 3, or `kill` the process with SIGKILL (no cleanup)."""


class TrainConfig(StrictModel):
    model: ModelSpec
    data: DataSection
    optimizer: OptimizerSection = Field(default_factory=OptimizerSection)
    schedule: ScheduleSection = Field(default_factory=ScheduleSection)
    steps: int = Field(1_000_000, ge=1, le=MAX_STEPS)
    """Optimizer steps in total (resume continues until this step)."""
    time_limit_s: float | None = Field(None, gt=0)
    """Stop early once this many seconds of this process's loop have passed (checked at log steps, agreed
    by all ranks): the run then validates, checkpoints and saves `final` as if `steps` were reached. The
    schedule still assumes `steps`, so a time-limited run ends before the lr has decayed."""
    precision: Literal["bf16", "fp32"] = "bf16"
    """bf16: forward/backward under bf16 autocast; parameters, gradients and Adam states stay float32."""
    grad_clip: float | None = Field(1.0, gt=0.0)
    """Clip the global gradient norm to this value (None: no clipping; the norm is still logged)."""
    ema: EMASection = Field(default_factory=EMASection)
    checkpoint: CheckpointSection = Field(default_factory=CheckpointSection)
    eval: EvalSection = Field(default_factory=EvalSection)
    log: LogSection = Field(default_factory=LogSection)
    seed: int = Field(0, ge=0)
    run_dir: str = Field("runs/default", min_length=1)
    resume: str | None = "auto"
    """`auto`: continue from the newest complete checkpoint in run_dir/checkpoints if there is one;
    a path: continue from that checkpoint directory; None (or `none`): start fresh (an existing run_dir
    with checkpoints is then an error, so a run is never silently overwritten)."""
    compile: bool = False
    """torch.compile the model before wrapping it in DDP, and the fused loss kernels
    (`mmdlm.diffusion.fused.compiled_kernels`: 2-4x faster vocabulary math on CPU, issue 12)."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """`auto`: the local CUDA device of this rank when CUDA is available, else CPU."""
    save_final: bool = True
    """Write run_dir/final as a `model` folder (mmdlm.pipeline.load_pretrained reloads it)."""
    debug: DebugSection = Field(default_factory=DebugSection)

    @model_validator(mode="after")
    def _no_placeholders(self) -> TrainConfig:
        """Presets mark what only the user knows with `???`; name every such field still unset."""
        missing: list[str] = []

        def walk(node: object, path: str) -> None:
            if isinstance(node, dict):
                for key, value in node.items():
                    walk(value, f"{path}.{key}" if path else str(key))
            elif node == PLACEHOLDER:
                missing.append(path)

        walk(self.model_dump(mode="json"), "")
        if missing:
            raise ValueError(
                "fields still hold the preset placeholder '???', set them with --set: " + ", ".join(missing)
            )
        return self

    @field_validator("resume", mode="before")
    @classmethod
    def _none_string(cls, value: object) -> object:
        return None if isinstance(value, str) and value.lower() in {"none", "null", ""} else value
