"""Where metric lines go: one small protocol with a JSONL file, the console and a fan-out.

Only rank 0 builds real loggers; the other ranks get `NullLogger`. A line is a flat dict of JSON scalars
(`step`, `loss`, `lr`, ...); validation lines carry `"split": "validation"`.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any, Protocol

log = logging.getLogger("mmdlm.training")


class MetricLogger(Protocol):
    def log(self, record: dict[str, Any]) -> None: ...

    def close(self) -> None: ...


class NullLogger:
    def log(self, record: dict[str, Any]) -> None:
        pass

    def close(self) -> None:
        pass


def _json_safe(value: Any) -> Any:
    # JSON has no NaN/inf; keep the line parseable by strict readers (the trainer service, jq).
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


class JsonlLogger:
    """Appends one JSON object per line and flushes it, so a tailing reader sees each line at once."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.path.open("a", encoding="utf-8")

    def log(self, record: dict[str, Any]) -> None:
        self._file.write(json.dumps({k: _json_safe(v) for k, v in record.items()}) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


class ConsoleLogger:
    """A compact progress line per record through `logging` (the CLI installs a rich handler)."""

    def log(self, record: dict[str, Any]) -> None:
        parts = []
        for key, value in record.items():
            if key in {"time", "event"}:
                continue
            parts.append(f"{key}={value:.4g}" if isinstance(value, float) else f"{key}={value}")
        log.info(" ".join(parts))

    def close(self) -> None:
        pass


class FanOut:
    def __init__(self, *loggers: MetricLogger) -> None:
        self.loggers = loggers

    def log(self, record: dict[str, Any]) -> None:
        for logger in self.loggers:
            logger.log(record)

    def close(self) -> None:
        for logger in self.loggers:
            logger.close()


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """Parse a metrics.jsonl, keeping for each (split, step) the LAST line: after a resume the loop
    re-logs the steps past the checkpoint, and those later lines supersede the interrupted run's."""
    latest: dict[tuple[str, int], dict[str, Any]] = {}
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        record = json.loads(line)
        if "event" in record:
            continue
        latest[(record.get("split", "train"), record["step"])] = record
    return [latest[k] for k in sorted(latest, key=lambda k: (k[1], k[0]))]
