"""`python -m mmdlm.training --config FILE [--set key=value ...]`: the entry torchrun launches.

Options are `--config` and `--set` only: a script option that is a prefix of one of torchrun's own
options makes torchrun exit, and these two are not.
"""

from __future__ import annotations

import argparse
import sys

from mmdlm.cli.common import config_error_message, setup_logging


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mmdlm.training", allow_abbrev=False)
    parser.add_argument("--config", required=True, help="TrainConfig YAML/JSON file or preset name")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a field")
    args = parser.parse_args(argv)

    from mmdlm.config.presets import load_train_config

    setup_logging()
    try:
        config = load_train_config(args.config, args.set)
    except Exception as exc:  # noqa: BLE001 - every config problem becomes a one-line message
        message = config_error_message(exc)
        if message is None:
            raise
        sys.stderr.write(f"error: {message}\n")
        return 2
    from mmdlm.training import train

    result = train(config)
    if result.stopped:  # SIGTERM: a clean exit after the checkpoint; `resume: auto` continues it
        sys.stderr.write(
            f"stopped by SIGTERM at step {result.step}: checkpoint written to {result.run_dir}\n"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
