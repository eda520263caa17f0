"""Model families: the one seam between the generic training/eval/sampling code and a concrete model.

A family turns its config (a `family`-tagged pydantic model from `mmdlm.config`) into a network and an
objective. The training loop, the evaluator and the services only ever talk to this protocol, so adding
a family means adding one module here and one config class, never editing the loop.

Families register lazily by module path so importing the registry stays cheap (no torch model code).
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import torch
    from torch import Tensor, nn


@dataclass
class LossOutput:
    """What an objective returns for one micro-batch.

    loss:       scalar tensor that `backward()` is called on (already reduced over the batch).
    metrics:    scalar tensors to log (detached), e.g. `elbo`, per-term losses, accuracy.
    num_tokens: scalar tensor, the number of tokens the reduction counted (for tokens/s and averaging).
    """

    loss: Tensor
    metrics: dict[str, Tensor] = field(default_factory=dict)
    num_tokens: Tensor | None = None


class Objective(Protocol):
    """Training loss and likelihood bound of a family. Holds the noise process, never the optimizer."""

    def __call__(
        self, model: nn.Module, batch: Mapping[str, Tensor], generator: torch.Generator | None = None
    ) -> LossOutput: ...

    def nll_bound(
        self,
        model: nn.Module,
        batch: Mapping[str, Tensor],
        num_samples: int,
        generator: torch.Generator | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Per-sequence NLL upper bound in nats (float64, shape (B,)) and per-sequence token counts (B,).

        Diffusion families average the ELBO over `num_samples` time draws; AR returns the exact NLL.
        """
        ...


@dataclass
class Built:
    """A family instantiated for one vocabulary: the network, its objective and its extra state."""

    model: nn.Module
    objective: Objective
    extras: dict[str, Any] = field(default_factory=dict)


class Family(Protocol):
    name: str

    def build(self, spec: Any, vocab: Any) -> Built:
        """Create a freshly initialised model and its objective from a family spec and a VocabInfo."""
        ...


# family name -> module that defines `FAMILY` (an object implementing `Family`)
_MODULES: dict[str, str] = {
    "mdlm": "mmdlm.families.discrete",
    "gidd": "mmdlm.families.discrete",
    "hdlm": "mmdlm.families.discrete",
    "ar": "mmdlm.families.ar",
    "mmdit": "mmdlm.families.latent",
    "latent-dit": "mmdlm.families.latent",
    "cross-dit": "mmdlm.families.latent",
    "image-mmdit": "mmdlm.families.image",
}


def register(name: str, module: str) -> None:
    """Register a family provided by `module` (which must expose `FAMILIES[name]`)."""
    _MODULES[name] = module


def names() -> list[str]:
    return sorted(_MODULES)


def get_family(name: str) -> Family:
    if name not in _MODULES:
        raise ValueError(f"unknown family {name!r}; known families: {', '.join(names())}")
    module = importlib.import_module(_MODULES[name])
    return module.FAMILIES[name]
