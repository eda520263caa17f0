"""The latent-family branch of `mmdlm sample`: modes l2t / t2l / joint with texts or vectors as inputs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from mmdlm.cli.common import fail, run_guarded


def sample_latent(
    pipe: Any,
    *,
    mode: str | None,
    num_samples: int,
    steps: int,
    seq_len: int | None,
    temperature: float,
    seed: int,
    texts: list[str] | None,
    latent_file: Path | None,
    guidance_scale: float,
    latent_steps: int,
    save_latents: Path | None,
    as_json: bool,
) -> None:
    """Generate with `pipe` (a latent family) and print texts; latents go to `save_latents` (.npy)."""
    import numpy as np

    from mmdlm.config.latent import LatentSampleConfig
    from mmdlm.sampling.latent_io import generate_latent

    default = "joint" if pipe.family == "mmdit" else "l2t"
    mode = mode or default
    config = run_guarded(
        lambda: LatentSampleConfig(
            mode=mode, num_samples=num_samples, seq_len=seq_len, text_steps=steps, temperature=max(temperature, 1e-6),
            latent_steps=latent_steps, guidance_scale=guidance_scale, seed=seed,
        )
    )  # fmt: skip
    latents = None
    if latent_file is not None:
        if not latent_file.is_file():
            fail(f"--latent: {latent_file} does not exist")
        latents = run_guarded(lambda: np.atleast_2d(np.load(latent_file)).astype(np.float32))
    out = run_guarded(lambda: generate_latent(pipe, config, latents=latents, texts=texts or None))
    for i, text in enumerate(out.texts):
        if as_json:
            record: dict[str, Any] = {"text": text, "ids": out.ids[i].tolist(), "mode": out.mode}
            if out.latents is not None:
                record["latent"] = out.latents[i].tolist()
            typer.echo(json.dumps(record))
        elif out.mode == "t2l":
            typer.echo(f"{text}\n  -> latent norm {float(np.linalg.norm(out.latents[i])):.4f}\n---")
        else:
            typer.echo(f"{text}\n---")
    if save_latents is not None:
        if out.latents is None:
            fail("--save-latents: this mode produced no latents (use t2l or joint)")
        np.save(save_latents, out.latents)
        typer.echo(
            f"latents ({out.latents.shape[0]} x {out.latents.shape[1]}) written to {save_latents}", err=True
        )
    typer.echo(
        f"{len(out.texts)} samples ({out.mode}), {out.nfe} network calls, {out.elapsed_s:.2f}s", err=True
    )
