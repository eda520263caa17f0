"""Parameter groups of AdamW and the EMA shadow weights."""

from __future__ import annotations

import torch
from torch import nn

from mmdlm.config.ar import ARConfig
from mmdlm.config.train import OptimizerSection
from mmdlm.models.ar import ARTransformer
from mmdlm.training.ema import EMA
from mmdlm.training.optim import build_optimizer, param_groups


def _model() -> ARTransformer:
    torch.manual_seed(0)
    return ARTransformer(ARConfig.model_validate({"preset": "cpu-nano", "max_seq_len": 16}), vocab_size=50)


def test_no_decay_on_norms_biases_and_embeddings() -> None:
    model = nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 4), nn.LayerNorm(4))
    decay, no_decay = param_groups(model, 0.1, decay_all=False)
    assert [p.shape for p in decay["params"]] == [torch.Size([4, 4])]
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    no_decay_ids = {id(p) for p in no_decay["params"]}
    assert id(model[0].weight) in no_decay_ids and id(model[1].bias) in no_decay_ids
    assert id(model[2].weight) in no_decay_ids


def test_decay_all_puts_everything_in_one_group() -> None:
    model = _model()
    groups = param_groups(model, 0.02, decay_all=True)
    assert len(groups) == 1
    assert len(groups[0]["params"]) == len(list(model.parameters()))


def test_optimizer_is_fused_adamw_with_spec_defaults() -> None:
    opt = build_optimizer(_model(), OptimizerSection())
    assert isinstance(opt, torch.optim.AdamW)
    group = opt.param_groups[0]
    assert group["betas"] == (0.9, 0.99) and group["eps"] == 1e-9 and group["fused"]


def test_ema_update_swap_and_skip() -> None:
    model = nn.Linear(3, 2)
    ema = EMA(model, decay=0.9)
    start = {k: v.clone() for k, v in ema.state_dict().items()}
    with torch.no_grad():
        model.weight.add_(1.0)
    ema.update(model)
    assert torch.allclose(ema.state_dict()["weight"], start["weight"] + 0.1)  # 0.9*w + 0.1*(w+1)
    before = ema.state_dict()["weight"].clone()
    ema.update(model, skip=torch.tensor(1.0))  # a skipped optimizer step leaves the EMA untouched
    assert torch.equal(ema.state_dict()["weight"], before)
    raw = model.weight.detach().clone()
    with ema.swapped_in(model):
        assert torch.equal(model.weight, before)
    assert torch.equal(model.weight, raw)
