"""Runners of `prepare-data` and `prepare-images`: call `mmdlm.data.prepare.prepare_dataset` (or
`mmdlm.data.image_prepare.prepare_images`) in the job's scratch folder and publish the folder as the
job's `dataset` (or `image-dataset`) artifact."""

from __future__ import annotations

import shutil

from mmdlm.data.prepare import prepare_dataset
from services.common.context import JobContext
from services.common.errors import JobCancelled
from services.encoder.kinds import PrepareDataSpec, PrepareImagesSpec

ARTIFACT_NAME = "dataset"
IMAGE_ARTIFACT_NAME = "image-dataset"


def run(ctx: JobContext) -> None:
    spec = ctx.spec
    assert isinstance(spec, PrepareDataSpec)
    done = ctx.find_artifact(ARTIFACT_NAME)
    if done is not None:  # an earlier attempt published it and then lost its worker
        ctx.log(f"dataset already published by an earlier attempt: {done}")
        return
    out_dir = ctx.scratch_dir / ARTIFACT_NAME
    shutil.rmtree(out_dir, ignore_errors=True)  # debris of an attempt that crashed on this machine

    def progress(done_docs: int, total: int, phase: str) -> None:
        ctx.progress(done_docs, total or None, phase)
        if ctx.cancelled.is_set():
            raise JobCancelled(ctx.cancel_reason or "cancelled")

    # the library resolves the source and tokenizer paths again, inside the owner's roots, as it reads
    manifest = prepare_dataset(spec.to_config(), out_dir, progress, roots=ctx.data_roots)
    ctx.check_cancelled()
    splits = {
        name: {"documents": s.documents, "tokens": s.tokens, "rows": s.rows}
        for name, s in manifest.splits.items()
    }
    ctx.log(
        "prepared "
        + ", ".join(f"{name}: {s['documents']} documents, {s['rows']} rows" for name, s in splits.items())
    )
    ctx.progress(1, 1, "publishing")
    ctx.publish_directory(
        out_dir,
        kind="dataset",
        name=ARTIFACT_NAME,
        metadata={
            "format": manifest.format,
            "tokenizer": {"kind": manifest.tokenizer.kind, "name": manifest.tokenizer.name,
                          "vocab_size": manifest.tokenizer.vocab_size},
            "seq_len": manifest.seq_len,
            "packing": manifest.packing,
            "special_tokens": manifest.special_tokens.model_dump(),
            "splits": splits,
            "source": manifest.source,
        },
    )  # fmt: skip
    shutil.rmtree(out_dir, ignore_errors=True)


def run_images(ctx: JobContext) -> None:
    """`prepare-images`: one `image-dataset` artifact; bad images are logged by name (and refused when the
    spec says so)."""
    from mmdlm.data.image_prepare import prepare_images

    spec = ctx.spec
    assert isinstance(spec, PrepareImagesSpec)
    done = ctx.find_artifact(IMAGE_ARTIFACT_NAME)
    if done is not None:
        ctx.log(f"image dataset already published by an earlier attempt: {done}")
        return
    out_dir = ctx.scratch_dir / IMAGE_ARTIFACT_NAME
    shutil.rmtree(out_dir, ignore_errors=True)

    def progress(done_images: int, total: int, phase: str) -> None:
        ctx.progress(done_images, total or None, phase)
        if ctx.cancelled.is_set():
            raise JobCancelled(ctx.cancel_reason or "cancelled")

    manifest = prepare_images(spec.to_config(), out_dir, progress, roots=ctx.data_roots)
    ctx.check_cancelled()
    for bad in manifest.skipped[:50]:
        ctx.log(f"skipped {bad.name}: {bad.reason}")
    ctx.log(
        f"prepared {manifest.resolution}x{manifest.resolution}x{manifest.channels} images: "
        + ", ".join(f"{name} {rows} rows" for name, rows in manifest.splits.items())
        + f"; {len(manifest.skipped)} skipped"
    )
    ctx.progress(1, 1, "publishing")
    tok = manifest.tokenizer
    ctx.publish_directory(
        out_dir,
        kind="image-dataset",
        name=IMAGE_ARTIFACT_NAME,
        metadata={
            "format": manifest.format, "format_version": manifest.format_version,
            "resolution": manifest.resolution, "channels": manifest.channels, "levels": manifest.levels,
            "caption_len": manifest.caption_len, "seq_len": manifest.caption_len, "splits": manifest.splits,
            "split_images": manifest.split_images, "labels": manifest.labels if manifest.labels is None or len(manifest.labels) <= 1000 else None,
            "tokenizer": {"kind": tok.kind, "name": tok.name, "vocab_size": tok.vocab_size},
            "skipped": len(manifest.skipped), "skipped_names": [s.name for s in manifest.skipped[:100]],
            "source": manifest.source,
        },
    )  # fmt: skip
    shutil.rmtree(out_dir, ignore_errors=True)
