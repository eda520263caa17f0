"""`mmdlm sample MODEL_DIR`: draw samples from a model folder and print them (text or JSON lines)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from mmdlm.cli.common import run_guarded, setup_logging


def sample(
    model_dir: Annotated[
        Path, typer.Argument(help="A model folder (run_dir/final or save_pretrained output)")
    ],
    num_samples: Annotated[int, typer.Option("--num-samples", "-n", help="Number of samples")] = 4,
    steps: Annotated[int, typer.Option(help="Reverse steps T (diffusion families)")] = 128,
    seq_len: Annotated[
        int | None, typer.Option(help="Tokens per sample (default: the training context)")
    ] = None,
    temperature: Annotated[float, typer.Option(help="0 is greedy")] = 1.0,
    top_p: Annotated[float, typer.Option(help="Nucleus mass kept (1 = off)")] = 1.0,
    min_p: Annotated[
        float, typer.Option(help="Drop tokens below min_p x the top probability (0 = off)")
    ] = 0.0,
    prompt: Annotated[
        str | None, typer.Option(help="Text the samples continue (starts a new document)")
    ] = None,
    cached: Annotated[bool, typer.Option(help="Skip the network when nothing changed (MDLM cache)")] = False,
    float64: Annotated[bool, typer.Option("--float64/--float32", help="Sampler arithmetic precision")] = True,
    precision: Annotated[str, typer.Option(help="Network forward: fp32 or bf16 (autocast)")] = "fp32",
    seed: Annotated[int, typer.Option(help="Sampling seed")] = 0,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda")] = "auto",
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON lines {text, ids}")] = False,
    mode: Annotated[
        str | None, typer.Option(help="Latent families: l2t, t2l or joint (default joint / l2t)")
    ] = None,
    text: Annotated[
        list[str] | None, typer.Option(help="Latent families: condition text (t2l; l2t encodes it first)")
    ] = None,
    latent: Annotated[Path | None, typer.Option(help="Latent families: .npy (N, D) latents for l2t")] = None,
    guidance_scale: Annotated[float, typer.Option(help="Latent families: classifier-free guidance")] = 1.0,
    latent_steps: Annotated[int, typer.Option(help="Latent families: DDIM steps for the latent")] = 50,
    save_latents: Annotated[Path | None, typer.Option(help="Latent families: write latents (.npy)")] = None,
) -> None:
    """Generate samples from a trained model."""
    from mmdlm.config.sample import SampleConfig

    setup_logging()

    def build() -> SampleConfig:
        return SampleConfig(
            num_samples=num_samples,
            steps=steps,
            seq_len=seq_len,
            temperature=temperature,
            top_p=top_p,
            min_p=min_p,
            cached=cached,
            float64=float64,
            seed=seed,
        )

    config = run_guarded(build)

    def generate():  # noqa: ANN202
        from mmdlm.eval.evaluate import resolve_device
        from mmdlm.pipeline import load_pretrained

        pipe = load_pretrained(model_dir, device=resolve_device(device))
        return pipe.generate(config, prompt=prompt, precision=precision)

    latent_options = (mode, text, latent, save_latents)
    if any(o is not None for o in latent_options) or _family(model_dir) in (
        "mmdit",
        "latent-dit",
        "cross-dit",
    ):
        from mmdlm.cli.latent import sample_latent
        from mmdlm.eval.evaluate import resolve_device
        from mmdlm.pipeline import load_pretrained

        pipe = run_guarded(lambda: load_pretrained(model_dir, device=resolve_device(device)))
        sample_latent(
            pipe, mode=mode, num_samples=num_samples, steps=steps, seq_len=seq_len, temperature=temperature,
            seed=seed, texts=text, latent_file=latent, guidance_scale=guidance_scale, latent_steps=latent_steps,
            save_latents=save_latents, as_json=as_json,
        )  # fmt: skip
        return
    out = run_guarded(generate)
    for sample_text, ids in zip(out.texts, out.ids.tolist(), strict=True):
        typer.echo(json.dumps({"text": sample_text, "ids": ids}) if as_json else f"{sample_text}\n---")
    typer.echo(f"{len(out.texts)} samples, {out.nfe} network calls, {out.elapsed_s:.2f}s", err=True)


def _family(model_dir: Path) -> str | None:
    try:
        return json.loads((model_dir / "config.json").read_text()).get("family")
    except (OSError, ValueError):
        return None
