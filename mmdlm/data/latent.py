"""The `latent-dataset` artifact (format `mmdlm.latents/v1`): token rows + one sentence-embedding latent
per row + the row's text, built by `encode_dataset` and read by `LatentDataset` (docs/ARCHITECTURE.md).

    manifest.json                 format, encoder (name, model, revision, full recipe), dim, role,
                                  normalization (unit-norm flag + train-split mean/std), splits with
                                  shards and sha256 of every file, the source `dataset` reference, tokenizer
    tokenizer/                    copy of the source dataset's tokenizer
    train/shard-00000.tokens.npy  int32 (rows, seq_len), the source rows unchanged (PAD on the right)
    train/shard-00000.latents.npy float32 (rows, dim)
    train/shard-00000.texts.jsonl {"row": i, "text": ...} per row, the decoded text that was encoded
    train/shard-00000.json        shard record: files + sha256 + job fingerprint (written last)
    validation/...                the source's validation rows: split by document, inherited, never re-drawn

Work is cut into shards of `shard_rows` rows numbered over the train then validation split. Each shard
is a pure function of (source rows, encoder config), written to temporary names and renamed, and its
record is written last, so several workers can take disjoint `shard_range`s, a restarted worker skips
shards whose record verifies, and the manifest appears only once every shard is done.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field

import mmdlm
from mmdlm.config.data import FolderSource, PrepareDataConfig
from mmdlm.config.latent import EncodeConfig
from mmdlm.data.manifest import (
    DATASET_FORMAT,
    MANIFEST_NAME,
    FileEntry,
    SpecialTokens,
    TokenizerInfo,
    _Record,
    file_entry,
    sha256_file,
)
from mmdlm.data.vocab import VocabInfo

logger = logging.getLogger(__name__)

LATENT_FORMAT = "mmdlm.latents/v1"
JOB_NAME = "encode_job.json"
Progress = Callable[[int, int, str], None]
"""progress(done, total, phase): rows encoded so far out of the rows this call has to encode."""


# ---------------------------------------------------------------------------------------------- manifest


class LatentShardEntry(_Record):
    split: str
    index: int = Field(ge=0)
    row_start: int = Field(ge=0, description="first row of the split held by this shard")
    rows: int = Field(ge=0)
    tokens: FileEntry
    latents: FileEntry
    texts: FileEntry
    record: FileEntry | None = None


class LatentSplitInfo(_Record):
    rows: int = Field(ge=0)
    documents: int = Field(ge=0, description="documents of the source split (rows may cut documents)")
    shards: list[LatentShardEntry]


class LatentStats(_Record):
    """Per-dimension mean/std of the train latents; the objective standardises with them."""

    split: str = "train"
    count: int
    mean: list[float]
    std: list[float]
    mean_norm: float


class LatentNormalization(_Record):
    unit_norm: bool = Field(description="the encoder recipe L2-normalises every latent")
    stats: LatentStats


class LatentManifest(_Record):
    format: Literal["mmdlm.latents/v1"] = LATENT_FORMAT
    kind: Literal["latent-dataset"] = "latent-dataset"
    encoder: dict[str, Any]
    role: str
    dim: int
    dtype: Literal["float32"] = "float32"
    normalization: LatentNormalization
    unit: Literal["row"] = "row"
    source: dict[str, Any] = Field(description="the corpus, as the source dataset's manifest describes it")
    source_dataset: dict[str, Any] = Field(
        default_factory=dict, description="the `dataset` encoded: format, path, sha256"
    )
    tokenizer: TokenizerInfo
    special_tokens: SpecialTokens
    seq_len: int
    shard_rows: int
    splits: dict[str, LatentSplitInfo]
    config: dict[str, Any]
    extra_files: list[FileEntry] = Field(default_factory=list)
    mmdlm_version: str
    created_at: str

    @property
    def vocab(self) -> VocabInfo:
        s = self.special_tokens
        return VocabInfo(
            vocab_size=self.tokenizer.vocab_size, pad_id=s.pad, mask_id=s.mask, bos_id=s.bos, eos_id=s.eos
        )

    def files(self) -> list[FileEntry]:
        """Every file except manifest.json, with its checksum."""
        entries: list[FileEntry] = [*self.tokenizer.files, *self.extra_files]
        for split in self.splits.values():
            for shard in split.shards:
                entries.extend([shard.tokens, shard.latents, shard.texts])
                if shard.record is not None:
                    entries.append(shard.record)
        return entries

    def write(self, directory: Path) -> Path:
        path = directory / MANIFEST_NAME
        _atomic_write_text(path, json.dumps(self.model_dump(mode="json"), indent=2) + "\n")
        return path

    @classmethod
    def read(cls, directory: Path) -> LatentManifest:
        path = Path(directory) / MANIFEST_NAME
        if not path.is_file():
            if (Path(directory) / JOB_NAME).is_file():
                raise FileNotFoundError(
                    f"{directory}: encoding is not finished (no {MANIFEST_NAME} yet); run `mmdlm encode` "
                    "again to finish the missing shards"
                )
            raise FileNotFoundError(f"{directory}: no {MANIFEST_NAME}; is this a latent-dataset folder?")
        raw = json.loads(path.read_text(encoding="utf-8"))
        fmt = raw.get("format") if isinstance(raw, dict) else None
        if fmt != LATENT_FORMAT:
            raise ValueError(f"{path}: format {fmt!r} is not a latent dataset ({LATENT_FORMAT!r})")
        return cls.model_validate(raw)


def manifest_format(directory: str | Path) -> str | None:
    """The `format` field of `directory/manifest.json`, or None if there is no readable manifest."""
    path = Path(directory) / MANIFEST_NAME
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    return raw.get("format") if isinstance(raw, dict) else None


# ------------------------------------------------------------------------------------------------ reader


class LatentDataset:
    """A finished latent dataset: manifest, tokenizer, statistics and one `LatentSplit` per split."""

    def __init__(self, root: Path, manifest: LatentManifest) -> None:
        self.root = root
        self.manifest = manifest

    @classmethod
    def open(cls, directory: str | Path, verify: bool = True) -> LatentDataset:
        """Open a latent dataset; with `verify` every file's size and sha256 must match the manifest."""
        root = Path(directory)
        manifest = LatentManifest.read(root)
        for entry in manifest.files():
            _check_file(root, entry, verify)
        return cls(root, manifest)

    @property
    def vocab(self) -> VocabInfo:
        return self.manifest.vocab

    @property
    def seq_len(self) -> int:
        return self.manifest.seq_len

    @property
    def dim(self) -> int:
        return self.manifest.dim

    @property
    def encoder_name(self) -> str:
        return str(self.manifest.encoder.get("name"))

    @property
    def split_names(self) -> list[str]:
        return list(self.manifest.splits)

    def stats(self) -> tuple[np.ndarray, np.ndarray]:
        """(mean, std), float32 (dim,), fitted on the train split."""
        s = self.manifest.normalization.stats
        return np.asarray(s.mean, dtype=np.float32), np.asarray(s.std, dtype=np.float32)

    def tokenizer(self) -> Any:
        from mmdlm.data.tokenizers import load_tokenizer

        return load_tokenizer(self.root / self.manifest.tokenizer.dir)

    def split(self, name: str) -> LatentSplit:
        if name not in self.manifest.splits:
            raise KeyError(f"latent dataset {self.root} has no split {name!r}; splits: {self.split_names}")
        return LatentSplit(self.root, self.manifest, name)

    def describe(self) -> dict[str, Any]:
        """What evaluation results record about the data they were computed on."""
        return {
            "path": str(self.root),
            "format": LATENT_FORMAT,
            "encoder": {k: self.manifest.encoder.get(k) for k in ("name", "model", "revision", "dim")},
            "role": self.manifest.role,
            "seq_len": self.seq_len,
            "source": self.manifest.source,
        }

    def __repr__(self) -> str:
        rows = {name: info.rows for name, info in self.manifest.splits.items()}
        return f"LatentDataset({str(self.root)!r}, encoder={self.encoder_name}, dim={self.dim}, rows={rows})"


class LatentSplit:
    """Rows `{"input_ids": int64 (L,), "attention_mask": bool (L,), "latent": float32 (D,)}`; the
    `BatchLoader` reads it through `get_batch(indices)` (arrays (B, L), (B, L), (B, D))."""

    def __init__(self, root: Path, manifest: LatentManifest, name: str) -> None:
        self.name = name
        self.root = root
        self.pad_id = manifest.special_tokens.pad
        self.seq_len = manifest.seq_len
        self.dim = manifest.dim
        info = manifest.splits[name]
        self.num_documents = info.documents
        self._shards = info.shards
        self._offsets = np.concatenate([[0], np.cumsum([s.rows for s in info.shards], dtype=np.int64)])

    @cached_property
    def _arrays(self) -> list[tuple[np.ndarray, np.ndarray]]:
        arrays = []
        for shard in self._shards:
            tokens = np.load(self.root / shard.tokens.path, mmap_mode="r", allow_pickle=False)
            latents = np.load(self.root / shard.latents.path, mmap_mode="r", allow_pickle=False)
            if tokens.shape != (shard.rows, self.seq_len) or latents.shape != (shard.rows, self.dim):
                raise ValueError(f"{self.root}: shard {shard.index} of {self.name} has unexpected shapes")
            arrays.append((tokens, latents))
        return arrays

    def __len__(self) -> int:
        return int(self._offsets[-1])

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"row {index} out of range for split {self.name!r} with {n} rows")
        return {k: v[0] for k, v in self.get_batch([index % n]).items()}

    def get_batch(self, indices: Sequence[int] | np.ndarray) -> dict[str, np.ndarray]:
        indices = np.asarray(indices, dtype=np.int64)
        if indices.size and (indices.min() < 0 or indices.max() >= len(self)):
            raise IndexError(f"batch indices out of range for split {self.name!r} with {len(self)} rows")
        tokens = np.empty((len(indices), self.seq_len), dtype=np.int64)
        latents = np.empty((len(indices), self.dim), dtype=np.float32)
        shard_of = np.searchsorted(self._offsets, indices, side="right") - 1
        for shard in np.unique(shard_of):
            where = shard_of == shard
            local = indices[where] - self._offsets[shard]
            tok, lat = self._arrays[shard]
            tokens[where] = tok[local]
            latents[where] = lat[local]
        return {"input_ids": tokens, "attention_mask": tokens != self.pad_id, "latent": latents}

    def latents(self) -> np.ndarray:
        """All latents of the split, (rows, dim) float32."""
        if not self._arrays:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.concatenate([np.asarray(lat) for _, lat in self._arrays])

    def texts(self, indices: Sequence[int] | np.ndarray | None = None) -> list[str]:
        """The encoded texts of rows `indices` (all rows when None)."""
        every = self._all_texts
        if indices is None:
            return list(every)
        return [every[int(i)] for i in indices]

    @cached_property
    def _all_texts(self) -> list[str]:
        texts: list[str] = []
        for shard in self._shards:
            with (self.root / shard.texts.path).open(encoding="utf-8") as handle:
                texts.extend(json.loads(line)["text"] for line in handle)
        return texts


# ------------------------------------------------------------------------------------------------ writer


@dataclass(frozen=True)
class ShardPlan:
    split: str
    index: int
    row_start: int
    row_stop: int

    @property
    def stem(self) -> str:
        return f"{self.split}/shard-{self.index:05d}"


@dataclass
class EncodeResult:
    """What one `encode_dataset` call did; `manifest` is set once every shard of the job is done."""

    out_dir: Path
    shards_total: int
    shards_encoded: list[int]
    shards_skipped: list[int]
    manifest: LatentManifest | None


def plan_shards(split_rows: dict[str, int], shard_rows: int) -> list[ShardPlan]:
    """Shards of `shard_rows` rows over train then validation; their global order defines `shard_range`."""
    plan: list[ShardPlan] = []
    for split in ("train", "validation"):
        rows = split_rows.get(split, 0)
        for index, start in enumerate(range(0, rows, shard_rows)):
            plan.append(ShardPlan(split, index, start, min(start + shard_rows, rows)))
    return plan


def worker_shard_range(num_shards: int, rank: int, world_size: int) -> tuple[int, int]:
    """Contiguous block of shards for worker `rank` of `world_size`: floor(N / W) each, the last worker
    also takes the remainder (spec §8; N = 10, W = 3 -> [0, 3), [3, 6), [6, 10))."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, world_size), got rank={rank} world_size={world_size}")
    per = num_shards // world_size
    start = rank * per
    return start, num_shards if rank == world_size - 1 else start + per


def encode_dataset(
    config: EncodeConfig,
    source_dir: str | Path,
    out_dir: str | Path,
    progress: Progress | None = None,
    shard_range: tuple[int, int] | None = None,
    encoder: Any | None = None,
) -> EncodeResult:
    """Encode a `dataset` artifact (or a text folder, prepared first) into the latent dataset `out_dir`.

    shard_range: (start, stop) over the global shard list (`plan_shards`); None = every shard. Shards whose
    record already verifies are skipped, so the call is idempotent and resumable. The manifest is written
    (and returned) when the whole job is complete. `encoder` may pass an already loaded encoder.
    """
    from mmdlm.data.tokens import TokenDataset

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    source_path = _resolve_source(config, Path(source_dir), out)
    source = TokenDataset.open(source_path, verify=True)
    caps = {"train": config.max_rows, "validation": config.max_validation_rows or config.max_rows}
    chosen = {name: select_rows(len(source.split(name)), caps[name]) for name in ("train", "validation")}
    plan = plan_shards({name: len(rows) for name, rows in chosen.items()}, config.shard_rows)
    fingerprint = _job_fingerprint(config, source_path)
    _claim_job(out, fingerprint)
    _copy_tokenizer(source_path / source.manifest.tokenizer.dir, out / "tokenizer")

    selected = plan if shard_range is None else plan[slice(*shard_range)]
    if shard_range is not None and (
        shard_range[0] < 0 or shard_range[1] > len(plan) or shard_range[0] >= shard_range[1]
    ):
        raise ValueError(f"shard_range {shard_range} is outside the job's {len(plan)} shards")
    todo = [s for s in selected if not _shard_done(out, s, fingerprint)]
    skipped = [plan.index(s) for s in selected if s not in todo]
    total_rows = sum(s.row_stop - s.row_start for s in todo)
    report = progress or (lambda done, total, phase: None)
    if todo:
        from mmdlm.encoders import load_encoder

        enc = encoder or load_encoder(config.encoder)
        info_path = out / "encoder.json"
        if not info_path.is_file():
            _atomic_write_text(info_path, json.dumps(enc.describe(), indent=2, sort_keys=True) + "\n")
        tokenizer = source.tokenizer()
        done = 0
        report(0, total_rows, "encoding")
        for shard in todo:
            _encode_shard(
                out,
                shard,
                chosen[shard.split],
                source.split(shard.split),
                tokenizer,
                enc,
                config,
                fingerprint,
            )
            done += shard.row_stop - shard.row_start
            report(done, total_rows, "encoding")
    manifest = None
    if all(_shard_done(out, s, fingerprint, verify=False) for s in plan):
        manifest = _finalize(out, plan, source, source_path, config, fingerprint)
        report(total_rows, total_rows, "done")
    return EncodeResult(out, len(plan), [plan.index(s) for s in todo], skipped, manifest)


def select_rows(rows: int, cap: int | None) -> np.ndarray:
    """Source rows a split encodes: all, or `cap` rows spread evenly over the split (so a capped quick
    run still sees every part of a source that is stored part after part)."""
    if cap is None or cap >= rows:
        return np.arange(rows, dtype=np.int64)
    return np.unique(np.linspace(0, rows - 1, cap).round().astype(np.int64))


def _resolve_source(config: EncodeConfig, source_dir: Path, out: Path) -> Path:
    """A `dataset` folder as is; a text folder is prepared (packing `pad`) into `out/source` once."""
    fmt = manifest_format(source_dir)
    if fmt == DATASET_FORMAT:
        return source_dir
    if fmt is not None:
        raise ValueError(f"{source_dir}: manifest format {fmt!r} is not a token dataset ({DATASET_FORMAT!r})")
    if not source_dir.is_dir():
        raise ValueError(f"source {source_dir} is neither a dataset folder nor a folder of .txt/.jsonl files")
    prepared = out / "source"
    if manifest_format(prepared) != DATASET_FORMAT:
        from mmdlm.data.prepare import prepare_dataset

        shutil.rmtree(prepared, ignore_errors=True)
        prepare_dataset(
            PrepareDataConfig(
                source=FolderSource(path=str(source_dir)),
                tokenizer=config.tokenizer,
                seq_len=config.seq_len,
                packing="pad",
                validation_fraction=config.validation_fraction,
                max_documents=config.max_documents,
                seed=config.seed,
            ),
            prepared,
        )
    return prepared


def _job_fingerprint(config: EncodeConfig, source_path: Path) -> dict[str, Any]:
    """What makes shard outputs what they are: the source bytes and the encoding config."""
    relevant = config.model_dump(mode="json")
    relevant["encoder"].pop("batch_size", None)  # batching never changes a row's vector beyond float noise
    relevant["encoder"].pop("device", None)
    return {"source_manifest_sha256": sha256_file(source_path / MANIFEST_NAME), "config": relevant}


def _fingerprint_id(fingerprint: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()


def _claim_job(out: Path, fingerprint: dict[str, Any]) -> None:
    path = out / JOB_NAME
    if path.is_file():
        existing = json.loads(path.read_text(encoding="utf-8"))
        if _fingerprint_id(existing) != _fingerprint_id(fingerprint):
            raise ValueError(
                f"{out} holds an encode job with a different source or config; use a new output folder "
                f"(existing: {json.dumps(existing['config']['encoder'])})"
            )
        return
    _atomic_write_text(path, json.dumps(fingerprint, indent=2, sort_keys=True) + "\n")


def _copy_tokenizer(src: Path, dst: Path) -> None:
    if dst.is_dir():
        return
    tmp = dst.with_name(f".{dst.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp)
    try:
        tmp.rename(dst)
    except OSError:  # another worker won the race; its copy is identical
        shutil.rmtree(tmp, ignore_errors=True)


def _record_path(out: Path, shard: ShardPlan) -> Path:
    return out / f"{shard.stem}.json"


def _shard_done(out: Path, shard: ShardPlan, fingerprint: dict[str, Any], verify: bool = True) -> bool:
    """True when the shard's record exists, belongs to this job and (with verify) its files match."""
    path = _record_path(out, shard)
    if not path.is_file():
        return False
    record = json.loads(path.read_text(encoding="utf-8"))
    if record.get("job") != _fingerprint_id(fingerprint) or record.get("row_start") != shard.row_start:
        return False
    if record.get("rows") != shard.row_stop - shard.row_start:
        return False
    for key in ("tokens", "latents", "texts"):
        entry = FileEntry.model_validate(record[key])
        target = out / entry.path
        if not target.is_file() or target.stat().st_size != entry.bytes:
            return False
        if verify and sha256_file(target) != entry.sha256:
            logger.warning(
                "shard %s: %s does not match its record; encoding it again", shard.stem, entry.path
            )
            return False
    return True


def _decode_rows(tokenizer: Any, rows: np.ndarray, pad_id: int) -> list[str]:
    """The text of each row: its non-PAD ids decoded without special tokens."""
    ids = [row[row != pad_id].tolist() for row in rows]
    return [text.strip() for text in tokenizer.batch_decode(ids, skip_special_tokens=True)]


def _encode_shard(
    out: Path,
    shard: ShardPlan,
    selected: np.ndarray,
    split: Any,
    tokenizer: Any,
    encoder: Any,
    config: EncodeConfig,
    fingerprint: dict[str, Any],
) -> None:
    source_rows = selected[shard.row_start : shard.row_stop]
    rows = split.get_batch(source_rows)["input_ids"].astype(np.int32)
    texts = _decode_rows(tokenizer, rows, split.pad_id)
    latents = encoder.encode(texts, role=config.role).astype(np.float32)
    if latents.shape != (len(texts), encoder.dim) or not np.isfinite(latents).all():
        raise ValueError(f"shard {shard.stem}: encoder returned {latents.shape} or non-finite values")
    (out / shard.split).mkdir(parents=True, exist_ok=True)
    paths = {
        "tokens": out / f"{shard.stem}.tokens.npy",
        "latents": out / f"{shard.stem}.latents.npy",
        "texts": out / f"{shard.stem}.texts.jsonl",
    }
    _atomic_save(paths["tokens"], rows)
    _atomic_save(paths["latents"], latents)
    lines = "".join(
        json.dumps({"row": int(r), "text": t}, ensure_ascii=False) + "\n"
        for r, t in zip(source_rows, texts, strict=True)
    )
    _atomic_write_text(paths["texts"], lines)
    record = {
        "job": _fingerprint_id(fingerprint),
        "split": shard.split,
        "index": shard.index,
        "row_start": shard.row_start,
        "rows": len(rows),
        **{key: file_entry(out, path).model_dump() for key, path in paths.items()},
    }
    _atomic_write_text(_record_path(out, shard), json.dumps(record, indent=2) + "\n")


def _finalize(
    out: Path,
    plan: list[ShardPlan],
    source: Any,
    source_path: Path,
    config: EncodeConfig,
    fingerprint: dict[str, Any],
) -> LatentManifest:
    splits: dict[str, LatentSplitInfo] = {}
    for name in ("train", "validation"):
        entries = []
        for shard in (s for s in plan if s.split == name):
            record = json.loads(_record_path(out, shard).read_text(encoding="utf-8"))
            entries.append(
                LatentShardEntry(
                    split=name,
                    index=shard.index,
                    row_start=shard.row_start,
                    rows=record["rows"],
                    tokens=record["tokens"],
                    latents=record["latents"],
                    texts=record["texts"],
                    record=file_entry(out, _record_path(out, shard)),
                )
            )
        splits[name] = LatentSplitInfo(
            rows=sum(e.rows for e in entries),
            documents=source.manifest.splits[name].documents,
            shards=entries,
        )
    stats = _fit_stats(out, splits["train"])
    encoder_info = _encoder_info(out, splits, config)
    extra = [file_entry(out, out / name) for name in (JOB_NAME, "encoder.json") if (out / name).is_file()]
    if source_path.parent == out:  # a text folder prepared into out/source: part of this artifact
        extra += [file_entry(out, p) for p in sorted(source_path.rglob("*")) if p.is_file()]
    tokenizer_files = [file_entry(out, p) for p in sorted((out / "tokenizer").rglob("*")) if p.is_file()]
    manifest = LatentManifest(
        encoder=encoder_info,
        role=config.role,
        dim=int(encoder_info["dim"]),
        normalization=LatentNormalization(unit_norm=bool(encoder_info["recipe"]["normalize"]), stats=stats),
        source=source.manifest.source,
        source_dataset={
            "format": DATASET_FORMAT,
            "path": str(source_path),
            "manifest_sha256": fingerprint["source_manifest_sha256"],
            "packing": source.manifest.packing,
            "tokenizer": source.manifest.tokenizer.name,
        },
        tokenizer=source.manifest.tokenizer.model_copy(update={"dir": "tokenizer", "files": tokenizer_files}),
        special_tokens=source.manifest.special_tokens,
        seq_len=source.manifest.seq_len,
        shard_rows=config.shard_rows,
        splits=splits,
        config=config.model_dump(mode="json"),
        extra_files=extra,
        mmdlm_version=mmdlm.__version__,
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
    )
    manifest.write(out)
    return manifest


def _encoder_info(out: Path, splits: dict[str, LatentSplitInfo], config: EncodeConfig) -> dict[str, Any]:
    """The encoder description, recorded once at finalisation (every shard shares the job fingerprint)."""
    info_path = out / "encoder.json"
    if info_path.is_file():
        return json.loads(info_path.read_text(encoding="utf-8"))
    from mmdlm.encoders import get_recipe

    recipe = get_recipe(config.encoder.name)
    first = next(s for split in splits.values() for s in split.shards)
    dim = int(np.load(out / first.latents.path, mmap_mode="r").shape[1])
    return {
        "name": recipe.name,
        "model": config.encoder.model or recipe.model_id,
        "revision": config.encoder.revision,
        "recipe": recipe.to_dict(),
        "dim": dim,
        "max_tokens": config.encoder.max_tokens or recipe.max_tokens,
        "normalize": recipe.normalize,
        "pooling": recipe.pooling,
        "instruction": config.encoder.instruction,
        "precision": config.encoder.precision,
    }


def _fit_stats(out: Path, train: LatentSplitInfo) -> LatentStats:
    """Mean/std per dimension over the train latents, accumulated in float64 (never validation)."""
    total = None
    total_sq = None
    norms = 0.0
    count = 0
    for shard in train.shards:
        lat = np.load(out / shard.latents.path).astype(np.float64)
        total = lat.sum(0) if total is None else total + lat.sum(0)
        total_sq = (lat**2).sum(0) if total_sq is None else total_sq + (lat**2).sum(0)
        norms += float(np.linalg.norm(lat, axis=1).sum())
        count += len(lat)
    if count < 2 or total is None or total_sq is None:
        raise ValueError("the train split needs at least 2 rows to fit latent statistics")
    mean = total / count
    var = np.maximum(total_sq / count - mean**2, 0.0) * count / (count - 1)
    std = np.sqrt(var)
    # a few encoder dimensions are (near) constant (MiniLM has three); a floor relative to the typical
    # spread keeps standardisation from amplifying float noise in them
    std = np.maximum(std, 1e-3 * float(np.median(std)) + 1e-12)
    return LatentStats(count=count, mean=mean.tolist(), std=std.tolist(), mean_norm=norms / count)


def _atomic_save(path: Path, array: np.ndarray) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with tmp.open("wb") as handle:
        np.save(handle, np.ascontiguousarray(array), allow_pickle=False)
    tmp.replace(path)


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def _check_file(root: Path, entry: FileEntry, verify: bool) -> None:
    path = root / entry.path
    if not path.is_file():
        raise FileNotFoundError(f"{root}: file {entry.path} listed in the manifest is missing")
    if path.stat().st_size != entry.bytes:
        raise ValueError(
            f"{root}: {entry.path} has {path.stat().st_size} bytes, the manifest says {entry.bytes}"
        )
    if verify and sha256_file(path) != entry.sha256:
        raise ValueError(
            f"{root}: {entry.path} does not match its sha256 in the manifest (corrupt or edited)"
        )


def check_latent_dim(model_dim: int, dataset: LatentDataset, family: str) -> None:
    """Refuse, before any training, a model whose latent width is not the dataset's."""
    if model_dim != dataset.dim:
        enc = dataset.manifest.encoder
        raise ValueError(
            f"{family}: model.latent_dim={model_dim} does not match the latent dataset's dimension {dataset.dim} "
            f"(encoder {enc.get('name')!r}, model {enc.get('model')!r}, dataset {dataset.root}); "
            f"set model.latent_dim={dataset.dim} or encode the data with a {model_dim}-d encoder"
        )
