"""Settings of the sampler service, read from `MMDLM_SAMPLER_*` (the platform's `Settings` ignores them).

Where the gateway finds the sampler (`MMDLM_SAMPLER_URL`) is a platform setting, because the gateway reads
it; everything the sampler process itself needs is here: where it listens, how much memory loaded models
may take, how requests are batched, and the limits a request is checked against before any compute.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class SamplerSettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="MMDLM_SAMPLER_", env_file=".env", env_ignore_empty=True, extra="ignore"
    )

    host: str = Field(default="127.0.0.1", description="interface `mmdlm serve-sampler` listens on")
    port: int = Field(default=8001, ge=0, le=65535)
    device: Literal["auto", "cpu", "cuda"] = Field(default="auto", description="auto = cuda when present")
    threads: int = Field(default=0, ge=0, description="torch intra-op threads; 0 = torch's default")
    cache_bytes: int = Field(
        default=4 << 30, ge=1 << 20, description="loaded models (weights + buffers) kept in memory, in bytes"
    )
    encoder_cache: int = Field(default=2, ge=1, description="sentence encoders kept loaded")

    # --- batching ------------------------------------------------------------------------------------------
    batching: bool = Field(default=True, description="batch concurrent requests of one model and setting")
    batch_window_ms: float = Field(
        default=5.0, ge=0, le=1000, description="how long a batch waits for more requests after its first"
    )
    max_batch_rows: int = Field(default=64, ge=1, description="samples (rows) in one network batch")

    # --- request limits (a request past them gets 413/422 naming the limit) ----------------------------------
    max_samples: int = Field(default=64, ge=1, description="num_samples / n of one request")
    max_steps: int = Field(default=4096, ge=1, description="sampling steps of one request")
    max_prompt_chars: int = Field(default=20_000, ge=1, description="characters of a prompt or text")
    embed_max_batch: int = Field(default=64, ge=1, description="texts in one /v1/embed request (413 past it)")
    embed_max_chars: int = Field(default=4096, ge=1, description="characters of one text to embed (422)")
    stream_max_states: int = Field(
        default=64, ge=1, description="intermediate states one /v1/generate/stream request may receive"
    )
    max_images: int = Field(default=64, ge=1, description="images (num_samples) of one image-model request")
    max_image_bytes: int = Field(
        default=1 << 20,
        ge=1024,
        description="bytes of an uploaded PNG (i2t), once base64-decoded (422 past it)",
    )
    max_image_pixels: int = Field(
        default=1 << 22,
        ge=64,
        description="width x height an uploaded PNG may declare (decompression-bomb guard)",
    )


@lru_cache(maxsize=1)
def get_sampler_settings() -> SamplerSettings:
    return SamplerSettings()
