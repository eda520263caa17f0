"""`SamplerService`: the sampler process's state and its operations (the FastAPI routes are thin shells).

lookup  artifact row -> 404 unless it is a `model` artifact of the caller (rows are immutable: cached)
load    staged + loaded through the byte-bounded ModelCache (in a thread; never on the event loop)
submit  resolve the request into a GenJob, then hand it to the micro-batcher under its batch key;
        the batch runs in the single compute thread
embed   sentence embeddings through the EncoderCache, also in the compute thread
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from starlette.concurrency import run_in_threadpool

from services.common import artifacts
from services.common.db import Database
from services.common.errors import PermanentError
from services.common.settings import Settings
from services.common.store import ObjectStore
from services.sampler.batcher import BatchInfo, MicroBatcher
from services.sampler.cache import EncoderCache, LoadedModel, ModelCache, module_bytes
from services.sampler.engine import GenJob, GenOutput, batch_key, run_batch
from services.sampler.images import png_base64
from services.sampler.metrics import SamplerMetrics
from services.sampler.resolve import resolve
from services.sampler.schemas import (
    Embedding,
    EmbedRequest,
    EmbedResponse,
    GenerateRequest,
    GenerateResponse,
    RequestError,
    SamplePublic,
)
from services.sampler.settings import SamplerSettings

logger = logging.getLogger(__name__)


def resolve_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("MMDLM_SAMPLER_DEVICE=cuda but CUDA is not available")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


@dataclass(frozen=True)
class ModelRef:
    id: str
    owner_id: int
    kind: str
    family: str | None


@dataclass
class Generated:
    """One request's result: its model, job, output and what it learned about its batch."""

    model: LoadedModel
    job: GenJob
    output: GenOutput
    batch: BatchInfo


class SamplerService:
    def __init__(self, settings: Settings, config: SamplerSettings, db: Database, store: ObjectStore) -> None:
        self.settings = settings
        self.config = config
        self.db = db
        self.store = store
        self.device = resolve_device(config.device)
        if config.threads:
            torch.set_num_threads(config.threads)
        self.models = ModelCache(self._load, config.cache_bytes)
        self.encoders = EncoderCache(config.encoder_cache, str(self.device))
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mmdlm-sample")
        self.batcher = MicroBatcher(
            self._run, self.executor, window_s=config.batch_window_ms / 1000, max_rows=config.max_batch_rows,
            enabled=config.batching,
        )  # fmt: skip
        self.metrics = SamplerMetrics(self.models.stats, self.config.cache_bytes)
        self.batcher.on_batch = self.metrics.observe_batch
        self._refs: dict[str, ModelRef] = {}

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)

    # --- models ----------------------------------------------------------------------------------------------

    def lookup(self, owner_id: int, model_id: str) -> ModelRef:
        """The caller's `model` artifact, else RequestError 404 naming `model`."""
        ref = self._refs.get(model_id)
        if ref is None:
            row = artifacts.get_artifact(self.db, model_id)
            if row is not None:
                ref = ModelRef(row.id, row.owner_id, row.kind, (row.meta or {}).get("family"))
                self._refs[model_id] = ref
        if ref is None or ref.owner_id != owner_id:
            raise RequestError(
                "model", f"no model {model_id!r} (see GET /v1/models for your models)", status=404
            )
        if ref.kind != "model":
            raise RequestError(
                "model", f"artifact {model_id!r} is a {ref.kind!r} artifact, not a model", status=404
            )
        return ref

    def load(self, owner_id: int, model_id: str) -> LoadedModel:
        ref = self.lookup(owner_id, model_id)
        model = self.models.get(ref.id)
        if model.owner_id != owner_id:  # not reachable while artifacts keep their owner; kept as a fence
            raise RequestError("model", f"no model {model_id!r}", status=404)
        return model

    def _load(self, model_id: str) -> LoadedModel:
        from mmdlm.pipeline import load_pretrained

        assert self.settings.cache_dir is not None
        ref = self._refs[model_id]
        start = time.perf_counter()
        try:
            folder = artifacts.stage_artifact(
                self.db,
                self.store,
                model_id,
                Path(self.settings.cache_dir) / "artifacts" / model_id,
                kind="model",
            )
        except PermanentError as exc:
            raise RequestError("model", str(exc), status=404) from None
        pipe = load_pretrained(folder, device=self.device)
        model = LoadedModel(artifact_id=model_id, owner_id=ref.owner_id, pipe=pipe, nbytes=module_bytes(pipe))
        logger.info("loaded model %s (%s, %d bytes) in %.2fs", model_id, pipe.family, model.nbytes,
                    time.perf_counter() - start)  # fmt: skip
        return model

    # --- generation ------------------------------------------------------------------------------------------

    async def prepare(self, owner_id: int, req: GenerateRequest) -> tuple[LoadedModel, GenJob]:
        model = await run_in_threadpool(self.load, owner_id, req.model)
        job = await run_in_threadpool(resolve, model, req, self.config, self.encoders)
        return model, job

    async def submit(self, model: LoadedModel, job: GenJob) -> Generated:
        key = batch_key(model.artifact_id, model.family, job)
        output, info = await self.batcher.submit(key, model, job, job.rows)
        return Generated(model=model, job=job, output=output, batch=info)

    def _run(self, model: LoadedModel, jobs: list[GenJob]) -> list[GenOutput]:
        return run_batch(model.pipe, jobs)

    async def generate(self, owner_id: int, req: GenerateRequest) -> GenerateResponse:
        model, job = await self.prepare(owner_id, req)
        done = await self.submit(model, job)
        return self.response(done, req)

    def response(self, done: Generated, req: GenerateRequest) -> GenerateResponse:
        model, job, out = done.model, done.job, done.output
        texts = model.pipe.decode(out.tokens)
        samples = []
        for i, text in enumerate(texts):
            latent = out.latents[i].tolist() if out.latents is not None else None
            ids = out.tokens[i].tolist() if req.return_token_ids else None
            image = png_base64(out.images[i]) if out.images is not None else None
            samples.append(
                SamplePublic(index=i, text=text.strip(), token_ids=ids, latent=latent, image=image)
            )
        shape = model.image_shape
        tokens = self.generated_tokens(model, job, out)
        self.metrics.tokens.inc(tokens)
        return GenerateResponse(
            id=f"gen-{uuid.uuid4().hex[:24]}", created=int(time.time()), model=model.artifact_id,
            family=model.family, mode=job.mode, samples=samples, seed=job.seed, seq_len=job.seq_len,
            steps=out.steps, nfe=out.nfe, tokens=tokens, image_size=shape[1] if shape else None,
            channels=shape[0] if shape else None,
            tokens_per_s=round(tokens / out.elapsed_s, 3) if out.elapsed_s > 0 else 0.0,
            elapsed_s=round(out.elapsed_s, 6), queue_s=round(done.batch.queue_s, 6),
            batch_requests=out.batch_requests, batch_rows=out.batch_rows,
            settings=self.protocol(model, job),
        )  # fmt: skip

    @staticmethod
    def generated_tokens(model: LoadedModel, job: GenJob, out: GenOutput) -> int:
        if job.mode in ("t2l", "t2i"):
            return 0
        if model.kind in ("latent", "image"):  # rows are PAD past their length
            return int((out.tokens != model.pipe.vocab.pad_id).sum())
        return job.rows * (job.seq_len - job.given)

    @staticmethod
    def protocol(model: LoadedModel, job: GenJob) -> dict[str, Any]:
        """Everything that determines these samples (the settings a result must be reported with)."""
        trained = model.pipe.trained or {}
        shape = model.image_shape
        variant = getattr(model.pipe.model.config, "variant", None)
        # image models: guidance_scale is the generated direction's (t2i: image | caption, i2t: caption | image)
        image = {"image_size": shape[1], "channels": shape[0], "variant": variant} if shape else {}
        return {
            "model": model.artifact_id,
            "family": model.family,
            "mode": job.mode,
            "num_samples": job.rows,
            "seq_len": job.seq_len,
            "seed": job.seed,
            "seed_rule": "one torch.Generator per request, seeded with `seed` (independent of batching)",
            "sampler_precision": "float64" if job.params.float64 else "float32",
            "network_precision": job.params.precision,
            "trained_step": trained.get("step"),
            **job.params.protocol(),
            **image,
        }

    # --- embeddings ------------------------------------------------------------------------------------------

    async def embed(self, req: EmbedRequest) -> EmbedResponse:
        limit = self.config.embed_max_batch
        if len(req.texts) > limit:
            raise RequestError(
                "texts", f"{len(req.texts)} texts exceed the limit of {limit} per request (MMDLM_SAMPLER_EMBED_MAX_BATCH)",
                status=413,
            )  # fmt: skip
        for i, text in enumerate(req.texts):
            if len(text) > self.config.embed_max_chars:
                raise RequestError(
                    f"texts[{i}]",
                    f"{len(text)} characters exceed the limit of {self.config.embed_max_chars} "
                    "(MMDLM_SAMPLER_EMBED_MAX_CHARS)",
                )
        try:
            encoder = await run_in_threadpool(self.encoders.for_config, req.encoder)
        except (OSError, ValueError, ModuleNotFoundError) as exc:
            raise RequestError("encoder", f"cannot load encoder {req.encoder.name!r}: {exc}") from None
        loop = asyncio.get_running_loop()
        start = time.perf_counter()
        vectors = await loop.run_in_executor(self.executor, lambda: encoder.encode(req.texts, role=req.role))
        elapsed = time.perf_counter() - start
        return EmbedResponse(
            data=[Embedding(index=i, embedding=v.tolist()) for i, v in enumerate(vectors)],
            encoder=encoder.describe(), dim=int(vectors.shape[1]), elapsed_s=round(elapsed, 6),
        )  # fmt: skip
