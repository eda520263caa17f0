"""The fused row reductions of the GIDD+ / HDLM losses (issue 12) equal plain autograd over dense tensors, in
value and in gradient, across chunk boundaries and for ids outside the text set; eager and with the chunk
kernels compiled (`compiled_kernels`, what `TrainConfig.compile` turns on)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from mmdlm.diffusion import fused
from mmdlm.diffusion.fused import (
    CHUNK_ROWS,
    cluster_row_terms,
    compiled_kernels,
    gidd_row_terms,
    text_log_prob,
    text_logsumexp,
)

R, V = 3 * CHUNK_ROWS + 5, 37  # rows span several chunks, the last one partial


def _text() -> torch.Tensor:
    text = torch.ones(V, dtype=torch.bool)
    text[[0, 30, 35, 36]] = False  # e.g. [PAD], [MASK], padding columns
    return text


@pytest.fixture(params=["eager", pytest.param("compiled", marks=pytest.mark.slow)])
def kernels(request: pytest.FixtureRequest) -> Iterator[str]:
    with compiled_kernels(request.param == "compiled"):
        yield request.param


def _dense_log_x(logits: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    return torch.log_softmax(logits.float().masked_fill(~text, float("-inf")), dim=-1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gidd_row_terms_match_dense_autograd(kernels: str, dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(0)
    text = _text()
    logits = (torch.randn(R, V, generator=g) * 3).to(dtype).requires_grad_()
    x = torch.randint(1, 30, (R,), generator=g)
    z = torch.randint(0, 36, (R,), generator=g)
    z[:4] = 30  # [MASK]: log x̂ = -inf
    k = torch.rand(R, generator=g) * 50
    w = torch.randn(3, R, generator=g)
    tol = {} if dtype == torch.float32 else {"rtol": 2e-2, "atol": 2e-2}

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
    assert grad.dtype == dtype
    torch.testing.assert_close(grad.float(), ref_grad.float(), **tol)
    assert (grad[:, ~text] == 0).all()


def test_cluster_row_terms_match_dense_autograd_float32_and_bf16(kernels: str) -> None:
    """Also for selected rows only, clusters of very different sizes and a cluster without text ids."""
    g = torch.Generator().manual_seed(1)
    text = _text()
    segment = torch.randint(0, 5, (V,), generator=g)
    segment[1:20] = 4  # cluster 4 holds most ids
    segment[30] = 5  # cluster 5 holds only [MASK] (not text): log-mass -inf
    x = torch.randint(1, 30, (R,), generator=g)
    sel = segment[x]
    sel[:3] = torch.randint(0, 5, (3,), generator=g)  # any cluster, not only x's own
    sel[3] = 5
    w = torch.randn(2, R, generator=g)
    selected = torch.rand(R, generator=g) < 0.5
    for dtype, tol in ((torch.float32, {}), (torch.bfloat16, {"rtol": 2e-2, "atol": 2e-2})):
        for rows in (None, selected):
            logits = (torch.randn(R, V, generator=g) * 3).to(dtype).requires_grad_()
            log_x, log_p = cluster_row_terms(logits, x, sel, segment, text, rows=rows)
            dense = _dense_log_x(logits, text)
            inside = segment[None, :] == sel[:, None]
            ref_p = torch.logsumexp(dense.masked_fill(~inside, float("-inf")), dim=-1)
            ref_x = dense.gather(-1, x[:, None]).squeeze(-1)
            keep = torch.ones(R, dtype=torch.bool) if rows is None else rows
            assert torch.isneginf(ref_p[3]) and (rows is not None and not rows[3] or torch.isneginf(log_p[3]))
            torch.testing.assert_close(log_x[keep], ref_x[keep])
            torch.testing.assert_close(log_p[keep], ref_p[keep])
            if rows is not None:
                assert (log_x[~rows] == 0).all() and (log_p[~rows] == 0).all()
            finite = keep & torch.isfinite(ref_p)
            (grad,) = torch.autograd.grad(
                torch.where(keep, w[0] * log_x, 0.0).sum() + torch.where(finite, w[1] * log_p, 0.0).sum(),
                logits,
            )
            (ref,) = torch.autograd.grad(
                torch.where(keep, w[0] * ref_x, 0.0).sum() + torch.where(finite, w[1] * ref_p, 0.0).sum(),
                logits,
            )
            assert grad.dtype == dtype and bool(torch.isfinite(grad).all())
            # row 3: the dense reference's gradient through a logsumexp of only -inf is nan even where unused
            other = torch.arange(R) != 3
            torch.testing.assert_close(grad[other].float(), ref[other].float(), **tol)


def test_text_logsumexp_matches_masked_logsumexp_including_dominant_excluded_ids() -> None:
    g = torch.Generator().manual_seed(2)
    text = _text()
    logits = torch.randn(R, V, generator=g) * 3
    logits[:5, 30] = 40.0  # [MASK] holds nearly all the mass: the masked fallback
    logits[5:9, 0] = 5.0  # [PAD] holds a sizeable share: the log1p correction
    ref = torch.logsumexp(logits.masked_fill(~text, float("-inf")), dim=-1)
    torch.testing.assert_close(text_logsumexp(logits, text), ref)
    torch.testing.assert_close(text_logsumexp(logits.bfloat16(), text), ref, rtol=2e-2, atol=5e-2)


def test_text_log_prob_matches_dense_autograd_all_rows_and_selected_rows(kernels: str) -> None:
    g = torch.Generator().manual_seed(3)
    text = _text()
    x = torch.randint(0, V, (R,), generator=g)  # some targets off text: -inf, as the dense log-softmax
    w = torch.randn(R, generator=g)
    selected = torch.rand(R, generator=g) < 0.5
    for dtype, tol in ((torch.float32, {}), (torch.bfloat16, {"rtol": 2e-2, "atol": 2e-2})):
        for rows in (None, selected):
            logits = (torch.randn(R, V, generator=g) * 3).to(dtype).requires_grad_()
            log_x = text_log_prob(logits, x, text, rows)
            ref = _dense_log_x(logits, text).gather(-1, x[:, None]).squeeze(-1)
            keep = torch.isfinite(ref) if rows is None else rows & torch.isfinite(ref)
            if rows is not None:
                assert (log_x[~rows] == 0).all()  # not computed
            torch.testing.assert_close(log_x[keep], ref[keep])
            computed = torch.ones_like(keep) if rows is None else rows
            assert torch.equal(torch.isinf(log_x), torch.isinf(ref) & computed)  # off-text targets: -inf
            (grad,) = torch.autograd.grad(torch.where(keep, w * log_x, 0.0).sum(), logits)
            (ref_grad,) = torch.autograd.grad(torch.where(keep, w * ref, 0.0).sum(), logits)
            assert grad.dtype == dtype
            torch.testing.assert_close(grad.float(), ref_grad.float(), **tol)
            if rows is not None:
                assert (grad[~rows] == 0).all()


@pytest.mark.slow
def test_compiled_kernels_run_compiled_inside_the_block_only() -> None:
    """The switch is scoped: the block compiles and runs the kernels, and code after it is eager again."""
    g = torch.Generator().manual_seed(4)
    text = _text()
    logits = torch.randn(R, V, generator=g)
    x = torch.randint(1, 30, (R,), generator=g)
    fused._COMPILED.clear()
    eager = text_log_prob(logits, x, text)
    assert not fused._COMPILED
    with compiled_kernels():
        inside = text_log_prob(logits, x, text)
        assert fused._USE_COMPILED.get() and fused._logsumexp_kernel in fused._COMPILED
    assert not fused._USE_COMPILED.get()
    torch.testing.assert_close(inside, eager)
