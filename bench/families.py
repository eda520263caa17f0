"""Every family at the cost of its network (issue 12): training, sampling and AR generation in ONE run.

Config (defaults; the issue's table): DiT hidden 256, 4 heads, 4 blocks, GPT-2 vocabulary (50,257 + PAD + MASK),
seq 128; training batch 16; sampling 8 x 128 with 64 reverse steps; 2 threads. Families: mdlm, gidd (GIDD+,
p_uniform 0.1, dynamic weights), hdlm (64 random clusters: cost does not depend on which tokens share one),
ar (the Llama-shaped causal transformer of the same width/depth). Weights are random; throughput does not
depend on them (the adaLN-zero layers are filled with noise so samplers see non-uniform predictions).

Measured, alternating the cells inside each repeat round (a shared machine's load drifts), medians:
  training   tokens/s of one optimizer step (forward + backward + token rescale/clip + fused AdamW, as
             `Trainer._train_step`), fp32 and bf16 autocast, compile off and on (`torch.compile` of the
             network and the fused loss kernels, as `TrainConfig.compile`); compile time = first compiled
             step - median step.
             Share of peak = model FLOP/s (mmdlm.training.flops: hooked nn.Linear FLOPs x 3 + attention) /
             the FLOP/s of an n x n x n matmul at the same precision timed in every round (best round kept).
  sampling   tokens/s of `family.generate` (8 rows x 128, 64 steps; AR: 128 KV-cached decode calls) and
             step cost / one network forward = (elapsed / network calls) / median time of one forward on
             the sampler's own inputs (captured from its first call), compile off and on (SampleConfig.compile).
  AR vs HF   `sample_ar` with the KV cache vs Hugging Face `LlamaForCausalLM.generate` (weights copied by
             mmdlm.models.ar.to_hf_llama, KV cache, plain sampling, PAD/MASK suppressed), both drawing in
             float32 (HF's precision); mmdlm's float64 default draw is reported as `ar` in the sampling row.
  memory     CPU: peak RSS during the cell minus RSS before it (VmHWM after resetting it through
             /proc/self/clear_refs; ru_maxrss cannot be reset and tracemalloc does not see torch's allocator);
             CUDA: torch.cuda.max_memory_allocated after reset_peak_memory_stats.

    python bench/families.py [--quick] [--families mdlm,gidd,hdlm,ar] [--out var/bench/families.json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import Tensor, nn  # noqa: E402

import mmdlm  # noqa: E402
from mmdlm.config.sample import SampleConfig  # noqa: E402
from mmdlm.config.train import OptimizerSection  # noqa: E402
from mmdlm.data.vocab import VocabInfo  # noqa: E402
from mmdlm.diffusion.fused import compiled_kernels  # noqa: E402
from mmdlm.families import Built, get_family  # noqa: E402
from mmdlm.precision import has_fast_bf16  # noqa: E402
from mmdlm.training.flops import matmul_peak_flops, sync, train_step_flops  # noqa: E402
from mmdlm.training.optim import build_optimizer  # noqa: E402

FAMILIES = ("mdlm", "gidd", "hdlm", "ar")
PRECISIONS = ("fp32", "bf16")
COMPILE = (False, True)


# --- timing and memory -----------------------------------------------------------------------------------


class PeakMemory:
    """Peak memory of one cell: CUDA allocator peak, or peak RSS above the RSS before the cell on Linux."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.kind = "cuda max_memory_allocated" if device.type == "cuda" else "rss peak - rss before (VmHWM)"
        self.mb: float | None = None

    @staticmethod
    def _status(field: str) -> float:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return float(line.split()[1]) / 1024  # kB -> MiB
        raise KeyError(field)

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            try:
                Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
                self.before = self._status("VmRSS")
            except OSError:
                self.before = None
        return self

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            self.mb = torch.cuda.max_memory_allocated(self.device) / 2**20
        elif self.before is not None:
            self.mb = self._status("VmHWM") - self.before


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


# --- building ------------------------------------------------------------------------------------------------


def gpt2_like_vocab(size: int) -> VocabInfo:
    """GPT-2's layout: EOT (BOS/EOS) is the last base id, then PAD and MASK are added: V = size + 2."""
    return VocabInfo(vocab_size=size + 2, pad_id=size, mask_id=size + 1, bos_id=size - 1, eos_id=size - 1)


def build(
    family: str, args: argparse.Namespace, vocab: VocabInfo, workdir: Path, device: torch.device
) -> Built:
    model = {"hidden_size": args.hidden, "n_heads": args.heads, "n_blocks": args.blocks,
             "max_seq_len": args.seq_len}  # fmt: skip
    spec: Any
    if family == "ar":
        from mmdlm.config.ar import ARSpec

        spec = ARSpec.model_validate({"family": "ar", "model": model})
    else:
        spec = {"family": family, "model": {**model, "cond_dim": 128}}
        if family == "gidd":
            spec["process"] = {"p_uniform": 0.1, "loss_weighting": "dynamic", "min_loss_weight": 0.0,
                               "max_loss_weight": 2.0}  # fmt: skip
        if family == "hdlm":
            from mmdlm.clusters import compute_clusters

            emb = np.random.default_rng(0).normal(size=(vocab.vocab_size, 8)).astype(np.float32)
            clusters = compute_clusters(
                emb, args.clusters, source={"kind": "random"}, exclude_ids=[vocab.mask_id], max_iters=2
            )
            spec["clusters"] = str(clusters.save(workdir / "clusters"))
    torch.manual_seed(0)
    built = get_family(family).build(spec, vocab)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # adaLN-zero / zero-init layers -> noise, so predictions are not uniform
        for p in built.model.parameters():
            if torch.count_nonzero(p) == 0:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    built.model.to(device)
    return built


# --- cells -----------------------------------------------------------------------------------------------------


class TrainCell:
    """One family's training step; fp32/bf16 and compile off/on share the module and the optimizer."""

    def __init__(self, built: Built, batch: dict[str, Tensor], device: torch.device) -> None:
        self.model = built.model
        self.objective = built.objective
        self.batch = batch
        self.device = device
        self.optimizer = build_optimizer(self.model, OptimizerSection())
        self.compiled: nn.Module | None = None
        self.generator = torch.Generator(device).manual_seed(0)

    def net(self, compile_: bool) -> nn.Module:
        if not compile_:
            return self.model
        if self.compiled is None:
            self.compiled = torch.compile(self.model)
        return self.compiled

    def step(self, precision: str, compile_: bool) -> float:
        """Seconds of one optimizer step (forward, backward, rescale + clip, fused AdamW)."""
        net = self.net(compile_)
        self.model.train()
        sync(self.device)
        t0 = time.perf_counter()
        with autocast(self.device, precision), compiled_kernels(compile_):  # as the trainer does
            out = self.objective(net, self.batch, self.generator)
        n = out.num_tokens if out.num_tokens is not None else torch.tensor(self.batch["input_ids"].numel())
        (out.loss * n).backward()
        grads = [p.grad for p in self.model.parameters() if p.grad is not None]
        scale = (1.0 / n.clamp_min(1)).float()
        norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads))) * scale
        torch._foreach_mul_(grads, scale * (1.0 / (norm + 1e-6)).clamp(max=1.0))
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        norm.item()
        sync(self.device)
        return time.perf_counter() - t0


class Capture:
    """The positional/keyword inputs of a module's first forward call (to time one network forward alone)."""

    def __init__(self, module: nn.Module) -> None:
        self.inputs: tuple[tuple, dict] | None = None
        self.handle = module.register_forward_pre_hook(self._hook, with_kwargs=True)

    def _hook(self, _m: nn.Module, args: tuple, kwargs: dict) -> None:
        if self.inputs is None:
            self.inputs = (tuple(a.clone() if isinstance(a, Tensor) else a for a in args), dict(kwargs))

    def remove(self) -> None:
        self.handle.remove()


def to_hf_generate(
    model: nn.Module, vocab: VocabInfo, length: int
) -> Callable[[int, torch.Generator], Tensor]:
    """Hugging Face `generate` on the same weights: plain sampling with the KV cache, PAD/MASK suppressed."""
    from transformers import GenerationConfig

    from mmdlm.models.ar import to_hf_llama

    hf = to_hf_llama(model)  # type: ignore[arg-type]
    config = GenerationConfig(
        do_sample=True, top_k=0, top_p=1.0, temperature=1.0, use_cache=True, eos_token_id=None,
        bos_token_id=vocab.bos_id, pad_token_id=vocab.pad_id, suppress_tokens=[vocab.pad_id, vocab.mask_id],
        max_new_tokens=length, min_new_tokens=length,
    )  # fmt: skip
    device = next(model.parameters()).device

    def run(rows: int, generator: torch.Generator) -> Tensor:
        torch.manual_seed(int(torch.randint(0, 2**31, (1,), generator=generator)))  # HF samples globally
        start = torch.full((rows, 1), vocab.bos_id, dtype=torch.long, device=device)
        with torch.no_grad():
            out = hf.generate(start, generation_config=config)
        if out.shape != (rows, length + 1):
            raise RuntimeError(f"HF generate returned {tuple(out.shape)}, expected {(rows, length + 1)}")
        return out[:, 1:]

    return run


# --- the run ---------------------------------------------------------------------------------------------------


def median(xs: list[float]) -> float | None:
    return statistics.median(xs) if xs else None


def main(argv: list[str] | None = None) -> int:  # noqa: C901, PLR0912, PLR0915 - one linear protocol
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: 1 round, 2 sampling steps, short rows"
    )
    parser.add_argument("--families", default=",".join(FAMILIES))
    parser.add_argument("--precisions", default=",".join(PRECISIONS))
    parser.add_argument("--compile", default="off,on", help="compile settings to measure: off,on | off | on")
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--blocks", type=int, default=4)
    parser.add_argument(
        "--vocab", type=int, default=50257, help="base vocabulary (GPT-2); PAD and MASK added"
    )
    parser.add_argument("--clusters", type=int, default=64, help="HDLM cluster count")
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--train-batch", type=int, default=16)
    parser.add_argument("--sample-rows", type=int, default=8)
    parser.add_argument("--steps", type=int, default=64, help="reverse steps of the diffusion samplers")
    parser.add_argument(
        "--train-rounds", type=int, default=5, help="timed training steps per cell (alternated)"
    )
    parser.add_argument(
        "--sample-rounds", type=int, default=2, help="timed sampling runs per cell (alternated)"
    )
    parser.add_argument("--forward-repeats", type=int, default=5)
    parser.add_argument("--gemm-size", type=int, default=1024)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no-hf", action="store_true", help="skip the Hugging Face generate comparison")
    parser.add_argument(
        "--skip-train", action="store_true", help="sampling cells only (matmul peak still timed)"
    )
    parser.add_argument("--skip-sample", action="store_true", help="training cells only")
    parser.add_argument("--out", type=Path, default=Path("var/bench/families.json"))
    args = parser.parse_args(argv)
    if args.quick:
        args.train_rounds, args.sample_rounds, args.forward_repeats = 1, 1, 1
        args.steps = min(args.steps, 2)
        args.seq_len = min(args.seq_len, 16)
        args.gemm_size = min(args.gemm_size, 256)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    families = [f for f in args.families.split(",") if f]
    precisions = [p for p in args.precisions.split(",") if p]
    compiles = [c == "on" for c in args.compile.split(",") if c]
    vocab = gpt2_like_vocab(args.vocab)
    g = torch.Generator().manual_seed(0)
    batch = {
        "input_ids": torch.randint(0, args.vocab, (args.train_batch, args.seq_len), generator=g).to(device)
    }

    # training ------------------------------------------------------------------------------------------------
    peaks: dict[str, list[float]] = {p: [] for p in precisions}
    train: dict[tuple[str, str, bool], dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        built = {f: build(f, args, vocab, Path(tmp), device) for f in families}
    cells = {f: TrainCell(built[f], batch, device) for f in families}
    flops = {}
    keys = [] if args.skip_train else [(f, p, c) for f in families for p in precisions for c in compiles]
    for f in {k[0] for k in keys}:
        flops[f] = train_step_flops(built[f].model, built[f].objective, batch, args.hidden, args.blocks)
    for key in keys:  # warm-up: the first step of a cell (compile time when compiled)
        f, p, c = key
        with PeakMemory(device) as mem:
            first = cells[f].step(p, c)
        train[key] = {"first_step_s": first, "times": [], "peak_mb": mem.mb}
        print(f"train warm-up {f:5s} {p:4s} compile={'on' if c else 'off'}: {first:.2f} s", flush=True)
    for r in range(args.train_rounds if keys else 1):
        for p in precisions:
            peaks[p].append(
                matmul_peak_flops(torch.bfloat16 if p == "bf16" else torch.float32, args.gemm_size, 5, device)
            )
        order = keys if r % 2 == 0 else keys[::-1]
        for key in order:
            with PeakMemory(device) as mem:
                train[key]["times"].append(cells[key[0]].step(key[1], key[2]))
            if mem.mb is not None:
                train[key]["peak_mb"] = max(train[key]["peak_mb"] or 0.0, mem.mb)
    peak = {p: max(v) for p, v in peaks.items()}
    train_rows = []
    for (f, p, c), cell in train.items():
        step = statistics.median(cell["times"])
        tokens = args.train_batch * args.seq_len
        row = {
            "family": f, "precision": p, "compile": c, "step_s": step, "tokens_per_s": tokens / step,
            "compile_s": max(cell["first_step_s"] - step, 0.0) if c else None,
            "flops_per_step": flops[f], "flops_per_s": flops[f] / step,
            "share_of_matmul_peak": flops[f] / step / peak[p], "peak_memory_mb": cell["peak_mb"],
            "step_times_s": cell["times"],
        }  # fmt: skip
        train_rows.append(row)
    del cells

    # sampling --------------------------------------------------------------------------------------------------
    sample_rows: list[dict[str, Any]] = []
    diffusion = [f for f in families if f != "ar"]
    scfg = SampleConfig(num_samples=args.sample_rows, batch_size=args.sample_rows, seq_len=args.seq_len,
                        steps=args.steps, seed=0)  # fmt: skip
    sample: dict[tuple[str, str, bool], dict[str, Any]] = {}
    skeys: list[tuple[str, str, bool]] = [(f, p, c) for f in diffusion for p in precisions for c in compiles]
    if args.skip_sample:
        skeys = []
    elif "ar" in families:
        skeys += [(v, p, c) for v in ("ar", "ar-f32") for p in precisions for c in compiles]
        if not args.no_hf:
            skeys += [("hf-generate", p, False) for p in precisions]
            hf_run = to_hf_generate(built["ar"].model, vocab, args.seq_len)
    for m in built.values():
        m.model.eval()
    inputs: dict[str, tuple[tuple, dict]] = {}

    def run_sample(key: tuple[str, str, bool]) -> tuple[float, int]:
        name, p, c = key
        gen = torch.Generator().manual_seed(0)
        with autocast(device, p):
            if name == "hf-generate":
                sync(device)
                t0 = time.perf_counter()
                hf_run(args.sample_rows, gen)
                sync(device)
                return time.perf_counter() - t0, args.seq_len
            family = "ar" if name.startswith("ar") else name
            cfg = scfg.model_copy(update={"compile": c, "float64": name != "ar-f32"})
            capture = Capture(built[family].model) if name not in inputs and not c else None
            sync(device)
            t0 = time.perf_counter()
            out = get_family(family).generate(built[family], cfg, generator=gen)
            sync(device)
            elapsed = time.perf_counter() - t0
            if capture is not None:
                capture.remove()
                if capture.inputs is not None:
                    inputs[name] = capture.inputs
            return elapsed, out.nfe

    for key in skeys:
        with PeakMemory(device) as mem:
            first, _ = run_sample(key)
        sample[key] = {"first_s": first, "times": [], "nfe": None, "peak_mb": mem.mb}
        print(
            f"sample warm-up {key[0]:11s} {key[1]:4s} compile={'on' if key[2] else 'off'}: {first:.2f} s",
            flush=True,
        )
    for r in range(args.sample_rounds):
        for key in skeys if r % 2 == 0 else skeys[::-1]:
            with PeakMemory(device) as mem:
                elapsed, nfe = run_sample(key)
            sample[key]["times"].append(elapsed)
            sample[key]["nfe"] = nfe
            if mem.mb is not None:
                sample[key]["peak_mb"] = max(sample[key]["peak_mb"] or 0.0, mem.mb)

    # one network forward on the sampler's own inputs, compiled or not, same precision
    forward: dict[tuple[str, str, bool], float] = {}
    from mmdlm.sampling.generate import maybe_compile

    for f in diffusion:
        if f not in inputs:
            continue
        a, kw = inputs[f]
        for p in precisions:
            for c in compiles:
                net = maybe_compile(built[f].model, c)
                times = []
                with torch.no_grad(), autocast(device, p):
                    net(*a, **kw)
                    for _ in range(args.forward_repeats):
                        sync(device)
                        t0 = time.perf_counter()
                        net(*a, **kw)
                        sync(device)
                        times.append(time.perf_counter() - t0)
                forward[(f, p, c)] = statistics.median(times)

    tokens = args.sample_rows * args.seq_len
    for (name, p, c), cell in sample.items():
        elapsed = statistics.median(cell["times"])
        fwd = forward.get((name, p, c))
        nfe = cell["nfe"] or 1
        row = {
            "family": name, "precision": p, "compile": c, "seconds": elapsed, "tokens_per_s": tokens / elapsed,
            "network_calls": cell["nfe"], "step_s": elapsed / nfe, "forward_s": fwd,
            "step_cost_over_forward": (elapsed / nfe) / fwd if fwd else None,
            "compile_s": max(cell["first_s"] - elapsed, 0.0) if c else None,
            "peak_memory_mb": cell["peak_mb"], "times_s": cell["times"],
            "float64_draw": name not in ("ar-f32", "hf-generate"),
        }  # fmt: skip
        sample_rows.append(row)
    for row in sample_rows:
        if row["family"] in ("ar", "ar-f32"):
            hf = next(
                (
                    r
                    for r in sample_rows
                    if r["family"] == "hf-generate" and r["precision"] == row["precision"]
                ),
                None,
            )
            row["ratio_vs_hf_generate"] = row["tokens_per_s"] / hf["tokens_per_s"] if hf else None

    # report --------------------------------------------------------------------------------------------------
    result = {
        "benchmark": "families",
        "mmdlm_version": mmdlm.__version__,
        "torch": torch.__version__,
        "machine": platform.processor() or platform.machine(),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "threads": torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "native_bf16": has_fast_bf16(device.type),  # False: bf16 cells time PyTorch's slow fallback
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "vocab_size": vocab.vocab_size,
        "matmul_peak_flops": peak,
        "matmul_peak_rounds": peaks,
        "memory": PeakMemory(device).kind,
        "flop_formula": "3 x (forward nn.Linear FLOPs, hooked) + 3 x 4 B L^2 d n_blocks (attention)",
        "train": train_rows,
        "sample": sample_rows,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print_table(result, families, precisions, compiles)
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


def print_table(result: dict, families: list[str], precisions: list[str], compiles: list[bool]) -> None:
    """The issue's table: one column per family, fp32 / bf16 in each cell."""

    def cell(rows: list[dict], fam: str, field: str, fmt: str, compile_: bool = False) -> str:
        vals = []
        for p in precisions:
            r = next(
                (r for r in rows if r["family"] == fam and r["precision"] == p and r["compile"] == compile_),
                None,
            )
            v = r.get(field) if r else None
            vals.append("-" if v is None else format(v, fmt))
        return " / ".join(vals)

    train, sample = result["train"], result["sample"]
    a = result["args"]
    peak = result["matmul_peak_flops"]
    print()
    print(f"DiT/AR hidden {a['hidden']}, {a['blocks']} blocks, V={result['vocab_size']}, seq {a['seq_len']}; train "
          f"batch {a['train_batch']}; sampling {a['sample_rows']} x {a['seq_len']}, {a['steps']} steps; "
          f"{result['threads']} threads; {result['device']} ({result['cpu_capability']}, native bf16: "
          f"{result['native_bf16']})")  # fmt: skip
    print("matmul peak " + ", ".join(f"{p} {v / 1e9:.1f} GFLOP/s" for p, v in peak.items())
          + f" ({a['gemm_size']}^3); cells are " + " / ".join(precisions))  # fmt: skip
    print(f"memory: {result['memory']}")
    cols = families
    width = 24
    print(f"| {'':58s} | " + " | ".join(f"{c:{width}s}" for c in cols) + " |")
    print(f"|{'-' * 60}|" + "|".join("-" * (width + 2) for _ in cols) + "|")

    def line(label: str, values: list[str]) -> None:
        print(f"| {label:58s} | " + " | ".join(f"{v:{width}s}" for v in values) + " |")

    for c in compiles:
        tag = "compile on" if c else "compile off"
        line(f"training tok/s, {tag}", [cell(train, f, "tokens_per_s", ",.0f", c) for f in cols])
        line(
            f"training share of matmul peak, {tag}",
            [cell(train, f, "share_of_matmul_peak", ".1%", c) for f in cols],
        )
        line(f"training peak memory MiB, {tag}", [cell(train, f, "peak_memory_mb", ",.0f", c) for f in cols])
        if c:
            line("training compile time s", [cell(train, f, "compile_s", ".0f", c) for f in cols])
    for c in compiles:
        tag = "compile on" if c else "compile off"
        line(f"sampling tok/s, {tag}", [cell(sample, f, "tokens_per_s", ",.0f", c) for f in cols])
        line(f"sampling step cost / one network forward, {tag}",
             [cell(sample, f, "step_cost_over_forward", ".2f", c) for f in cols])  # fmt: skip
        line(f"sampling peak memory MiB, {tag}", [cell(sample, f, "peak_memory_mb", ",.0f", c) for f in cols])
        if c:
            line("sampling compile time s", [cell(sample, f, "compile_s", ".0f", c) for f in cols])
    if "ar" in families:
        blank = [""] * (len(cols) - 1)
        for c in compiles:
            tag = "compile on" if c else "compile off"
            line(
                f"AR gen KV cache tok/s, f32 draw, {tag}",
                blank + [cell(sample, "ar-f32", "tokens_per_s", ",.0f", c)],
            )
            line(f"AR gen ratio to HF generate (same model), {tag}",
                 blank + [cell(sample, "ar-f32", "ratio_vs_hf_generate", ".2f", c) + "x"])  # fmt: skip
        line("HF generate tok/s (KV cache)", blank + [cell(sample, "hf-generate", "tokens_per_s", ",.0f")])


if __name__ == "__main__":
    sys.exit(main())
