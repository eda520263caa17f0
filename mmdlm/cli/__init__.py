"""The ML commands as a typer app: `train`, `sample`, `eval`, `clusters`, `encode`, `prepare-images`.

`services/cli.py` mounts `app` into the `mmdlm` console script; without it, `python -m mmdlm.cli ...`
runs the same commands. Bad configs and arguments end with a one-line-per-problem message and exit
status 2, never a traceback.
"""

from __future__ import annotations

import typer

from mmdlm.cli.clusters import clusters
from mmdlm.cli.encode import encode
from mmdlm.cli.eval import eval_command
from mmdlm.cli.images import prepare_images_command
from mmdlm.cli.sample import sample
from mmdlm.cli.train import train

app = typer.Typer(
    name="mmdlm-ml",
    help="Train, sample and evaluate discrete diffusion LMs (MDLM, GIDD+, HDLM) and the AR baseline.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.command("train")(train)
app.command("sample")(sample)
app.command("eval")(eval_command)
app.command("clusters")(clusters)
app.command("encode")(encode)
app.command("prepare-images")(prepare_images_command)

__all__ = ["app"]
