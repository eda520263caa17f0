"""Runner of `kind: sample`: draw `num_samples` samples chunk by chunk with the sampler's engine and
publish them as a `samples` artifact:

    manifest.json     format "mmdlm.samples/v1", count, chunks, the sampling protocol, files + sha256
    samples.jsonl     {"index", "chunk", "seed", "text", "token_ids"[, "latent"]} per sample, in order
    grids/chunk-K.png image models (t2i / joint): chunk K's images as one PNG grid; each sample's record adds
                      "grid", "cell" (its place in the grid, row-major) and "image" (its own base64 PNG),
                      and "text" is its caption

Chunk k uses seed `seed + k` and one generator of its own (the engine's per-request rule), so a chunk
equals POST /v1/generate with that seed. Chunks already written by an attempt on this machine are kept.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

from mmdlm.data.png import save_png_grid
from mmdlm.pipeline import load_pretrained
from services.common.context import JobContext
from services.common.errors import PermanentError
from services.sampler.cache import LoadedModel, module_bytes
from services.sampler.engine import run_batch
from services.sampler.images import png_base64
from services.sampler.kinds import SampleSpec
from services.sampler.resolve import resolve
from services.sampler.schemas import GenerateRequest, RequestError, SamplingParams
from services.sampler.service import SamplerService, resolve_device
from services.sampler.settings import SamplerSettings

ARTIFACT_NAME = "samples"
FORMAT = "mmdlm.samples/v1"


def _request(spec: SampleSpec, rows: int, seed: int) -> GenerateRequest:
    fields = spec.model_dump(include=set(SamplingParams.model_fields))
    return GenerateRequest(
        **fields, model=spec.model, mode=spec.mode, num_samples=rows, seq_len=spec.seq_len, seed=seed,
        prompt=spec.prompt, infill=spec.infill, length=spec.length, caption=spec.caption,
    )  # fmt: skip


def grid_scale(spec: SampleSpec, image_size: int) -> int:
    return spec.grid_scale or max(1, 32 // image_size)


def run(ctx: JobContext) -> None:
    spec = ctx.spec
    assert isinstance(spec, SampleSpec)
    if ctx.find_artifact(ARTIFACT_NAME) is not None:
        ctx.log("samples already published by an earlier attempt")
        return
    device = resolve_device(spec.device)
    folder = ctx.stage_artifact(spec.model, kind="model")
    pipe = load_pretrained(folder, device=device)
    model = LoadedModel(artifact_id=spec.model, owner_id=ctx.owner_id, pipe=pipe, nbytes=module_bytes(pipe))
    limits = SamplerSettings(
        _env_file=None, max_samples=spec.chunk_size, max_images=spec.chunk_size, max_steps=10**9,
        max_prompt_chars=10**9,
    )  # type: ignore[call-arg]  # fmt: skip
    shape = model.image_shape
    parts = ctx.scratch_dir / "parts"
    parts.mkdir(parents=True, exist_ok=True)
    chunks = -(-spec.num_samples // spec.chunk_size)
    protocol: dict[str, Any] | None = None
    done_rows = 0
    for k in range(chunks):
        ctx.check_cancelled()
        rows = min(spec.chunk_size, spec.num_samples - k * spec.chunk_size)
        try:
            job = resolve(model, _request(spec, rows, spec.seed + k), limits)
        except RequestError as exc:
            raise PermanentError(str(exc)) from None
        protocol = protocol or SamplerService.protocol(model, job)
        part = parts / f"chunk-{k:06d}.jsonl"
        if not part.is_file():
            out = run_batch(pipe, [job])[0]
            texts = pipe.decode(out.tokens)
            grid = f"grids/chunk-{k:06d}.png"
            if out.images is not None:  # the chunk's PNG grid first: a chunk counts as done once its JSONL is
                assert shape is not None
                save_png_grid(
                    out.images, parts / grid, nrow=spec.grid_columns, scale=grid_scale(spec, shape[1])
                )
            lines = []
            for i, (text, ids) in enumerate(zip(texts, out.tokens.tolist(), strict=True)):
                record: dict[str, Any] = {"index": k * spec.chunk_size + i, "chunk": k, "seed": job.seed,
                                          "text": text.strip(), "token_ids": ids}  # fmt: skip
                if out.latents is not None:
                    record["latent"] = out.latents[i].tolist()
                if out.images is not None:  # the caption is `text`; the image: its grid cell and its own PNG
                    record.update(grid=grid, cell=i, image=png_base64(out.images[i]))
                lines.append(json.dumps(record, ensure_ascii=False) + "\n")
            tmp = part.with_suffix(".tmp")
            tmp.write_text("".join(lines), encoding="utf-8")
            tmp.replace(part)
        done_rows += rows
        ctx.progress(done_rows, spec.num_samples, f"chunk {k + 1}/{chunks}")
    assert protocol is not None
    out_dir = ctx.scratch_dir / ARTIFACT_NAME
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir(parents=True)
    target = out_dir / "samples.jsonl"
    with target.open("w", encoding="utf-8") as handle:
        for k in range(chunks):
            handle.write((parts / f"chunk-{k:06d}.jsonl").read_text(encoding="utf-8"))
    files = [target]
    images: dict[str, Any] = {}
    if shape is not None:
        (out_dir / "grids").mkdir()
        for k in range(chunks):
            name = f"grids/chunk-{k:06d}.png"
            if (parts / name).is_file():  # t2i / joint draw images
                shutil.copyfile(parts / name, out_dir / name)
                files.append(out_dir / name)
        images = {"images": {"channels": shape[0], "image_size": shape[1], "format": "png",
                             "grids": [f.relative_to(out_dir).as_posix() for f in files[1:]],
                             "grid": {"columns": spec.grid_columns, "scale": grid_scale(spec, shape[1]), "padding": 1,
                                      "order": "row-major, sample `cell` of its chunk"}}}  # fmt: skip
    protocol = {**protocol, "num_samples": spec.num_samples, "seed": spec.seed,
                "chunk_size": spec.chunk_size, "seed_rule": "chunk k drawn with seed + k, one generator per chunk"}  # fmt: skip
    manifest = {
        "format": FORMAT, "model": spec.model, "family": pipe.family, "count": spec.num_samples, "chunks": chunks,
        "protocol": protocol, **images, "files": [_entry(out_dir, f) for f in files],
    }  # fmt: skip
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    ctx.publish_directory(
        out_dir, kind="samples", name=ARTIFACT_NAME,
        metadata={"format": FORMAT, "model": spec.model, "family": pipe.family, "count": spec.num_samples,
                  "protocol": protocol, **images},
    )  # fmt: skip
    shutil.rmtree(out_dir, ignore_errors=True)


def _entry(root: Path, path: Path) -> dict[str, Any]:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return {
        "path": path.relative_to(root).as_posix(),
        "sha256": digest.hexdigest(),
        "bytes": path.stat().st_size,
    }
