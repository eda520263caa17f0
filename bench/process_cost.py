"""Cost of each discrete family's process arithmetic next to its network (issue 12), in one process.

Config (issue 12): DiT hidden 256, 4 blocks, GPT-2 vocabulary, seq 128; training batch 16; sampling batch
8 x 128; 2 threads. For fp32 and bf16 autocast, timed round-robin over the families (medians of --reps):

  train_proc_over_net   loss forward + backward down to the logits, over the network's forward + backward
  train_ratio_to_mdlm   (net + MDLM loss) / (net + family loss): the family's training tokens/s as a share
                        of MDLM's on the same network
  step_over_forward     (network forward + reverse step) / network forward at t = 0.9, 0.5, 0.1 (median),
                        the step drawing with the default SamplingOptions (float64 draws)

Targets: step_over_forward <= 1.3, train_ratio_to_mdlm >= 0.85. Prints a table, writes JSON.

    python bench/process_cost.py [--reps 5] [--vocab 50259] [--out var/bench/process_cost.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from mmdlm.config.diffusion import GIDDProcessConfig, HDLMProcessConfig, MDLMProcessConfig
from mmdlm.config.model import DiTConfig
from mmdlm.diffusion.base import DiscreteProcess, SamplingOptions, VocabLayout
from mmdlm.diffusion.gidd import GIDDProcess
from mmdlm.diffusion.hierarchical import HierarchicalProcess
from mmdlm.diffusion.masked import MaskedProcess
from mmdlm.models.dit import DiT


def round_robin(fns: dict[str, Callable[[], object]], reps: int) -> dict[str, float]:
    """One warm-up call each, then `reps` interleaved rounds; median seconds per name."""
    for f in fns.values():
        f()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(reps):
        for k, f in fns.items():
            start = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - start)
    return {k: statistics.median(v) for k, v in times.items()}


def build(vocab: int, clusters: int, seed: int) -> tuple[dict[str, DiscreteProcess], dict[str, DiT]]:
    """The three processes (GIDD+ p_uniform 0.1, HDLM with `clusters` random clusters) and their networks."""
    g = torch.Generator().manual_seed(seed)
    ids = {"mask_id": vocab - 2, "pad_id": vocab - 1, "bos_id": vocab - 3, "eos_id": vocab - 3}
    cmap = torch.randint(0, clusters, (vocab,), generator=g)
    cmap[vocab - 2] = -1
    flat = VocabLayout(vocab_size=vocab, **ids)
    procs: dict[str, DiscreteProcess] = {
        "mdlm": MaskedProcess(flat, MDLMProcessConfig()),
        "gidd": GIDDProcess(flat, GIDDProcessConfig(p_uniform=0.1)),
        "hdlm": HierarchicalProcess(
            VocabLayout(vocab_size=vocab, num_clusters=clusters, **ids), HDLMProcessConfig(), cmap
        ),
    }
    cfg = DiTConfig(hidden_size=256, n_heads=4, n_blocks=4, cond_dim=128, max_seq_len=128)
    torch.manual_seed(seed)
    nets = {k: DiT(cfg, p.layout.rows) for k, p in procs.items()}
    with torch.no_grad():  # the zero-initialised head would make every x̂ uniform
        for net in nets.values():
            for p in net.parameters():
                if torch.count_nonzero(p) == 0:
                    p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return procs, nets


def measure(vocab: int, clusters: int, reps: int, seed: int = 0) -> dict[str, float]:
    procs, nets = build(vocab, clusters, seed)
    g = torch.Generator().manual_seed(seed)
    x_train = torch.randint(0, vocab - 3, (16, 128), generator=g)
    x_sample = torch.randint(0, vocab - 3, (8, 128), generator=g)
    t_train = torch.linspace(0.05, 0.95, 16)
    res: dict[str, float] = {}
    for prec in ("fp32", "bf16"):

        def autocast(prec: str = prec) -> torch.autocast:
            return torch.autocast("cpu", dtype=torch.bfloat16, enabled=prec == "bf16")

        fns: dict[str, Callable[[], object]] = {}
        for name, proc in procs.items():
            net = nets[name]
            zt = proc.sample_zt(x_train, t_train, g)
            with torch.no_grad(), autocast():
                logits = net(zt, t_train)

            def loss_only(
                proc: DiscreteProcess = proc, zt: torch.Tensor = zt, logits: torch.Tensor = logits
            ) -> None:
                leaf = logits.detach().requires_grad_()
                proc.loss(leaf, x_train, zt, t_train).loss.mean().backward()

            def network(net: DiT = net, zt: torch.Tensor = zt) -> None:
                with autocast():
                    y = net(zt, t_train)
                y.backward(torch.full_like(y, 1.0 / y.numel()))
                net.zero_grad(set_to_none=True)

            fns["loss_" + name], fns["net_" + name] = loss_only, network
        tm = round_robin(fns, reps)
        # networks of the same shape (MDLM and GIDD+) share one timing: the mean of their medians
        net = {
            name: statistics.fmean(
                tm["net_" + other] for other in procs if procs[other].layout.rows == procs[name].layout.rows
            )
            for name in procs
        }
        mdlm = net["mdlm"] + tm["loss_mdlm"]
        for name in procs:
            res[f"train_proc_over_net_{name}_{prec}"] = tm["loss_" + name] / net[name]
            res[f"train_ratio_to_mdlm_{name}_{prec}"] = mdlm / (net[name] + tm["loss_" + name])
        ratios: dict[str, list[float]] = {name: [] for name in procs}
        for t in (0.9, 0.5, 0.1):
            fns = {}
            for name, proc in procs.items():
                net = nets[name].eval()
                zt = proc.sample_zt(x_sample, torch.full((8,), t), g)
                t_net = torch.full((1,), t)
                with torch.no_grad(), autocast():
                    logits = net(zt, t_net)

                def step(
                    proc: DiscreteProcess = proc,
                    zt: torch.Tensor = zt,
                    logits: torch.Tensor = logits,
                    t: float = t,
                ) -> None:
                    proc.reverse_step(logits, zt, t, t - 1 / 64, g, SamplingOptions())

                def forward(net: DiT = net, zt: torch.Tensor = zt, t_net: torch.Tensor = t_net) -> None:
                    with torch.no_grad(), autocast():
                        net(zt, t_net)

                fns["step_" + name], fns["fwd_" + name] = step, forward
            tm = round_robin(fns, reps)
            for name in procs:
                ratios[name].append((tm["fwd_" + name] + tm["step_" + name]) / tm["fwd_" + name])
        for name in procs:
            res[f"step_over_forward_{name}_{prec}"] = statistics.median(ratios[name])
    return res


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--vocab", type=int, default=50259, help="tokenizer ids incl. [MASK] and [PAD]")
    parser.add_argument("--clusters", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("var/bench/process_cost.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    res = measure(args.vocab, args.clusters, args.reps)
    print(f"{'family':8} {'prec':5} {'loss/net (train)':>17} {'tok/s vs MDLM':>14} {'step/forward':>13}")
    for prec in ("fp32", "bf16"):
        for name in ("mdlm", "gidd", "hdlm"):
            print(
                f"{name:8} {prec:5} {res[f'train_proc_over_net_{name}_{prec}']:17.3f} "
                f"{res[f'train_ratio_to_mdlm_{name}_{prec}']:14.3f} {res[f'step_over_forward_{name}_{prec}']:13.3f}"
            )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"config": vars(args) | {"out": str(args.out)}, "results": res}, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
