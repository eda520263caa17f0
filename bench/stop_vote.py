"""Cost of the SIGTERM stop vote per training step (`mmdlm.training.distributed.StopVote`).

Two gloo ranks (torch.multiprocessing, the env torchrun would set) run the real training step
(`Trainer._train_step`: forward, backward, gradient all-reduce, AdamW) of the `debug` mdlm config on the
bundled-corpus debug slice, in alternating blocks with and without `vote.agreed()` after each step (what
the loop does), so both see the same machine load. Reported: median seconds per step of each mode and
the ratio vote / baseline (1.00 = free). The vote runs on its own CPU gloo group, started after one step
and waited for after the next, so on a GPU it never waits on the device.

    python bench/stop_vote.py [--steps 20 --rounds 6 --out bench/results/stop_vote.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
import torch.multiprocessing as mp  # noqa: E402


def _rank(
    rank: int, world: int, port: int, dataset: str, root: str, steps: int, rounds: int, out: Any
) -> None:
    os.environ.update(
        RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world),
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
    )  # fmt: skip
    torch.set_num_threads(1)
    from mmdlm.training.debug import debug_train_config
    from mmdlm.training.distributed import StopVote, barrier, destroy
    from mmdlm.training.trainer import Trainer

    config = debug_train_config(
        "mdlm", dataset, Path(root) / "run", overrides={"steps": 10**6, "data": {"batch_size": 4}}
    )
    trainer = Trainer(config)
    vote = StopVote()
    times: dict[str, list[float]] = {"baseline": [], "vote": []}
    for block in range(rounds + 1):  # block 0 warms up
        for mode in ("baseline", "vote") if block % 2 else ("vote", "baseline"):
            barrier()
            start = time.perf_counter()
            for _ in range(steps):
                trainer._train_step([next(trainer.train_loader)])
                if mode == "vote":
                    vote.agreed()
            if block:
                times[mode].append((time.perf_counter() - start) / steps)
    vote.close()
    if rank == 0:
        out.put(times)
    destroy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20, help="steps per block")
    parser.add_argument("--rounds", type=int, default=6, help="timed blocks per mode")
    parser.add_argument("--out", default="bench/results/stop_vote.json")
    args = parser.parse_args()

    from mmdlm.training.debug import prepare_debug_dataset

    with tempfile.TemporaryDirectory() as tmp:
        dataset = prepare_debug_dataset(Path(tempfile.gettempdir()) / "mmdlm-bench-datasets")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        ctx = mp.get_context("spawn")
        queue = ctx.SimpleQueue()
        procs = [
            ctx.Process(target=_rank, args=(r, 2, port, str(dataset), tmp, args.steps, args.rounds, queue))
            for r in range(2)
        ]
        for p in procs:
            p.start()
        times = queue.get()
        for p in procs:
            p.join()
    base = statistics.median(times["baseline"])
    vote = statistics.median(times["vote"])
    print(f"{'mode':<10} {'median s/step':>14} {'ratio':>7}")
    print(f"{'baseline':<10} {base:>14.5f} {1.0:>7.3f}")
    print(f"{'vote':<10} {vote:>14.5f} {vote / base:>7.3f}")
    result = {
        "bench": "stop_vote", "ranks": 2, "backend": "gloo", "config": "debug mdlm, batch 4",
        "steps_per_block": args.steps, "rounds": args.rounds, "median_s_per_step": {"baseline": base, "vote": vote},
        "ratio_vote_over_baseline": vote / base, "blocks": times, "machine": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(), "torch": torch.__version__,
    }  # fmt: skip
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written {out}")


if __name__ == "__main__":
    main()
