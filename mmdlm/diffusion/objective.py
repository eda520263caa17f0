"""The training objective and likelihood bound of every discrete diffusion family (the `Objective` seam).

One Monte-Carlo draw per sequence: t (low-discrepancy across the batch), z_t ~ q_t(. | x), one network call,
the process's per-token loss, reduced as a mean over real (attention-mask) tokens (spec §3.1). Padding tokens
are never scored. `nll_bound` averages K stratified time draws per sequence and accumulates in float64.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from mmdlm.diffusion.base import DiscreteProcess, TokenLoss, uniform
from mmdlm.families import LossOutput


class DiffusionObjective:
    """`Objective` for a `DiscreteProcess`.

    Batches are `{"input_ids": (B, L) int64, "attention_mask": (B, L) bool}`; a missing attention mask means
    every position is real.
    """

    def __init__(self, process: DiscreteProcess) -> None:
        self.process = process

    def _forward(
        self, model: nn.Module, x0: Tensor, mask: Tensor | None, t: Tensor, generator: torch.Generator | None
    ) -> TokenLoss:
        """One draw of z_t and the network call; `mask` None means no padding (fastest attention kernel)."""
        zt = self.process.sample_zt(x0, t, generator)
        if self.process.uses_cluster_logits:
            logits, cluster_logits = model(zt, t, mask, with_cluster_logits=True)
            return self.process.loss(logits, x0, zt, t, cluster_logits)
        return self.process.loss(model(zt, t, mask), x0, zt, t)

    def __call__(
        self, model: nn.Module, batch: Mapping[str, Tensor], generator: torch.Generator | None = None
    ) -> LossOutput:
        x0, mask, given = _unpack(batch)
        t = self.process.sample_times(x0.shape[0], generator, x0.device)
        terms = self._forward(model, x0, given, t, generator)
        count = mask.sum()
        denom = count.clamp(min=1)

        def mean(v: Tensor) -> Tensor:
            # where(), not multiply: padding positions may hold inf (their target is not a text id)
            return torch.where(mask, v.float(), 0.0).sum() / denom

        loss = mean(terms.loss)
        metrics = {"elbo": mean(terms.elbo).detach()}
        metrics.update({name: mean(v).detach() for name, v in terms.metrics.items()})
        metrics["t_mean"] = t.float().mean().detach()
        return LossOutput(loss=loss, metrics=metrics, num_tokens=count)

    @torch.no_grad()
    def nll_bound(
        self,
        model: nn.Module,
        batch: Mapping[str, Tensor],
        num_samples: int,
        generator: torch.Generator | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Per-sequence NLL upper bound in nats, float64 (B,), and real-token counts (B,) int64.

        For sequence b the K times are stratified, t_k = t_eps + (1 - 2 t_eps)(k + u_b)/K, so every
        sequence sees the whole time range; each draw contributes the ELBO integrand summed over real tokens.
        The integral runs over [t_eps, 1 - t_eps] as in training (spec §3.6): the omitted ends are O(t_eps),
        except where `process.bound_note()` says otherwise (HDLM with gamma < 1: O(t_eps^gamma), not a bound).
        """
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        x0, mask, given = _unpack(batch)
        B = x0.shape[0]
        eps = self.process.t_eps
        u = uniform((B,), generator, x0.device, torch.float64)
        total = torch.zeros(B, dtype=torch.float64, device=x0.device)
        for k in range(num_samples):
            t = (eps + (1 - 2 * eps) * (k + u) / num_samples).float()
            terms = self._forward(model, x0, given, t, generator)
            total += torch.where(mask, terms.elbo.double(), 0.0).sum(dim=-1)
        return total / num_samples, mask.sum(dim=-1).long()


def _unpack(batch: Mapping[str, Tensor]) -> tuple[Tensor, Tensor, Tensor | None]:
    """input_ids (B, L), the (B, L) bool mask of scored tokens, and the mask as given (None if absent)."""
    if "input_ids" not in batch:
        raise KeyError("batch must hold 'input_ids' (B, L) int64")
    x0 = batch["input_ids"].long()
    given = batch.get("attention_mask")
    if given is not None:
        given = given.bool()
        if given.shape != x0.shape:
            raise ValueError(
                f"attention_mask shape {tuple(given.shape)} differs from input_ids {tuple(x0.shape)}"
            )
    mask = torch.ones_like(x0, dtype=torch.bool) if given is None else given
    return x0, mask, given
