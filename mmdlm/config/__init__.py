"""Pydantic configs shared by the library, the CLI and the REST API (no torch import here)."""

from mmdlm.config.base import StrictModel, apply_overrides, load_mapping

__all__ = ["StrictModel", "apply_overrides", "load_mapping"]
