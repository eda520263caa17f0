"""GET /v1/jobs/{id}/metrics: a job's metric series as columns, optionally downsampled for drawing.

With `max_points`, each series longer than that is cut to at most `max_points` points that keep every
bucket's first, minimum, maximum and last value, so a 100,000-step curve arrives as a few thousand points
with its spikes where they were; `count` says how many were stored. The cut runs in the database
(`crud.job_metric_points`, the rule of services.api.downsample: equal step ranges): reading every row into
Python to keep a few thousand was nearly all of a long curve's time.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Response, status
from pydantic import Field

from mmdlm.config.base import INT64_MAX
from services.api.deps import CurrentUser, StateDep
from services.api.schemas import MetricSeries, MetricsPublic, finite_or_none
from services.common import crud
from services.common.http_errors import responses

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

MAX_POINTS = 10_000
READ_LIMIT = 100_000
"""Rows read without `max_points` (every point is sent, so the answer stays bounded). With it, the database
sends at most `max_points` rows per series, whatever the series' length."""


@router.get("/{job_id}/metrics", response_model=MetricsPublic, responses=responses(404))
def get_metrics(
    job_id: str,
    user: CurrentUser,
    state: StateDep,
    name: Annotated[
        list[Annotated[str, Field(max_length=128)]] | None,
        Query(max_length=64, description="a metric name, repeatable (at most 64); default: all"),
    ] = None,
    since_step: Annotated[int | None, Query(ge=0, le=INT64_MAX)] = None,
    max_points: Annotated[
        int | None,
        Query(ge=1, le=MAX_POINTS, description="downsample each longer series to at most this many points"),
    ] = None,
) -> Response:
    """Metric series of a job as columns per name (`name` repeatable to select)."""
    with state.db.read() as conn:
        if crud.job_status(conn, job_id, user.id) is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, "job not found")
        if max_points is None:
            rows = crud.job_metric_columns(
                conn, job_id, names=name or [], since_step=since_step, limit=READ_LIMIT
            )
        else:
            rows = crud.job_metric_points(
                conn, job_id, names=name or [], since_step=since_step, max_points=max_points
            )
    # (name, step, value[, count]) rows in name then step order -> one column pair per name
    columns: dict[str, tuple[list[int], list[float], list[int]]] = {}
    for metric, step, value, *count in rows:
        steps, values, counts = columns.setdefault(metric, ([], [], count))
        steps.append(step)
        values.append(value)
    series: dict[str, MetricSeries] = {}
    for metric, (steps, values, counts) in columns.items():
        count = int(counts[0]) if counts else len(steps)
        series[metric] = MetricSeries(
            steps=steps, values=[finite_or_none(v) for v in values], count=count,
            downsampled=len(steps) < count,
        )  # fmt: skip
    body = MetricsPublic(job_id=job_id, series=series, max_points=max_points)
    return Response(body.model_dump_json(), media_type="application/json")
