"""The training loop shared by every family: `Trainer(config).train()` or `python -m mmdlm.training`.

    from mmdlm.config.train import TrainConfig
    from mmdlm.training import train
    result = train(TrainConfig.from_file("run.yaml", ["steps=100"]))

Under torchrun each rank runs the same call; see `trainer.py` for the step and `checkpoint.py` for the
run directory layout.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mmdlm.config.train import TrainConfig
    from mmdlm.training.trainer import TrainResult


def train(config: TrainConfig) -> TrainResult:
    """Run one training job to completion in this process (one rank under torchrun)."""
    from mmdlm.training.distributed import destroy
    from mmdlm.training.trainer import Trainer

    try:
        return Trainer(config).train()
    finally:
        destroy()
