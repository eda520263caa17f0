"""Service shells (API gateway, workers) around the `mmdlm` library."""
