"""Sampler service benchmark: tokens/s and p50/p99 latency of POST /v1/generate at 1, 4 and 16 concurrent
clients, with request batching on and off (MMDLM_SAMPLER_BATCHING), in the same run on the same model.

Two real sampler processes (`mmdlm serve-sampler`, as deployed; batching off and on, measured in
alternating cells so that drift of a shared machine hits both alike) serve an MDLM of each `--presets` size (random
weights: speed does not depend on them) stored as a `model` artifact of an embedded platform. Clients are asyncio
tasks of this process in a closed loop (the next request as soon as the answer arrives), each request one
sample of `--seq-len` tokens in `--steps` steps with its own seed, for `--duration` seconds per cell.
Batching shares one network call per step among the requests that arrive together; without it they queue
one by one. Target: batching gives >= 2x the tokens/s of no batching at 16 clients. The clients share the
CPU with the server here, so absolute numbers understate a dedicated machine.

    python bench/serve.py                                  # 1/4/16 clients, both modes, 8 s per cell
    python bench/serve.py --clients 1 16 --duration 4 --rounds 3 --presets cpu-nano
What batching can gain depends on how far a batch of one is from saturating the hardware: `cpu-nano` is
overhead-bound at batch 1 (like most models on a GPU), `cpu-micro` already computes at close to the CPU's
rate for one 64-token row, so sharing its network calls saves less.
Results: a table and bench/results/serve.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import httpx  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.integration.sampler.helpers import publish_folder, sampler_process  # noqa: E402
from tests.utils.harness import Backend, Platform  # noqa: E402
from tests.utils.servers import free_port  # noqa: E402


def _args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--clients", nargs="+", type=int, default=[1, 4, 16])
    p.add_argument("--duration", type=float, default=8.0, help="seconds per (mode, clients) cell")
    p.add_argument("--rounds", type=int, default=1, help="alternating off/on rounds per cell (median)")
    p.add_argument("--steps", type=int, default=32)
    p.add_argument("--seq-len", type=int, default=64)
    p.add_argument("--presets", nargs="+", default=["cpu-nano", "cpu-micro"], help="DiT size presets")
    p.add_argument(
        "--threads", type=int, default=1, help="torch threads per sampler (the clients share the CPU)"
    )
    p.add_argument("--window-ms", type=float, default=5.0, help="MMDLM_SAMPLER_BATCH_WINDOW_MS")
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "serve.json")
    return p.parse_args()


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def build_model(root: Path, preset: str, seq_len: int) -> Path:
    """A randomly initialised MDLM saved as a `model` folder with a real (BPE) tokenizer."""
    from mmdlm.config.model import MDLMSpec
    from mmdlm.data.tokens import TokenDataset
    from mmdlm.families import get_family
    from mmdlm.pipeline import save_model_folder
    from mmdlm.training.debug import prepare_debug_dataset

    dataset = prepare_debug_dataset(root / "data", seq_len=seq_len, vocab_size=1024, documents_per_part=40)
    ds = TokenDataset.open(dataset, verify=False)
    spec = MDLMSpec.model_validate({"family": "mdlm", "model": {"preset": preset, "max_seq_len": seq_len}})
    built = get_family("mdlm").build(spec, ds.vocab)
    return save_model_folder(
        root / "model", spec=spec, vocab=ds.vocab, state_dict=built.model.state_dict(),
        tokenizer_dir=dataset / ds.manifest.tokenizer.dir, trained={"step": 0, "seq_len": seq_len},
    )  # fmt: skip


async def _cell(url: str, token: str, body: dict[str, Any], clients: int, duration: float) -> dict[str, Any]:
    latencies: list[float] = []
    tokens = 0
    batch_sizes: list[int] = []
    errors = 0
    stop_at = time.perf_counter() + duration

    async def client(index: int, http: httpx.AsyncClient) -> None:
        nonlocal tokens, errors
        seed = index * 1_000_000
        while time.perf_counter() < stop_at:
            seed += 1
            start = time.perf_counter()
            response = await http.post("/v1/generate", json={**body, "seed": seed})
            if response.status_code != 200:
                errors += 1
                continue
            latencies.append(time.perf_counter() - start)
            out = response.json()
            tokens += out["tokens"]
            batch_sizes.append(out["batch_requests"])

    headers = {"Authorization": f"Bearer {token}"}
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=300, limits=limits) as http:
        begin = time.perf_counter()
        await asyncio.gather(*(client(i, http) for i in range(clients)))
        wall = time.perf_counter() - begin
    return {
        "clients": clients,
        "requests": len(latencies),
        "errors": errors,
        "tokens_per_s": tokens / wall,
        "requests_per_s": len(latencies) / wall,
        "p50_ms": 1000 * statistics.median(latencies) if latencies else None,
        "p99_ms": 1000 * _percentile(latencies, 0.99) if latencies else None,
        "mean_batch_requests": statistics.fmean(batch_sizes) if batch_sizes else None,
        "wall_s": wall,
    }


def run_preset(args: argparse.Namespace, preset: str, root: Path) -> list[dict[str, Any]]:
    """Both servers (batching off / on) of one model; cells alternate between them."""
    rows: list[dict[str, Any]] = []
    model_dir = build_model(root, preset, args.seq_len)
    backend = Backend("embedded", {"MMDLM_HOME": str(root / "home")})
    with Platform(backend, root / "platform", workers_queues=[], env={"MMDLM_TOKEN_CACHE_S": "60"}) as p:
        model = publish_folder(p, model_dir, kind="model", metadata={"family": "mdlm"})
        body = {"model": model, "num_samples": 1, "steps": args.steps, "seq_len": args.seq_len}
        with ExitStack() as stack:
            urls = {}
            for batching in (False, True):
                port = free_port()
                env = {
                    "MMDLM_SAMPLER_BATCHING": str(batching).lower(), "MMDLM_SAMPLER_THREADS": str(args.threads),
                    "MMDLM_SAMPLER_BATCH_WINDOW_MS": str(args.window_ms), "MMDLM_SAMPLER_DEVICE": "cpu",
                    "MMDLM_SAMPLER_MAX_BATCH_ROWS": "64", "MMDLM_LOG_LEVEL": "WARNING",
                }  # fmt: skip
                stack.enter_context(sampler_process(p, port, env=env))
                urls[batching] = f"http://127.0.0.1:{port}"
                httpx.post(f"{urls[batching]}/v1/generate", json={**body, "seed": 0},
                           headers={"Authorization": f"Bearer {p.token}"}, timeout=120).raise_for_status()  # fmt: skip
            for clients in args.clients:
                cells: dict[bool, list[dict[str, Any]]] = {False: [], True: []}
                for _ in range(args.rounds):
                    for batching in (False, True):
                        cells[batching].append(
                            asyncio.run(_cell(urls[batching], p.token, body, clients, args.duration))
                        )
                for batching in (False, True):
                    median = statistics.median(c["tokens_per_s"] for c in cells[batching])
                    row = min(
                        cells[batching], key=lambda r: abs(r["tokens_per_s"] - median)
                    )  # the median round
                    rows.append({**row, "preset": preset, "batching": batching, "rounds": args.rounds})
                    print(
                        f"{preset:<10} batching={'on ' if batching else 'off'} clients={clients:>3}  "
                        f"{row['tokens_per_s']:8.0f} tokens/s  p50 {row['p50_ms']:7.1f} ms  "
                        f"p99 {row['p99_ms']:7.1f} ms  mean batch {row['mean_batch_requests']:.1f}",
                        flush=True,
                    )
    return rows


def main() -> None:
    args = _args()
    rows: list[dict[str, Any]] = []
    for preset in args.presets:
        with tempfile.TemporaryDirectory(prefix="mmdlm-bench-serve-") as tmp:
            rows += run_preset(args, preset, Path(tmp))
    by = {(r["preset"], r["batching"], r["clients"]): r for r in rows}
    speedups = {
        f"{preset}/{c}": by[(preset, True, c)]["tokens_per_s"] / by[(preset, False, c)]["tokens_per_s"]
        for preset in args.presets
        for c in args.clients
    }
    print()
    header = (f"{'preset':<10} {'clients':>7} | {'off tok/s':>9} {'p50':>9} {'p99':>9} | {'on tok/s':>9} "
              f"{'p50':>9} {'p99':>9} | speedup")  # fmt: skip
    print(header)
    print("-" * len(header))
    for preset in args.presets:
        for c in args.clients:
            off, on = by[(preset, False, c)], by[(preset, True, c)]
            print(
                f"{preset:<10} {c:>7} | {off['tokens_per_s']:9.0f} {off['p50_ms']:7.1f}ms {off['p99_ms']:7.1f}ms | "
                f"{on['tokens_per_s']:9.0f} {on['p50_ms']:7.1f}ms {on['p99_ms']:7.1f}ms | {speedups[f'{preset}/{c}']:.2f}x"
            )
    target = max(args.clients)
    met = {preset: speedups[f"{preset}/{target}"] >= 2.0 for preset in args.presets}
    for preset in args.presets:
        print(
            f"{preset}: batching speedup at {target} clients {speedups[f'{preset}/{target}']:.2f}x (target >= 2x)"
        )
    result = {
        "benchmark": "serve",
        "machine": {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count()},
        "settings": {"presets": args.presets, "steps": args.steps, "seq_len": args.seq_len, "samples_per_request": 1,
                     "threads": args.threads, "window_ms": args.window_ms, "duration_s": args.duration,
                     "rounds": args.rounds, "model": "mdlm, random weights",
                     "load": "closed loop, one keep-alive connection per client"},
        "rows": rows,
        "speedup": speedups,
        "target": {"clients": target, "min_speedup": 2.0, "met": met},
    }  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
