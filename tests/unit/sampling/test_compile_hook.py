"""SampleConfig.compile: one compiled wrapper per model, reused, so only the first sampling call compiles."""

from __future__ import annotations

from torch import nn

from mmdlm.config.sample import SampleConfig
from mmdlm.sampling.generate import maybe_compile


def test_compile_hook_is_off_by_default_and_reuses_one_wrapper() -> None:
    assert SampleConfig().compile is False
    model = nn.Linear(4, 4)
    assert maybe_compile(model, False) is model
    compiled = maybe_compile(model, True)  # torch.compile is lazy: nothing is compiled until a call
    assert compiled is not model and maybe_compile(model, True) is compiled
    assert maybe_compile(nn.Linear(4, 4), True) is not compiled
