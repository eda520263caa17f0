"""DiT: parameter counts (spec §6.2), adaLN-zero init, rotary, padding mask, time independence, configs."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from mmdlm.config.model import DIT_PRESETS, DiTConfig
from mmdlm.diffusion.base import padded_vocab_size
from mmdlm.models.blocks import Rotary, SelfAttention, apply_rotary
from mmdlm.models.dit import DiT

V_GPT2 = 50259


def formula_count(cfg: DiTConfig, rows: int, heads: int) -> int:
    d, k = cfg.hidden_size, cfg.cond_dim
    block = 12 * d * d + 13 * d + 6 * d * k
    time = 256 * k + k + k * k + k
    head = d + d * rows + rows + 2 * d * k + 2 * d
    return cfg.n_blocks * block + rows * d + time + heads * head


# spec §6.2: (non-emb M, total C=0 M, total HDLM C=64 two heads M)
SPEC_COUNTS = {
    "tiny": (28.36, 80.11, 106.24),
    "small": (92.13, 169.70, 208.88),
    "base": (321.18, 424.57, 476.79),
    "1B": (1246.35, 1453.02, 1557.41),
}


@pytest.mark.parametrize("preset", list(SPEC_COUNTS))
def test_parameter_counts_match_spec(preset: str) -> None:
    cfg = DiTConfig.model_validate(preset)
    non_emb, total, hdlm = SPEC_COUNTS[preset]
    with torch.device("meta"):
        mdlm_model = DiT(cfg, padded_vocab_size(V_GPT2))
        hdlm_model = DiT(cfg, padded_vocab_size(V_GPT2, 64), cluster_head=True)
    assert mdlm_model.num_parameters() == formula_count(cfg, 50304, 1)
    assert hdlm_model.num_parameters() == formula_count(cfg, 50432, 2)
    assert round(mdlm_model.num_parameters(exclude_embeddings=True) / 1e6, 2) == non_emb
    assert round(mdlm_model.num_parameters() / 1e6, 2) == total
    assert round(hdlm_model.num_parameters() / 1e6, 2) == hdlm


def test_hdlm_single_cluster_small_count() -> None:
    with torch.device("meta"):
        model = DiT(DiTConfig.model_validate("small"), padded_vocab_size(V_GPT2, 1), cluster_head=True)
    assert round(model.num_parameters() / 1e6, 2) == 208.58


def test_cpu_presets_are_small() -> None:
    for name in ("cpu-nano", "cpu-micro"):
        n = DiT(DiTConfig.model_validate(name), padded_vocab_size(8192)).num_parameters()
        assert 1e5 < n < 5e6, (name, n)


def _random_init(model: DiT, seed: int = 0) -> DiT:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return model


def test_zero_init_gives_zero_logits_and_identity_blocks() -> None:
    model = DiT(DiTConfig.model_validate("cpu-nano"), 256)
    z = torch.randint(0, 256, (2, 16))
    t = torch.rand(2)
    assert torch.count_nonzero(model(z, t)) == 0
    h = model.embed(z)
    c = F.silu(model.time_embed(t))[:, None]
    out = model.blocks[0](h, c, model.rotary(16), None)
    torch.testing.assert_close(out, h)


def test_bug26_time_scale_spreads_time_features() -> None:
    """With raw t in [0, 1] most of the 256 sinusoidal features barely move between t = 0.1 and t = 0.9;
    `time_scale` (e.g. 1000) makes them informative. The default stays 1.0, as in the spec."""
    from mmdlm.models.blocks import sinusoidal_embedding

    t = torch.tensor([0.1, 0.9])
    raw = sinusoidal_embedding(t, 256)
    scaled = sinusoidal_embedding(t * 1000, 256)
    moving_raw = ((raw[0] - raw[1]).abs() > 0.05).sum().item()
    moving_scaled = ((scaled[0] - scaled[1]).abs() > 0.05).sum().item()
    assert moving_raw < 80 < moving_scaled
    model = DiT(DiTConfig.model_validate({"preset": "cpu-nano", "time_scale": 1000.0}), 64)
    assert model.time_embed.time_scale == 1000.0


def test_rotary_rotates_queries_and_keys_only() -> None:
    torch.manual_seed(0)
    attn = SelfAttention(32, 2)
    rot = Rotary(16, 8)
    x = torch.randn(1, 8, 32)
    q, k, v = attn.qkv(x).view(1, 8, 3, 2, 16).permute(2, 0, 3, 1, 4)
    cos, sin = rot(8)
    ref = F.scaled_dot_product_attention(apply_rotary(q, cos, sin), apply_rotary(k, cos, sin), v)
    expected = attn.out(ref.transpose(1, 2).reshape(1, 8, 32))
    torch.testing.assert_close(attn(x, (cos, sin)), expected)
    # rotation preserves norms and position 0 is the identity
    torch.testing.assert_close(apply_rotary(q, cos, sin).norm(dim=-1), q.norm(dim=-1))
    torch.testing.assert_close(apply_rotary(q, cos, sin)[:, :, 0], q[:, :, 0])


def test_padding_mask_matches_unpadded_prefix() -> None:
    model = _random_init(DiT(DiTConfig.model_validate("cpu-nano"), 256)).eval()
    z = torch.randint(0, 256, (2, 12))
    mask = torch.ones(2, 12, dtype=torch.bool)
    mask[0, 7:] = False
    t = torch.tensor([0.3, 0.6])
    padded = model(z, t, mask)
    short = model(z[:1, :7], t[:1])
    torch.testing.assert_close(padded[0, :7], short[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(padded[1], model(z[1:], t[1:])[0], atol=1e-5, rtol=1e-5)
    # an all-padding row must not produce NaN
    mask[1] = False
    assert torch.isfinite(model(z, t, mask)).all()


def test_time_independent_denoiser_ignores_t() -> None:
    cfg = DiTConfig.model_validate({"preset": "cpu-nano", "time_conditioning": False})
    model = _random_init(DiT(cfg, 256)).eval()
    z = torch.randint(0, 256, (2, 10))
    torch.testing.assert_close(model(z, torch.tensor([0.1])), model(z, torch.tensor([0.9])))
    timed = _random_init(DiT(DiTConfig.model_validate("cpu-nano"), 256)).eval()
    assert not torch.allclose(timed(z, torch.tensor([0.1])), timed(z, torch.tensor([0.9])))


def test_cluster_head_output_and_errors() -> None:
    model = _random_init(DiT(DiTConfig.model_validate("cpu-nano"), 256, cluster_head=True))
    z = torch.randint(0, 256, (2, 10))
    logits, cluster_logits = model(z, torch.rand(2), with_cluster_logits=True)
    assert logits.shape == cluster_logits.shape == (2, 10, 256)
    assert not torch.allclose(logits, cluster_logits)
    with pytest.raises(ValueError, match="cluster_head"):
        DiT(DiTConfig.model_validate("cpu-nano"), 256)(z, torch.rand(2), with_cluster_logits=True)
    with pytest.raises(ValueError, match="max_seq_len"):
        model(torch.randint(0, 256, (1, 500)), torch.rand(1))


def test_bf16_autocast_forward() -> None:
    model = _random_init(DiT(DiTConfig.model_validate("cpu-nano"), 256))
    z = torch.randint(0, 256, (2, 10))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(z, torch.rand(2))
    assert out.dtype == torch.bfloat16 and torch.isfinite(out.float()).all()


def test_config_presets_overrides_and_round_trip(tmp_path) -> None:
    cfg = DiTConfig.model_validate({"preset": "small", "max_seq_len": 128})
    assert (cfg.hidden_size, cfg.n_heads, cfg.max_seq_len) == (768, 12, 128)
    for suffix in (".json", ".yaml"):
        path = tmp_path / f"dit{suffix}"
        cfg.to_file(path)
        assert DiTConfig.from_file(path) == cfg
    again = DiTConfig.from_file(tmp_path / "dit.yaml", ["hidden_size=96", "n_heads=3"])
    assert again.head_dim == 32
    assert set(DIT_PRESETS) >= {"tiny", "small", "base", "1B", "cpu-nano", "cpu-micro"}
    with pytest.raises(ValueError, match="unknown DiT preset"):
        DiTConfig.model_validate("huge")
    with pytest.raises(ValueError, match="divisible by n_heads"):
        DiTConfig(hidden_size=100, n_heads=3)
    with pytest.raises(ValueError, match="hidden_size"):
        DiTConfig(hidden_size=0)
    assert math.isclose(DiTConfig().time_scale, 1.0)


def test_model_save_load_same_output(tmp_path) -> None:
    from safetensors.torch import load_file, save_file

    cfg = DiTConfig.model_validate("cpu-nano")
    model = _random_init(DiT(cfg, 256)).eval()
    save_file(model.state_dict(), tmp_path / "model.safetensors")
    cfg.to_file(tmp_path / "config.json")
    clone = DiT(DiTConfig.from_file(tmp_path / "config.json"), 256).eval()
    clone.load_state_dict(load_file(tmp_path / "model.safetensors"))
    z, t = torch.randint(0, 256, (2, 10)), torch.rand(2)
    torch.testing.assert_close(model(z, t), clone(z, t))
