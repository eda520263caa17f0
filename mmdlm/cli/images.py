"""`mmdlm prepare-images OUT`: the bundled digits, a folder of captioned images or an MNIST-style folder of
IDX files -> an `image-dataset` folder, on this machine (the `prepare-images` job does the same on a worker).

The config is `mmdlm.config.images.PrepareImagesConfig`, from `--config` (YAML/JSON), then the flags, then
`--set key=value`; a bad value, folder or image ends with a one-line message and exit status 2.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from mmdlm.cli.common import fail, run_guarded, set_options, setup_logging


def _config(options: dict[str, Any], config_file: Path | None, overrides: list[str]) -> Any:
    from mmdlm.config.base import apply_overrides, load_mapping
    from mmdlm.config.images import PrepareImagesConfig

    data: dict[str, Any] = load_mapping(config_file) if config_file else {}
    if isinstance(data.get("source"), str):  # `source: digits` shorthand, before the flags add to it
        data["source"] = {"type": data["source"]}
    set_options(data, options)
    return PrepareImagesConfig.model_validate(apply_overrides(data, overrides))


def prepare_images_command(
    out: Annotated[Path, typer.Argument(help="Output image-dataset folder (must not exist, or be empty)")],
    source: Annotated[
        str | None,
        typer.Option(help="digits (default), folder (captioned images) or idx (MNIST-style files)"),
    ] = None,
    path: Annotated[str | None, typer.Option(help="The folder of a `folder` or `idx` source")] = None,
    captions: Annotated[
        str | None, typer.Option(help="folder: captions file inside it (captions.jsonl / captions.json)")
    ] = None,
    resolution: Annotated[
        int | None, typer.Option(help="Side of the square images (default: native)")
    ] = None,
    channels: Annotated[int | None, typer.Option(help="1 (grey) or 3 (RGB)")] = None,
    caption_len: Annotated[
        int | None, typer.Option(help="Caption token positions, [BOS]/[EOS] included")
    ] = None,
    validation_fraction: Annotated[float | None, typer.Option(help="Share of images held out")] = None,
    test_fraction: Annotated[
        float | None, typer.Option(help="Share of images for a hashed test split")
    ] = None,
    seed: Annotated[int | None, typer.Option(help="Seed of the split hash")] = None,
    on_bad_image: Annotated[str | None, typer.Option(help="skip (report by name) or refuse")] = None,
    max_images: Annotated[int | None, typer.Option(help="Images read from the source at most")] = None,
    config: Annotated[
        Path | None, typer.Option("--config", help="PrepareImagesConfig YAML/JSON file")
    ] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override a field: key.sub=value")] = None,
) -> None:
    """Prepare an image-dataset (images + tokenized captions + manifest) from local images."""
    setup_logging()
    options = {
        "source.type": source,
        "source.path": path,
        "source.captions": captions,
        "resolution": resolution,
        "channels": channels,
        "caption_len": caption_len,
        "validation_fraction": validation_fraction,
        "test_fraction": test_fraction,
        "seed": seed,
        "on_bad_image": on_bad_image,
        "max_images": max_images,
    }
    cfg = run_guarded(lambda: _config(options, config, set_ or []))

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from mmdlm.data.image_prepare import prepare_images

    with Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
        transient=True,
    ) as bar:  # fmt: skip
        task = bar.add_task("reading images", total=None)

        def report(done: int, total: int, phase: str) -> None:
            bar.update(task, completed=done, total=total or None, description=phase)

        try:
            manifest = run_guarded(lambda: prepare_images(cfg, out, progress=report))
        except OSError as exc:  # a folder that cannot be written or read: the user's to fix, no traceback
            fail(f"{exc.strerror or type(exc).__name__}: {exc.filename or out}")
    rows = ", ".join(f"{name} {count}" for name, count in manifest.splits.items())
    skipped = (
        f"; {len(manifest.skipped)} bad image(s) skipped (listed in the manifest)" if manifest.skipped else ""
    )
    typer.echo(
        f"{out}: image dataset, {manifest.resolution}x{manifest.resolution}x{manifest.channels}, "
        f"rows: {rows}{skipped}"
    )
