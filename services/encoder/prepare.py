"""Runner of `prepare-data`: call `mmdlm.data.prepare.prepare_dataset` in the job's scratch folder and
publish the folder as the job's `dataset` artifact."""

from __future__ import annotations

import shutil

from mmdlm.data.prepare import prepare_dataset
from services.common.context import JobContext
from services.common.errors import JobCancelled
from services.encoder.kinds import PrepareDataSpec

ARTIFACT_NAME = "dataset"


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
