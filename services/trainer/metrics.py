"""Rank 0's `metrics.jsonl` into the job's metrics table and progress, with one row per (name, step).

Names: a train line gives every numeric field but `step`/`time` under its own name (`loss`, `elbo`, the
family's ELBO terms, `lr`, `grad_norm`, `tokens_per_s`, `steps_per_s`, `tokens_seen`, ...); a validation
line gives `val_nll`, `val_bits_per_token`, `val_ppl`.

Resume without duplicates (decided here, documented in docs/ARCHITECTURE.md): when an attempt resumes
from the checkpoint at step K, the rows of steps > K written by the interrupted attempt are DELETED
before training restarts (they are re-run, and the re-run's values replace them), and any rows of steps
<= K that the interrupted attempt logged but never flushed are restored from the metrics snapshot stored
with the checkpoint. The curve a user reads is therefore exactly the curve of an uninterrupted run.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from sqlalchemy import delete, func, select

from services.common.context import JobContext
from services.common.errors import LeaseLostError
from services.common.lifecycle import lease_is_held
from services.common.models import Metric

logger = logging.getLogger(__name__)

VALIDATION_KEYS = ("nll", "bits_per_token", "ppl")
_SKIP = frozenset({"step", "time"})


def metric_values(record: dict[str, Any]) -> tuple[int, dict[str, float]] | None:
    """(step, {name: value}) of one metrics line; None for event lines (resume markers)."""
    if "event" in record or "step" not in record:
        return None
    step = int(record["step"])
    if record.get("split") == "validation":
        return step, {f"val_{k}": float(record[k]) for k in VALIDATION_KEYS if _is_number(record.get(k))}
    return step, {k: float(v) for k, v in record.items() if k not in _SKIP and _is_number(v)}


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def parse_lines(lines: Iterable[str]) -> list[dict[str, Any]]:
    records = []
    for line in lines:
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            logger.warning("unparseable metrics line skipped: %.200s", line)
    return records


class MetricsTail:
    """Follows a growing metrics.jsonl from `offset`; `poll()` reports the complete lines added since."""

    def __init__(self, path: Path, ctx: JobContext, total_steps: int, offset: int = 0) -> None:
        self.path = path
        self.ctx = ctx
        self.total = total_steps
        self.offset = offset
        self._partial = b""
        self.last_step = 0
        self.first_step_seen = False

    def poll(self) -> int:
        """Forward new lines to ctx.metrics / ctx.progress; returns how many lines were read."""
        try:
            with self.path.open("rb") as handle:
                handle.seek(self.offset)
                data = handle.read()
        except FileNotFoundError:
            return 0
        self.offset += len(data)
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()
        for record in parse_lines(raw.decode("utf-8", errors="replace") for raw in lines):
            parsed = metric_values(record)
            if parsed is None:
                if record.get("event") == "resume":
                    self.ctx.log(f"resumed from {record.get('from')} at step {record.get('step')}")
                continue
            step, values = parsed
            if values:
                self.ctx.metrics(step, values)
            if record.get("split") != "validation":
                self.first_step_seen = True
                self.last_step = max(self.last_step, step)
                loss = values.get("loss")
                message = f"training, loss {loss:.4f}" if loss is not None else "training"
                self.ctx.progress(step, self.total, message)
        return len(lines)


def reconcile(ctx: JobContext, resume_step: int, snapshot: list[str], local_metrics: Path) -> int:
    """Make the job's metrics rows and the local metrics.jsonl agree with a resume at `resume_step`.

    Returns the byte offset at which the new attempt's lines start in `local_metrics`.
    """
    kept = [r for r in parse_lines(snapshot) if "event" not in r and int(r.get("step", 0)) <= resume_step]
    with ctx.db.begin() as s:
        if not lease_is_held(s, ctx.lease, lock=True):
            raise LeaseLostError(f"job {ctx.job_id}: lease lost before its metrics were reconciled")
        removed = s.execute(
            delete(Metric).where(Metric.job_id == ctx.job_id, Metric.step > resume_step)
        ).rowcount
        have = dict(
            s.execute(
                select(Metric.name, func.max(Metric.step))
                .where(Metric.job_id == ctx.job_id)
                .group_by(Metric.name)
            ).all()
        )
    restored = 0
    for record in kept:
        parsed = metric_values(record)
        if parsed is None:
            continue
        step, values = parsed
        missing = {k: v for k, v in values.items() if step > have.get(k, -1)}
        if missing:
            ctx.metrics(step, missing)
            restored += 1
    if removed or restored:
        ctx.log(
            f"metrics: removed {removed} rows past step {resume_step}, restored {restored} lines up to it"
        )
    local_metrics.parent.mkdir(parents=True, exist_ok=True)
    text = "".join(json.dumps(r) + "\n" for r in kept)
    local_metrics.write_text(text, encoding="utf-8")
    return len(text.encode("utf-8"))
