"""Session-wide test setup: offline model hubs and the shared fixtures of tests/utils."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Tests choose their own backends; a developer's MMDLM_* settings must not leak into them.
for _key in [k for k in os.environ if k.startswith("MMDLM_")]:
    del os.environ[_key]

pytest_plugins = ["tests.utils.fixtures"]
