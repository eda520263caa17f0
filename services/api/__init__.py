"""FastAPI gateway: `create_app(settings)`; run with `mmdlm serve`."""
