"""MMDiT network: shapes (spec §1.7), parameter counts (§1.8), init (§13), B6 and B8 fixes, masking."""

from __future__ import annotations

import pytest
import torch

from mmdlm.config.latent import MMDiTConfig
from mmdlm.models.mmdit import HyperConnection, MMDiT, mmdit_param_counts

V = 50


def tiny(**overrides) -> MMDiTConfig:
    base = {
        "hidden_size": 32,
        "n_blocks": 2,
        "n_heads": 4,
        "cond_dim": 32,
        "max_seq_len": 16,
        "latent_dim": 8,
    }
    return MMDiTConfig(**{**base, **overrides})


def model(**overrides) -> MMDiT:
    torch.manual_seed(0)
    return MMDiT(tiny(**overrides), V).eval()


def inputs(B: int = 3, L: int = 10):
    g = torch.Generator().manual_seed(1)
    return (
        torch.randint(0, V, (B, L), generator=g),
        torch.randn(B, 8, generator=g),
        torch.rand(B, generator=g),
        torch.rand(B, generator=g),
    )


def test_spec_parameter_counts_as_built_shape() -> None:
    """mmdit_preprocessed + scripts (H 1024, 24 blocks, C 1024, S 4096, D 32, s = 2, attention 8 x 64,
    no qk-norm, as the original effectively built it): spec §1.8 / §13 numbers."""
    config = MMDiTConfig(
        hidden_size=1024,
        n_blocks=24,
        n_heads=8,
        head_dim=64,
        cond_dim=1024,
        max_seq_len=4096,
        latent_dim=32,
        num_residual_streams=2,
        qk_norm=False,
    )
    counts = mmdit_param_counts(config, 30522)
    assert counts["per_block"] == 33_597_480
    assert counts["backbone"] == 806_341_568
    assert counts["attention_width"] == 512
    assert counts["text_encoder"] == 35_448_832
    assert counts["latent_encoder"] == 2_170_880
    assert counts["conditioning"] == 15_213_568
    assert counts["text_head"] == 31_285_050
    assert counts["latent_head"] == 2_164_768
    assert counts["total"] == 892_624_666
    with torch.device("meta"):
        built = MMDiT(config, 30522)
    assert sum(p.numel() for p in built.parameters()) == 892_624_666
    assert sum(p.numel() for p in built.blocks[0].parameters()) == 33_597_480
    # mmdit.yaml (S 1024, D 1024) total
    assert (
        mmdit_param_counts(config.model_copy(update={"max_seq_len": 1024, "latent_dim": 1024}), 30522)[
            "total"
        ]
        == 893_543_162
    )


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"num_residual_streams": 2},
        {"num_residual_streams": 3, "qk_norm": False},
        {"num_latent_tokens": 3},
        {"head_dim": 4, "n_heads": 2},
    ],
)
def test_formula_matches_built_model(overrides) -> None:
    config = tiny(**overrides)
    built = MMDiT(config, V)
    assert mmdit_param_counts(config, V)["total"] == sum(p.numel() for p in built.parameters())


def test_hyper_connection_parameter_formula() -> None:
    H, s = 32, 2
    hc = HyperConnection(H, s, layer_index=3)
    assert sum(p.numel() for p in hc.parameters()) == 5 * H + 10
    assert torch.equal(hc.static_alpha[:, 0], torch.tensor([0.0, 1.0]))  # one-hot at 3 % 2
    assert torch.equal(hc.static_alpha[:, 1:], torch.eye(2))
    assert torch.equal(hc.static_beta.data, torch.ones(2))


def test_forward_shapes_and_latent_forms() -> None:
    net = model()
    x, z, tt, tl = inputs()
    logits, pred = net(x, z, tt, tl)
    assert logits.shape == (3, 10, V) and pred.shape == (3, 1, 8)
    _, pred_3d = net(x, z[:, None], tt, tl)
    torch.testing.assert_close(pred, pred_3d)
    multi = torch.randn(3, 3, 8)
    torch.testing.assert_close(net(x, multi, tt, tl)[1], net(x, multi.mean(1), tt, tl)[1])


def test_none_timesteps_mean_clean() -> None:
    net = model()
    x, z, _, _ = inputs()
    zeros = torch.zeros(3)
    torch.testing.assert_close(net(x, z)[0], net(x, z, zeros, zeros)[0])


def test_too_long_text_raises() -> None:
    net = model()
    with pytest.raises(ValueError, match="max_seq_len=16"):
        net(torch.zeros(1, 17, dtype=torch.long), torch.randn(1, 8))
    with pytest.raises(ValueError, match="latent_dim=8"):
        net(torch.zeros(1, 4, dtype=torch.long), torch.randn(1, 5))


def test_b8_text_only_forward_and_no_cluster_head() -> None:
    net = model()
    x, z, tt, tl = inputs()
    logits, pred = net(x, None, tt, tl)
    assert logits.shape == (3, 10, V) and pred is None
    # text-only equals the latent stream present but hidden from every text query (condition dropped)
    dropped, _ = net(x, z, tt, tl, drop_latent=torch.ones(3, dtype=torch.bool))
    torch.testing.assert_close(logits, dropped, atol=1e-5, rtol=1e-5)
    assert not any("cluster" in name for name, _ in net.named_parameters())


def test_b6_heads_and_qk_norm_are_applied() -> None:
    eight = MMDiT(tiny(n_heads=8, hidden_size=64), V)
    assert eight.blocks[0].qkv[0].out_features == 3 * 64 and eight.blocks[0].n_heads == 8
    assert eight.blocks[0].head_dim == 8
    net = model(qk_norm=True)
    x, z, tt, tl = inputs()
    before = net(x, z, tt, tl)[0]
    with torch.no_grad():
        net.blocks[0].q_norm[0].weight.mul_(3.0)  # a no-op qk-norm (as-built) would leave outputs unchanged
    assert not torch.allclose(before, net(x, z, tt, tl)[0])
    assert model(qk_norm=False).blocks[0].q_norm is None


def test_init_adaln_identity_and_gates_one() -> None:
    net = model()
    block = net.blocks[0]
    for adaln in (*block.attn_norm, *block.ff_norm):
        assert torch.count_nonzero(adaln.proj.weight) == 0
        H = adaln.proj.out_features // 2
        assert torch.equal(adaln.proj.bias[:H], torch.ones(H)) and torch.equal(
            adaln.proj.bias[H:], torch.zeros(H)
        )
    assert torch.count_nonzero(block.gates.weight) == 0 and torch.equal(block.gates.bias, torch.ones(4 * 32))


def test_hyper_connections_at_init_equal_plain_residual() -> None:
    plain = model(num_residual_streams=1)
    for discard in (False, True):
        hc = model(num_residual_streams=2, hc_discard_width_mix=discard)
        hc.load_state_dict(plain.state_dict(), strict=False)  # shared weights; HC params stay at init
        x, z, tt, tl = inputs()
        a, b = plain(x, z, tt, tl), hc(x, z, tt, tl)
        torch.testing.assert_close(a[0], b[0], atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(a[1], b[1], atol=1e-4, rtol=1e-4)


def test_padding_keys_are_ignored() -> None:
    net = model()
    x, z, tt, tl = inputs()
    mask = torch.ones(3, 10, dtype=torch.bool)
    mask[:, 6:] = False
    other = x.clone()
    other[:, 6:] = (other[:, 6:] + 1) % V
    a = net(x, z, tt, tl, attention_mask=mask)
    b = net(other, z, tt, tl, attention_mask=mask)
    torch.testing.assert_close(a[0][:, :6], b[0][:, :6], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(a[1], b[1], atol=1e-5, rtol=1e-5)


def test_drop_text_hides_text_from_latent() -> None:
    net = model()
    x, z, tt, tl = inputs()
    drop = torch.ones(3, dtype=torch.bool)
    a = net(x, z, tt, tl, drop_text=drop)[1]
    b = net(torch.randint(0, V, x.shape), z, tt, tl, drop_text=drop)[1]
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(a, net(x, z, tt, tl)[1])


def test_time_scaling_reaches_the_sinusoid() -> None:
    raw = model(time_scale=1.0)
    scaled = model(time_scale=1000.0)
    _, _, tt, tl = inputs()
    # same weights (same seed); only the scale applied before the sinusoid differs
    assert not torch.allclose(raw.time(tt, tl), scaled.time(tt, tl))
    assert scaled.time.text_time.time_scale == 1000.0
