"""Per-position vocabulary reductions for the training losses, fused and chunked over rows.

The GIDD+ and HDLM losses depend on a position's logits only through a few scalars (the log-probability of
the clean token, of the noisy token, a cluster's log-mass, a sum over the vocabulary). Autograd through the
straightforward (B, L, V) formulation materialises several full-vocabulary tensors forward and backward; these
functions compute the scalars row-chunk by row-chunk (so each chunk stays in cache) and write the gradient with
respect to the logits in one pass, recomputing the softmax instead of storing it. Arithmetic is float32, as in
the unfused losses (no bf16 rounding of the vocabulary math, spec §11 bug 20).

Shapes: R rows (positions), V_r logit columns; `text` (V_r,) bool selects the ids the denoiser may emit.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

#: rows per chunk on CPU (128 x 50k x 4 bytes = 25 MB): few enough chunks that a loaded machine's thread
#: synchronisation per operation does not dominate, small enough to bound the float32 temporaries
CHUNK_ROWS = 128
#: elements per chunk on accelerators, where few large kernels beat many cache-sized ones
DEVICE_CHUNK_ELEMENTS = 1 << 26


def _chunk_rows(logits: Tensor) -> int:
    if logits.device.type == "cpu":
        return CHUNK_ROWS
    return max(1, DEVICE_CHUNK_ELEMENTS // max(1, logits.shape[-1]))


def _chunks(logits: Tensor) -> list[tuple[int, int]]:
    """[lo, hi) row ranges covering the rows of `logits`."""
    rows, step = logits.shape[0], _chunk_rows(logits)
    return [(lo, min(lo + step, rows)) for lo in range(0, rows, step)]


def _masked_float(logits: Tensor, lo: int, hi: int, neg_text: Tensor) -> Tensor:
    """Rows [lo, hi) as a fresh float32 tensor with non-text columns at -inf."""
    chunk = logits[lo:hi].to(torch.float32, copy=True)
    return chunk.masked_fill_(neg_text, float("-inf"))


def _safe(lse: Tensor) -> Tensor:
    """-inf normalisers (a row or cluster without text ids) replaced by 0, so exp(l - lse) stays 0, not nan."""
    return torch.where(torch.isfinite(lse), lse, torch.zeros_like(lse))


class _GiddRowTerms(torch.autograd.Function):
    """(log x̂_x, log x̂_z, S = sum_v log1p(k x̂_v)) per row; x̂ = softmax of the logits over text ids."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, logits: Tensor, x: Tensor, z: Tensor, k: Tensor, text: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        R = logits.shape[0]
        neg_text = ~text
        lse = torch.empty(R, dtype=torch.float32, device=logits.device)
        s_sum = torch.empty(R, dtype=torch.float32, device=logits.device)
        for lo, hi in _chunks(logits):
            chunk = _masked_float(logits, lo, hi, neg_text)
            peak = chunk.amax(dim=-1, keepdim=True)
            total = chunk.sub_(peak).exp_().sum(dim=-1, keepdim=True)  # chunk: exp(l - max)
            lse[lo:hi] = (peak + total.log()).squeeze(-1)
            # k x̂ = exp(l - max) * k / sum
            s_sum[lo:hi] = chunk.mul_(k[lo:hi, None] / total).log1p_().sum(dim=-1)
        text_f = torch.zeros(text.shape, dtype=torch.float32, device=text.device).masked_fill_(
            neg_text, float("-inf")
        )
        log_x = logits.gather(-1, x[:, None]).squeeze(-1).float() + text_f[x] - lse
        log_z = logits.gather(-1, z[:, None]).squeeze(-1).float() + text_f[z] - lse
        ctx.save_for_backward(logits, x, z, k, text, lse)
        return log_x, log_z, s_sum

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: Any, g_x: Tensor, g_z: Tensor, g_s: Tensor
    ) -> tuple[Tensor | None, ...]:
        logits, x, z, k, text, lse = ctx.saved_tensors
        neg_text = ~text
        grad = torch.empty_like(logits)
        g_x, g_z, g_s = (g.float() for g in (g_x, g_z, g_s))
        lse = _safe(lse)
        for lo, hi in _chunks(logits):
            # dS/dl = x̂ (g - sum_v g_v x̂_v), g = k / (1 + k x̂); with w = k x̂ / (1 + k x̂) = g x̂ the whole
            # gradient is g_s w - (g_s sum(w) + g_x + g_z) x̂ + g_x e_x + g_z e_z
            p = _masked_float(logits, lo, hi, neg_text).sub_(lse[lo:hi, None]).exp_()  # x̂
            q = p * k[lo:hi, None]
            w = torch.add(q, 1.0).reciprocal_().mul_(q)
            gs = g_s[lo:hi, None]
            coef = gs * w.sum(dim=-1, keepdim=True) + (g_x[lo:hi] + g_z[lo:hi])[:, None]
            out = w.mul_(gs).sub_(p.mul_(coef))
            out.scatter_add_(-1, x[lo:hi, None], g_x[lo:hi, None])
            grad[lo:hi] = out.scatter_add_(-1, z[lo:hi, None], g_z[lo:hi, None])  # one rounding to bf16
        return grad, None, None, None, None


def gidd_row_terms(
    logits: Tensor, x: Tensor, z: Tensor, k: Tensor, text: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """log x̂_x, log x̂_z and sum_v log1p(k x̂_v) for every row, float32 (R,) each; differentiable in logits.

    Args:
        logits: (R, V_r) any float dtype; x, z: (R,) int64 column ids (-inf log-probability off text);
        k: (R,) float32 >= 0; text: (V_r,) bool.
    """
    return _GiddRowTerms.apply(logits, x, z, k.float().contiguous(), text)


def _row_chunks(rows: Tensor | None, count: int, step: int) -> list[Tensor | slice]:
    """Chunks of the rows to compute: slices of all `count` rows, or index tensors of the True ones."""
    if rows is None:
        return [slice(lo, min(lo + step, count)) for lo in range(0, count, step)]
    ids = torch.nonzero(rows).flatten()
    return list(ids.split(step))


def _take_float(logits: Tensor, idx: Tensor | slice) -> Tensor:
    """The rows `idx` of `logits` as a fresh float32 tensor (safe to modify in place)."""
    if isinstance(idx, slice):
        return logits[idx].to(torch.float32, copy=True)
    taken = logits.index_select(0, idx)
    return taken if taken.dtype == torch.float32 else taken.float()


def _put(dest: Tensor, idx: Tensor | slice, rows: Tensor) -> None:
    if isinstance(idx, slice):
        dest[idx] = rows
    else:
        dest.index_copy_(0, idx, rows.to(dest.dtype))


class _TextLogProb(torch.autograd.Function):
    """log x̂_x per row (0 for rows not in `rows`); x̂ = softmax of the logits over text ids."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, logits: Tensor, x: Tensor, text: Tensor, rows: Tensor | None
    ) -> Tensor:
        neg_text = ~text
        lse = torch.zeros(logits.shape[0], dtype=torch.float32, device=logits.device)
        for idx in _row_chunks(rows, logits.shape[0], _chunk_rows(logits)):
            chunk = _take_float(logits, idx).masked_fill_(neg_text, float("-inf"))
            lse[idx] = torch.logsumexp(chunk, dim=-1)
        text_f = torch.zeros(text.shape, dtype=torch.float32, device=text.device).masked_fill_(
            neg_text, float("-inf")
        )
        log_x = logits.gather(-1, x[:, None]).squeeze(-1).float() + text_f[x] - lse
        if rows is not None:
            log_x = torch.where(rows, log_x, 0.0)
        ctx.save_for_backward(logits, x, text, lse, rows)
        return log_x

    @staticmethod
    def backward(ctx: Any, g_x: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        logits, x, text, lse, rows = ctx.saved_tensors
        neg_text = ~text
        grad = torch.empty_like(logits) if rows is None else torch.zeros_like(logits)
        g_x, lse = g_x.float(), _safe(lse)
        for idx in _row_chunks(rows, logits.shape[0], _chunk_rows(logits)):
            # d log x̂_x / dl = e_x - x̂
            g = g_x[idx, None]
            p = _take_float(logits, idx).masked_fill_(neg_text, float("-inf"))
            out = p.sub_(lse[idx, None]).exp_().mul_(-g).scatter_add_(-1, x[idx, None], g)
            _put(grad, idx, out)  # one rounding to the logits' dtype
        return grad, None, None, None


def text_log_prob(logits: Tensor, x: Tensor, text: Tensor, rows: Tensor | None = None) -> Tensor:
    """log x̂_x for every row, float32 (R,), differentiable in logits, without a (R, V_r) log-softmax.

    Args:
        logits: (R, V_r) any float dtype; x: (R,) int64 (-inf log-probability off text); text: (V_r,) bool;
        rows: optional (R,) bool, the rows whose value is needed: the others are not computed, hold 0 and
            get no gradient (MDLM scores masked positions only).
    """
    return _TextLogProb.apply(logits, x, text, rows)


def cluster_members(segment: Tensor, text: Tensor, clusters: int) -> tuple[Tensor, Tensor]:
    """The text columns of every cluster as a padded (C, S) index matrix (S = the largest cluster) and its
    (C, S) padding mask: a row's cluster mass then reads S columns, not all V_r."""
    seg = torch.where(text, segment, clusters)  # non-text columns sort last, into no cluster
    order = torch.argsort(seg, stable=True)
    counts = torch.bincount(seg, minlength=clusters + 1)[:clusters]
    size = max(1, int(counts.max()))
    starts = torch.cumsum(counts, 0) - counts
    slot = torch.arange(size, device=segment.device)
    pad = slot[None, :] >= counts[:, None]  # (C, S)
    members = order[(starts[:, None] + slot[None, :]).clamp(max=order.numel() - 1)]
    return members.masked_fill(pad, 0), pad


class _ClusterRowTerms(torch.autograd.Function):
    """(log x̂_x, log sum_{v in cluster sel} x̂_v) per row (0 for rows not in `rows`); x̂ = softmax of the
    logits over text ids. The cluster's log-mass reads its S member columns only."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, logits: Tensor, x: Tensor, sel: Tensor, members: Tensor, pad: Tensor, text: Tensor,
        rows: Tensor | None,
    ) -> tuple[Tensor, Tensor]:  # fmt: skip
        R = logits.shape[0]
        neg_text = ~text
        lse = torch.zeros(R, dtype=torch.float32, device=logits.device)
        lse_sel = torch.zeros(R, dtype=torch.float32, device=logits.device)
        for idx in _row_chunks(rows, R, _chunk_rows(logits)):
            chunk = _take_float(logits, idx).masked_fill_(neg_text, float("-inf"))
            lse[idx] = torch.logsumexp(chunk, dim=-1)
            cluster = sel[idx]
            inside = chunk.gather(-1, members[cluster]).masked_fill_(pad[cluster], float("-inf"))
            lse_sel[idx] = torch.logsumexp(inside, dim=-1)
        text_f = torch.zeros(text.shape, dtype=torch.float32, device=text.device).masked_fill_(
            neg_text, float("-inf")
        )
        log_x = logits.gather(-1, x[:, None]).squeeze(-1).float() + text_f[x] - lse
        log_p = lse_sel - lse
        if rows is not None:
            log_x, log_p = torch.where(rows, log_x, 0.0), torch.where(rows, log_p, 0.0)
        ctx.save_for_backward(logits, x, sel, members, pad, text, lse, lse_sel, rows)
        return log_x, log_p

    @staticmethod
    def backward(ctx: Any, g_x: Tensor, g_p: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        logits, x, sel, members, pad, text, lse, lse_sel, rows = ctx.saved_tensors
        neg_text = ~text
        grad = torch.empty_like(logits) if rows is None else torch.zeros_like(logits)
        g_x, g_p = g_x.float(), g_p.float()
        lse, lse_sel = _safe(lse), _safe(lse_sel)
        for idx in _row_chunks(rows, logits.shape[0], _chunk_rows(logits)):
            chunk = _take_float(logits, idx).masked_fill_(neg_text, float("-inf"))
            cluster = sel[idx]
            cols = members[cluster]
            # d/dl: g_x (e_x - x̂) + g_p (y - x̂), y = softmax inside the selected cluster (its S columns)
            y = chunk.gather(-1, cols).masked_fill_(pad[cluster], float("-inf"))
            y = y.sub_(lse_sel[idx, None]).exp_().mul_(g_p[idx, None])
            out = chunk.sub_(lse[idx, None]).exp_().mul_(-(g_x[idx] + g_p[idx])[:, None])
            out.scatter_add_(-1, cols, y)  # padding slots add 0
            _put(grad, idx, out.scatter_add_(-1, x[idx, None], g_x[idx, None]))
        return grad, None, None, None, None, None, None


def cluster_row_terms(
    logits: Tensor,
    x: Tensor,
    sel: Tensor,
    segment: Tensor,
    text: Tensor,
    rows: Tensor | None = None,
    members: tuple[Tensor, Tensor] | None = None,
) -> tuple[Tensor, Tensor]:
    """log x̂_x and log P_sel = log sum_{v: segment[v] = sel} x̂_v for every row, float32 (R,) each.

    Args:
        logits: (R, V_r) any float dtype; x, sel: (R,) int64; segment: (V_r,) int64 cluster of every column;
        text: (V_r,) bool. A cluster without text ids has log-mass -inf.
        rows: optional (R,) bool, the rows whose values are needed (the others hold 0, get no gradient).
        members: `cluster_members(segment, text, C)`, when the caller keeps it (built here otherwise).
    """
    if members is None:
        members = cluster_members(segment, text, int(segment.max()) + 1)
    return _ClusterRowTerms.apply(logits, x, sel, members[0], members[1], text, rows)


def text_logsumexp(logits: Tensor, text: Tensor) -> Tensor:
    """log sum_{v in text} exp(logits[:, v]) per row, float32 (R,), without a masked copy of the logits.

    When only a few ids below the last text id are excluded ([MASK], [PAD]), the sum runs over the plain
    slice and their share s is taken out, lse + log1p(-s); rows where s > 1/2 (the excluded ids hold most of
    the mass, so log1p(-s) would lose digits) are recomputed with the masked sum.
    """
    ids = torch.nonzero(text).flatten()
    hi = int(ids[-1]) + 1
    excluded = torch.nonzero(~text[:hi]).flatten()
    if excluded.numel() > 16:
        return torch.logsumexp(logits.float().masked_fill(~text, float("-inf")), dim=-1)
    lse = torch.empty(logits.shape[0], dtype=torch.float32, device=logits.device)
    for lo, hi_row in _chunks(logits):
        lse[lo:hi_row] = torch.logsumexp(logits[lo:hi_row, :hi].float(), dim=-1)
    if excluded.numel() == 0:
        return lse
    share = torch.exp(logits[:, excluded].float() - lse[:, None]).sum(dim=-1)
    out = lse + torch.log1p(-share.clamp(max=0.5))
    bad = share > 0.5
    if bool(bad.any()):
        out[bad] = torch.logsumexp(logits[bad].float().masked_fill(~text, float("-inf")), dim=-1)
    return out
