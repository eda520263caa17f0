"""What the sampler keeps loaded: `model` artifacts (LRU bounded in bytes) and sentence encoders (LRU
bounded in count).

A model is staged from the object store into the shared cache folder (verified file by file), loaded with
`load_pretrained`, and kept until the models loaded after it push the total over `max_bytes`
(MMDLM_SAMPLER_CACHE_BYTES). Size = bytes of its parameters and buffers. A batch that is running keeps a
reference to its model, so an eviction during it frees the memory when that batch ends. Two requests that
miss on the same model at once load it once: the second waits for the first.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from mmdlm.pipeline import Pipeline
from services.sampler.families import family_kind
from services.sampler.schemas import RequestError

logger = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass
class LoadedModel:
    """A `model` artifact in memory, with what requests are checked against."""

    artifact_id: str
    owner_id: int
    pipe: Pipeline
    nbytes: int
    loaded_at: float = field(default_factory=time.time)
    _text_encoder: Any = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def family(self) -> str:
        return self.pipe.family

    @property
    def kind(self) -> str:
        return family_kind(self.pipe.family)

    @property
    def max_seq_len(self) -> int:
        return int(self.pipe.model.config.max_seq_len)  # type: ignore[union-attr]

    @property
    def context(self) -> int:
        """Default sample length: the training rows' length (positions past it were never trained)."""
        trained = (self.pipe.trained or {}).get("seq_len")
        return min(int(trained), self.max_seq_len) if trained else self.max_seq_len

    @property
    def latent_dim(self) -> int | None:
        return getattr(self.pipe.model.config, "latent_dim", None) if self.kind == "latent" else None

    @property
    def image_shape(self) -> tuple[int, int] | None:
        """Image models: (channels, image_size); None otherwise."""
        if self.kind != "image":
            return None
        config = self.pipe.model.config
        return int(config.channels), int(config.image_size)  # type: ignore[union-attr]

    def tokenize(self, text: str) -> list[int]:
        """Text ids without special tokens; special-token strings in the text stay plain text."""
        from mmdlm.data.tokenizers import TextEncoder

        if self.pipe.tokenizer is None:
            raise RequestError("model", f"model {self.artifact_id} has no tokenizer; send token ids instead")
        with self._lock:
            if self._text_encoder is None:
                self._text_encoder = TextEncoder(self.pipe.tokenizer)
        return self._text_encoder([text])[0]

    def describe(self) -> dict[str, Any]:
        return {
            "id": self.artifact_id,
            "family": self.family,
            "bytes": self.nbytes,
            "max_seq_len": self.max_seq_len,
            "context": self.context,
            "latent_dim": self.latent_dim,
            **(
                {"channels": self.image_shape[0], "image_size": self.image_shape[1]}
                if self.image_shape
                else {}
            ),
            "device": str(self.pipe.device),
            "loaded_at": int(self.loaded_at),
        }


def module_bytes(pipe: Pipeline) -> int:
    model = pipe.model
    tensors = [*model.parameters(), *model.buffers()]
    return int(sum(t.numel() * t.element_size() for t in tensors))


class _LRU(Generic[T]):
    """Thread-safe LRU with single-flight loading and a size function."""

    def __init__(self, loader: Callable[[str], T], size: Callable[[T], int], budget: int, what: str) -> None:
        self._loader = loader
        self._size = size
        self.budget = budget
        self._what = what
        self._entries: OrderedDict[str, T] = OrderedDict()
        self._loading: dict[str, threading.Event] = {}
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0
        self.evictions = 0

    def get(self, key: str) -> T:
        while True:
            with self._lock:
                if key in self._entries:
                    self._entries.move_to_end(key)
                    self.hits += 1
                    return self._entries[key]
                waiting = self._loading.get(key)
                if waiting is None:
                    self._loading[key] = threading.Event()
                    self.misses += 1
                    break
            waiting.wait()  # someone else loads it; then look again (a failed load is retried by us)
        try:
            value = self._loader(key)
            size = self._size(value)
            if size > self.budget:
                raise RequestError(
                    "model",
                    f"{self._what} {key} needs {size} bytes but the sampler's cache holds {self.budget} "
                    "(MMDLM_SAMPLER_CACHE_BYTES)",
                    status=507,
                )
            with self._lock:
                self._entries[key] = value
                while self.total() > self.budget and len(self._entries) > 1:
                    old, _ = self._entries.popitem(last=False)
                    self.evictions += 1
                    logger.info("evicted %s %s from the cache", self._what, old)
            return value
        finally:
            with self._lock:
                self._loading.pop(key).set()

    def total(self) -> int:
        return sum(self._size(v) for v in self._entries.values())

    def values(self) -> list[T]:
        with self._lock:
            return list(self._entries.values())

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {
                "entries": len(self._entries),
                "bytes": self.total(),
                "budget": self.budget,
                "hits": self.hits,
                "misses": self.misses,
                "evictions": self.evictions,
            }


class ModelCache(_LRU[LoadedModel]):
    def __init__(self, loader: Callable[[str], LoadedModel], max_bytes: int) -> None:
        super().__init__(loader, lambda m: m.nbytes, max_bytes, "model")


class EncoderCache(_LRU[Any]):
    """Sentence encoders by config (their size is counted as 1: the budget is a number of encoders)."""

    def __init__(self, max_entries: int, device: str) -> None:
        self.device = device
        super().__init__(self._load, lambda _: 1, max_entries, "encoder")

    def _load(self, key: str) -> Any:
        from mmdlm.config.latent import EncoderConfig
        from mmdlm.encoders import load_encoder

        config = EncoderConfig.model_validate_json(key)
        logger.info("loading encoder %s on %s", config.name, config.device)
        return load_encoder(config)

    def for_config(self, config: Any) -> Any:
        """The loaded encoder of an EncoderConfig, on the sampler's device."""
        data = config.model_dump(mode="json")
        data["device"] = self.device
        return self.get(json.dumps(data, sort_keys=True))
