"""The fused row reductions of the GIDD+ / HDLM losses (issue 12) equal plain autograd over dense tensors, in
value and in gradient, across chunk boundaries and for ids outside the text set."""

from __future__ import annotations

import torch

from mmdlm.diffusion.fused import CHUNK_ROWS, cluster_row_terms, gidd_row_terms, text_logsumexp

R, V = 3 * CHUNK_ROWS + 5, 37  # rows span several chunks, the last one partial


def _text() -> torch.Tensor:
    text = torch.ones(V, dtype=torch.bool)
    text[[0, 30, 35, 36]] = False  # e.g. [PAD], [MASK], padding columns
    return text


def _dense_log_x(logits: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    return torch.log_softmax(logits.float().masked_fill(~text, float("-inf")), dim=-1)


def test_gidd_row_terms_match_dense_autograd() -> None:
    g = torch.Generator().manual_seed(0)
    text = _text()
    logits = (torch.randn(R, V, generator=g) * 3).requires_grad_()
    x = torch.randint(1, 30, (R,), generator=g)
    z = torch.randint(0, 36, (R,), generator=g)
    z[:4] = 30  # [MASK]: log x̂ = -inf
    k = torch.rand(R, generator=g) * 50
    w = torch.randn(3, R, generator=g)

    log_x, log_z, s_sum = gidd_row_terms(logits, x, z, k, text)
    dense = _dense_log_x(logits, text)
    ref_x = dense.gather(-1, x[:, None]).squeeze(-1)
    ref_z = dense.gather(-1, z[:, None]).squeeze(-1)
    ref_s = torch.log1p(k[:, None] * dense.exp()).sum(-1)
    torch.testing.assert_close(log_x, ref_x)
    torch.testing.assert_close(log_z, ref_z)
    torch.testing.assert_close(s_sum, ref_s)
    finite_z = torch.isfinite(ref_z)

    def objective(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return (w[0] * a).sum() + (w[1] * torch.where(finite_z, b, 0.0)).sum() + (w[2] * c).sum()

    (grad,) = torch.autograd.grad(objective(log_x, log_z, s_sum), logits)
    (ref_grad,) = torch.autograd.grad(objective(ref_x, ref_z, ref_s), logits)
    torch.testing.assert_close(grad, ref_grad)
    assert (grad[:, ~text] == 0).all()


def test_cluster_row_terms_match_dense_autograd_float32_and_bf16() -> None:
    g = torch.Generator().manual_seed(1)
    text = _text()
    segment = torch.randint(0, 5, (V,), generator=g)
    segment[1:4] = 4  # cluster 4 holds ids 1..3 and maybe others
    x = torch.randint(1, 30, (R,), generator=g)
    sel = segment[x]
    sel[:3] = torch.randint(0, 5, (3,), generator=g)  # any cluster, not only x's own
    w = torch.randn(2, R, generator=g)
    for dtype, tol in ((torch.float32, {}), (torch.bfloat16, {"rtol": 2e-2, "atol": 2e-2})):
        logits = (torch.randn(R, V, generator=g) * 3).to(dtype).requires_grad_()
        log_x, log_p = cluster_row_terms(logits, x, sel, segment, text)
        dense = _dense_log_x(logits, text)
        inside = segment[None, :] == sel[:, None]
        ref_p = torch.logsumexp(dense.masked_fill(~inside, float("-inf")), dim=-1)
        ref_x = dense.gather(-1, x[:, None]).squeeze(-1)
        torch.testing.assert_close(log_x, ref_x)
        torch.testing.assert_close(log_p, ref_p)
        (grad,) = torch.autograd.grad((w[0] * log_x).sum() + (w[1] * log_p).sum(), logits)
        (ref,) = torch.autograd.grad((w[0] * ref_x).sum() + (w[1] * ref_p).sum(), logits)
        assert grad.dtype == dtype
        torch.testing.assert_close(grad.float(), ref.float(), **tol)


def test_text_logsumexp_matches_masked_logsumexp_including_dominant_excluded_ids() -> None:
    g = torch.Generator().manual_seed(2)
    text = _text()
    logits = torch.randn(R, V, generator=g) * 3
    logits[:5, 30] = 40.0  # [MASK] holds nearly all the mass: the masked fallback
    logits[5:9, 0] = 5.0  # [PAD] holds a sizeable share: the log1p correction
    ref = torch.logsumexp(logits.masked_fill(~text, float("-inf")), dim=-1)
    torch.testing.assert_close(text_logsumexp(logits, text), ref)
    torch.testing.assert_close(text_logsumexp(logits.bfloat16(), text), ref, rtol=2e-2, atol=5e-2)
