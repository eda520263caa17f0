"""Per-position vocabulary reductions for the training losses, fused and chunked over rows.

The GIDD+ and HDLM losses depend on a position's logits only through a few scalars (the log-probability of
the clean token, of the noisy token, a cluster's log-mass, a sum over the vocabulary). Autograd through the
straightforward (B, L, V) formulation materialises several full-vocabulary tensors forward and backward; these
functions compute the scalars row-chunk by row-chunk (so each chunk stays in cache) and write the gradient with
respect to the logits in one pass, recomputing the softmax instead of storing it. Arithmetic is float32, as in
the unfused losses (no bf16 rounding of the vocabulary math, spec §11 bug 20).

The per-chunk arithmetic lives in small kernel functions. Eager, each is a handful of in-place passes over the
chunk; under `compiled_kernels()` each is one `torch.compile`d function (Inductor fuses the passes into a few
vectorised loops per row; forward + backward 1.1-1.4x faster than eager on CPU, bench/loss_kernels.py). The
trainer turns that on with `TrainConfig.compile`, the sampler with `SampleConfig.compile`.

Shapes: R rows (positions), V_r logit columns; `text` (V_r,) bool selects the ids the denoiser may emit.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor

#: rows per chunk on CPU: 32 x 50k x 4 bytes = 6.4 MB of float32 temporaries, which stay in the last-level cache
#: between passes. Eager, on a 2-core AVX-512 EPYC, alternated in one process (issue 12), 32 rows against 128:
#: GIDD+ loss fwd + bwd 0.42 s vs 0.92 s (bf16), MDLM's 0.29 s vs 0.44 s, GIDD+'s sampling normaliser 0.04 s
#: vs 0.21 s (bf16); 16 rows was no faster. Compiled kernels were insensitive to it.
CHUNK_ROWS = 32
#: elements per chunk on accelerators, where few large kernels beat many cache-sized ones
DEVICE_CHUNK_ELEMENTS = 1 << 26

_USE_COMPILED: contextvars.ContextVar[bool] = contextvars.ContextVar("mmdlm_fused_compiled", default=False)
_COMPILED: dict[Callable[..., Any], Callable[..., Any]] = {}


@contextmanager
def compiled_kernels(enabled: bool = True) -> Iterator[None]:
    """Run the chunk kernels `torch.compile`d inside this block (this thread or task only; eager outside).

    Each kernel compiles once per process with dynamic shapes (the last chunk and the selected-row chunks
    differ in rows), so the first loss inside the block pays a few seconds."""
    token = _USE_COMPILED.set(enabled)
    try:
        yield
    finally:
        _USE_COMPILED.reset(token)


def _kernel(fn: Callable[..., Any], compiled: bool) -> Callable[..., Any]:
    """`fn`, or its compiled twin. Forward reads the switch and saves it for backward, which may run on
    another thread (CUDA autograd runs backward on its own device threads)."""
    if not compiled:
        return fn
    compiled = _COMPILED.get(fn)
    if compiled is None:
        compiled = _COMPILED[fn] = torch.compile(fn, dynamic=True)
    return compiled


def _forward_switch(ctx: Any) -> bool:
    ctx.compiled = _USE_COMPILED.get()
    return ctx.compiled


def _chunk_rows(logits: Tensor) -> int:
    if logits.device.type == "cpu":
        return CHUNK_ROWS
    return max(1, DEVICE_CHUNK_ELEMENTS // max(1, logits.shape[-1]))


def _row_chunks(rows: Tensor | None, logits: Tensor) -> list[Tensor | slice]:
    """Chunks of the rows to compute: slices of every row, or index tensors of the True entries of `rows`."""
    count, step = logits.shape[0], _chunk_rows(logits)
    if rows is None:
        return [slice(lo, min(lo + step, count)) for lo in range(0, count, step)]
    return list(torch.nonzero(rows).flatten().split(step))


def _take(logits: Tensor, idx: Tensor | slice) -> Tensor:
    """Rows `idx` of `logits`: a view for a slice, a copy for an index tensor (kernels never modify it)."""
    return logits[idx] if isinstance(idx, slice) else logits.index_select(0, idx)


def _gradient_buffer(logits: Tensor, rows: Tensor | None) -> Tensor:
    """An uninitialised gradient for `logits` whose rows outside `rows` are 0 (the chunks write the rest)."""
    grad = torch.empty_like(logits)
    if rows is not None:
        grad.index_fill_(0, torch.nonzero(~rows).flatten(), 0.0)
    return grad


def _put(dest: Tensor, idx: Tensor | slice, rows: Tensor) -> None:
    """Write `rows` into `dest` (one rounding to dest's dtype)."""
    if isinstance(idx, slice):
        dest[idx] = rows
    else:
        dest.index_copy_(0, idx, rows.to(dest.dtype))


def _safe(lse: Tensor) -> Tensor:
    """-inf normalisers (a row or cluster without text ids) replaced by 0, so exp(l - lse) stays 0, not nan."""
    return torch.where(torch.isfinite(lse), lse, torch.zeros_like(lse))


def _text_only(chunk: Tensor, neg_text: Tensor) -> Tensor:
    """The chunk as a fresh float32 tensor with non-text columns at -inf (safe to modify in place)."""
    return chunk.to(torch.float32, copy=True).masked_fill_(neg_text, float("-inf"))


def _text_only_log_x(logits: Tensor, x: Tensor, text: Tensor, lse: Tensor) -> Tensor:
    """logits[r, x_r] - lse_r as float32, -inf where x_r is not a text id."""
    off_text = torch.zeros(text.shape, dtype=torch.float32, device=text.device).masked_fill_(
        ~text, float("-inf")
    )
    return logits.gather(-1, x[:, None]).squeeze(-1).float() + off_text[x] - lse


# ----- chunk kernels: (n, V_r) rows in, per-row scalars or the rows' gradient out -----


def _logsumexp_kernel(chunk: Tensor, neg_text: Tensor) -> Tensor:
    return torch.logsumexp(_text_only(chunk, neg_text), dim=-1)


def _plain_logsumexp_kernel(chunk: Tensor) -> Tensor:
    return torch.logsumexp(chunk.float(), dim=-1)


def _log_prob_grad_kernel(
    chunk: Tensor, neg_text: Tensor, lse: Tensor, g_p: Tensor, g_x: Tensor, x: Tensor
) -> Tensor:
    """-g_p x̂ + g_x e_x, float32 (n, V_r): the gradient of g_x log x̂_x, less g_p - g_x times x̂."""
    out = _text_only(chunk, neg_text).sub_(lse[:, None]).exp_().mul_(-g_p[:, None])
    return out.scatter_add_(-1, x[:, None], g_x[:, None])


def _gidd_kernel(chunk: Tensor, neg_text: Tensor, k: Tensor) -> tuple[Tensor, Tensor]:
    """(log-normaliser, S = sum_v log1p(k x̂_v)) per row."""
    c = _text_only(chunk, neg_text)
    peak = c.amax(dim=-1, keepdim=True)
    total = c.sub_(peak).exp_().sum(dim=-1, keepdim=True)  # c: exp(l - max)
    s_sum = c.mul_(k[:, None] / total).log1p_().sum(dim=-1)  # k x̂ = exp(l - max) k / sum
    return (peak + total.log()).squeeze(-1), s_sum


def _gidd_grad_kernel(
    chunk: Tensor, neg_text: Tensor, lse: Tensor, k: Tensor, g_x: Tensor, g_z: Tensor, g_s: Tensor,
    x: Tensor, z: Tensor,
) -> Tensor:  # fmt: skip
    """The gradient of g_x log x̂_x + g_z log x̂_z + g_s S, in the chunk's dtype.

    dS/dl = x̂ (g - sum_v g_v x̂_v), g = k / (1 + k x̂); with w = k x̂ / (1 + k x̂) = g x̂ the whole gradient is
    g_s w - (g_s sum(w) + g_x + g_z) x̂ + g_x e_x + g_z e_z."""
    p = _text_only(chunk, neg_text).sub_(lse[:, None]).exp_()  # x̂
    q = p * k[:, None]
    w = torch.add(q, 1.0).reciprocal_().mul_(q)
    gs = g_s[:, None]
    coef = gs * w.sum(dim=-1, keepdim=True) + (g_x + g_z)[:, None]
    out = w.mul_(gs).sub_(p.mul_(coef))
    out.scatter_add_(-1, x[:, None], g_x[:, None])
    return out.scatter_add_(-1, z[:, None], g_z[:, None]).to(chunk.dtype)


# The cluster kernels always run eager: compiled, cluster_row_terms measured 0.93x of eager in fp32 and bf16
# (the member-column gather does not fuse), against 1.1-1.4x for the others (bench/loss_kernels.py).


def _cluster_kernel(chunk: Tensor, neg_text: Tensor, cols: Tensor, col_pad: Tensor) -> tuple[Tensor, Tensor]:
    """(log-normaliser, log-sum over the row's cluster columns `cols`, padded by `col_pad`) per row."""
    c = _text_only(chunk, neg_text)
    inside = c.gather(-1, cols).masked_fill_(col_pad, float("-inf"))
    return torch.logsumexp(c, dim=-1), torch.logsumexp(inside, dim=-1)


def _cluster_grad_kernel(
    chunk: Tensor, neg_text: Tensor, lse: Tensor, lse_sel: Tensor, cols: Tensor, col_pad: Tensor,
    g_x: Tensor, g_p: Tensor, x: Tensor,
) -> Tensor:  # fmt: skip
    """g_x (e_x - x̂) + g_p (y - x̂), y = softmax inside the row's cluster (its columns only), float32."""
    c = _text_only(chunk, neg_text)
    y = (
        c.gather(-1, cols)
        .masked_fill_(col_pad, float("-inf"))
        .sub_(lse_sel[:, None])
        .exp_()
        .mul_(g_p[:, None])
    )
    out = c.sub_(lse[:, None]).exp_().mul_(-(g_x + g_p)[:, None])
    out.scatter_add_(-1, cols, y)  # padding slots add 0
    return out.scatter_add_(-1, x[:, None], g_x[:, None])


# ----- autograd functions -----


class _GiddRowTerms(torch.autograd.Function):
    """(log x̂_x, log x̂_z, S = sum_v log1p(k x̂_v)) per row; x̂ = softmax of the logits over text ids."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, logits: Tensor, x: Tensor, z: Tensor, k: Tensor, text: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        R, neg_text, kernel = logits.shape[0], ~text, _kernel(_gidd_kernel, _forward_switch(ctx))
        lse = torch.empty(R, dtype=torch.float32, device=logits.device)
        s_sum = torch.empty(R, dtype=torch.float32, device=logits.device)
        for idx in _row_chunks(None, logits):
            lse[idx], s_sum[idx] = kernel(logits[idx], neg_text, k[idx])
        ctx.save_for_backward(logits, x, z, k, text, lse)
        return _text_only_log_x(logits, x, text, lse), _text_only_log_x(logits, z, text, lse), s_sum

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: Any, g_x: Tensor, g_z: Tensor, g_s: Tensor
    ) -> tuple[Tensor | None, ...]:
        logits, x, z, k, text, lse = ctx.saved_tensors
        neg_text, kernel = ~text, _kernel(_gidd_grad_kernel, ctx.compiled)
        grad = torch.empty_like(logits)
        g_x, g_z, g_s, lse = g_x.float(), g_z.float(), g_s.float(), _safe(lse)
        for i in _row_chunks(None, logits):
            grad[i] = kernel(logits[i], neg_text, lse[i], k[i], g_x[i], g_z[i], g_s[i], x[i], z[i])
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


class _TextLogProb(torch.autograd.Function):
    """log x̂_x per row (0 for rows not in `rows`); x̂ = softmax of the logits over text ids."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, logits: Tensor, x: Tensor, text: Tensor, rows: Tensor | None
    ) -> Tensor:
        neg_text, kernel = ~text, _kernel(_logsumexp_kernel, _forward_switch(ctx))
        lse = torch.zeros(logits.shape[0], dtype=torch.float32, device=logits.device)
        for idx in _row_chunks(rows, logits):
            lse[idx] = kernel(_take(logits, idx), neg_text)
        log_x = _text_only_log_x(logits, x, text, lse)
        if rows is not None:
            log_x = torch.where(rows, log_x, 0.0)
        ctx.save_for_backward(logits, x, text, lse, rows)
        return log_x

    @staticmethod
    def backward(ctx: Any, g_x: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        logits, x, text, lse, rows = ctx.saved_tensors
        neg_text, kernel = ~text, _kernel(_log_prob_grad_kernel, ctx.compiled)
        grad = _gradient_buffer(logits, rows)
        g_x, lse = g_x.float(), _safe(lse)
        for idx in _row_chunks(rows, logits):
            g = g_x[idx]
            _put(grad, idx, kernel(_take(logits, idx), neg_text, lse[idx], g, g, x[idx]))
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
        R, neg_text, kernel = logits.shape[0], ~text, _cluster_kernel  # always eager, see _cluster_kernel
        lse = torch.zeros(R, dtype=torch.float32, device=logits.device)
        lse_sel = torch.zeros(R, dtype=torch.float32, device=logits.device)
        for idx in _row_chunks(rows, logits):
            cluster = sel[idx]
            lse[idx], lse_sel[idx] = kernel(_take(logits, idx), neg_text, members[cluster], pad[cluster])
        log_x = _text_only_log_x(logits, x, text, lse)
        log_p = lse_sel - lse
        if rows is not None:
            log_x, log_p = torch.where(rows, log_x, 0.0), torch.where(rows, log_p, 0.0)
        ctx.save_for_backward(logits, x, sel, members, pad, text, lse, lse_sel, rows)
        return log_x, log_p

    @staticmethod
    def backward(ctx: Any, g_x: Tensor, g_p: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        logits, x, sel, members, pad, text, lse, lse_sel, rows = ctx.saved_tensors
        neg_text, kernel = ~text, _cluster_grad_kernel  # always eager, see _cluster_kernel
        grad = _gradient_buffer(logits, rows)
        g_x, g_p = g_x.float(), g_p.float()
        lse, lse_sel = _safe(lse), _safe(lse_sel)
        for idx in _row_chunks(rows, logits):
            cluster = sel[idx]
            out = kernel(
                _take(logits, idx), neg_text, lse[idx], lse_sel[idx], members[cluster], pad[cluster],
                g_x[idx], g_p[idx], x[idx],
            )  # fmt: skip
            _put(grad, idx, out)
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
    kernel = _kernel(_plain_logsumexp_kernel, _USE_COMPILED.get())
    for idx in _row_chunks(None, logits):
        lse[idx] = kernel(logits[idx, :hi])
    if excluded.numel() == 0:
        return lse
    share = torch.exp(logits[:, excluded].float() - lse[:, None]).sum(dim=-1)
    out = lse + torch.log1p(-share.clamp(max=0.5))
    bad = share > 0.5
    if bool(bad.any()):
        out[bad] = torch.logsumexp(logits[bad].float().masked_fill(~text, float("-inf")), dim=-1)
    return out
