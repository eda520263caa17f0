"""The ML commands as a typer app (`mmdlm.cli:app`); `services/cli.py` mounts it into `mmdlm`."""
