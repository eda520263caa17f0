"""Benchmark `prepare_dataset` on the full bundled corpus and `BatchLoader` on its output.

For each tokenizer (gpt2, bert-base-uncased, bpe-8192) at seq_len 128, one core:
  baseline  encode every document with the fast tokenizer, in memory, nothing written;
  prepare   the whole job (scan, split, [train BPE], encode, pack, write + hash shards, manifest).
The ratio prepare/baseline is the cost of everything around tokenization. Then the loader:
  baseline  fancy-index random rows straight from the memmapped shard;
  loader    BatchLoader(train split, 64) -> dicts of torch tensors.
Medians over --repeats runs. The corpus mixes Wikipedia leads, the KJV Bible and Shakespeare.

    python bench/prepare.py [--repeats 3] [--out bench/results/prepare.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import torch  # noqa: E402

import mmdlm  # noqa: E402
from mmdlm.config.data import PrepareDataConfig  # noqa: E402
from mmdlm.data import BatchLoader, TokenDataset, build_tokenizer, prepare_dataset  # noqa: E402
from mmdlm.data.corpus import open_corpus  # noqa: E402
from mmdlm.data.tokenizers import TextEncoder  # noqa: E402

TOKENIZERS = {
    "gpt2": {"type": "gpt2"},
    "bert-base-uncased": {"type": "bert-base-uncased"},
    "bpe-8192": {"type": "bpe", "vocab_size": 8192},
}


def _median_time(fn, repeats: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def bench_prepare(repeats: int, workdir: Path) -> list[dict]:
    texts = [doc.text for doc in open_corpus(PrepareDataConfig().source)]
    rows = []
    for name, tokenizer_spec in TOKENIZERS.items():
        config = PrepareDataConfig(tokenizer=tokenizer_spec, seq_len=128)
        base_tok = build_tokenizer(config.tokenizer, texts[:2000], 2000) if name.startswith("bpe") else None
        encoder = TextEncoder(base_tok or build_tokenizer(config.tokenizer))

        def encode_all(encoder=encoder) -> int:
            return sum(len(ids) for i in range(0, len(texts), 512) for ids in encoder(texts[i : i + 512]))

        baseline_s, tokens = _median_time(encode_all, repeats)
        runs = iter(range(repeats))

        def prepare(config=config, name=name, runs=runs) -> object:
            return prepare_dataset(config, workdir / f"{name}-{next(runs)}")

        prepare_s, manifest = _median_time(prepare, repeats)
        total_tokens = sum(s.tokens for s in manifest.splits.values())
        rows.append(
            {
                "tokenizer": name,
                "documents": sum(s.documents for s in manifest.splits.values()),
                "tokens": total_tokens,
                "rows": sum(s.rows for s in manifest.splits.values()),
                "baseline_encode_s": baseline_s,
                "prepare_s": prepare_s,
                "ratio_prepare_over_encode": prepare_s / baseline_s,
                "prepare_tokens_per_s": total_tokens / prepare_s,
                "baseline_tokens": tokens,
            }
        )
    return rows


def bench_loader(dataset_dir: Path, repeats: int, batches: int = 2000, batch_size: int = 64) -> dict:
    split = TokenDataset.open(dataset_dir, verify=False).split("train")
    shard = np.load(dataset_dir / "train" / "shard-00000.npy", mmap_mode="r")
    rng = np.random.default_rng(0)

    def raw() -> None:
        for _ in range(batches):
            torch.from_numpy(shard[rng.integers(0, len(shard), batch_size)].astype(np.int64))

    def loader() -> None:
        it = BatchLoader(split, batch_size, seed=0)
        for _ in range(batches):
            next(it)

    raw_s, _ = _median_time(raw, repeats)
    loader_s, _ = _median_time(loader, repeats)
    return {
        "batch_size": batch_size,
        "batches": batches,
        "baseline_raw_memmap_batches_per_s": batches / raw_s,
        "loader_batches_per_s": batches / loader_s,
        "ratio_loader_over_raw_time": loader_s / raw_s,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "prepare.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        prepare_rows = bench_prepare(args.repeats, Path(tmp))
        loader_row = bench_loader(Path(tmp) / "gpt2-0", args.repeats)
    print(
        f"prepare_dataset, full bundled corpus (wiki+KJV+Shakespeare), seq_len 128, median of {args.repeats}"
    )
    print(
        f"{'tokenizer':<20}{'docs':>8}{'tokens':>10}{'rows':>8}{'encode s':>10}{'prepare s':>11}{'ratio':>7}{'Mtok/s':>8}"
    )
    for r in prepare_rows:
        print(
            f"{r['tokenizer']:<20}{r['documents']:>8}{r['tokens']:>10}{r['rows']:>8}{r['baseline_encode_s']:>10.2f}"
            f"{r['prepare_s']:>11.2f}{r['ratio_prepare_over_encode']:>7.2f}{r['prepare_tokens_per_s'] / 1e6:>8.2f}"
        )
    print(
        f"BatchLoader (batch {loader_row['batch_size']}): {loader_row['loader_batches_per_s']:.0f} batches/s; "
        f"raw memmap gather {loader_row['baseline_raw_memmap_batches_per_s']:.0f}/s; "
        f"time ratio {loader_row['ratio_loader_over_raw_time']:.2f}"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    result = {
        "bench": "prepare",
        "mmdlm_version": mmdlm.__version__,
        "python": sys.version.split()[0],
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "repeats": args.repeats,
        "corpus": "bundled: Wikipedia leads + KJV Bible + Shakespeare (encyclopedic and Early Modern English)",
        "prepare": prepare_rows,
        "loader": loader_row,
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
