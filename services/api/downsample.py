"""Downsampling of a metric curve for drawing: at most `max_points` points that keep its extremes.

A chart a few thousand pixels wide cannot show 100,000 points; sending them all costs the network, the JSON
parser and the plot. Picking every k-th point (or averaging buckets) would hide exactly what a reader looks
for: a loss spike, a divergence, a NaN. So the series' step range is cut into equal buckets (as a chart's
pixel columns cut its x axis) and each bucket keeps its first, minimum, maximum and last point (and its
first non-finite one, drawn as a gap): every spike survives at its own step, and the curve still starts and
ends where the data does.

The gateway runs the same rule in SQL (`services.common.crud.job_metric_points`: per bucket, index seeks and
one range scan, so a 100,000-row curve never leaves the database); this module is its reference (tests
compare the two) and the bench's baseline. Integer arithmetic only, which SQL reproduces exactly on SQLite
and PostgreSQL alike: a series over steps s0..s1 cut into `buckets` has buckets `width` =
ceil((s1 - s0) / buckets) steps wide, and the point at `step` falls in bucket
min((step - s0) // width, buckets - 1); no sum passes s1, so steps near 2^63 do not overflow.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence

import numpy as np

PER_BUCKET = 4  # first, min, max, last
PER_BUCKET_WITH_GAPS = 5  # ... and the bucket's first non-finite value


def downsample_indices(
    values: Sequence[float], max_points: int, steps: Sequence[int] | None = None
) -> list[int]:
    """Indices (ascending, no repeats, at most `max_points`) of the points of `values` to keep.

    `steps` (ascending, repeats allowed) are the points' steps; default: their indices. All points when
    they fit. Fewer than 4 points allowed: the last one, then the first, then the first one at or after the
    middle step.
    """
    n = len(values)
    if max_points < 1:
        raise ValueError("max_points must be at least 1")
    if n <= max_points:
        return list(range(n))
    at = np.arange(n, dtype=np.int64) if steps is None else np.asarray(steps, dtype=np.int64)
    if len(at) != n:
        raise ValueError("steps and values differ in length")
    s0, s1 = int(at[0]), int(at[-1])
    if max_points < PER_BUCKET:
        keep = {n - 1}  # the latest value: what a one-number view wants
        if max_points >= 2:
            keep.add(0)
        if max_points >= 3:
            keep.add(bisect.bisect_left(at.tolist(), s0 + (s1 - s0) // 2))
        return sorted(keep)
    array = np.asarray(values, dtype=np.float64)
    finite = np.isfinite(array)
    # a gap is kept as its own point when there is room for 5 per bucket (not at max_points == 4)
    has_gaps = not bool(finite.all()) and max_points >= PER_BUCKET_WITH_GAPS
    buckets = max_points // (PER_BUCKET_WITH_GAPS if has_gaps else PER_BUCKET)
    width = 1 if s1 == s0 else (s1 - s0 - 1) // buckets + 1  # ceil((s1 - s0) / buckets), no overflow
    bucket = np.minimum((at - s0) // width, buckets - 1)  # the last bucket takes s1 itself
    edges = np.flatnonzero(np.diff(bucket)) + 1  # where a new (non-empty) bucket starts
    # +inf / -inf never win a min / max: a non-finite point is kept as a gap, not as an extreme
    for_min = np.where(finite, array, np.inf)
    for_max = np.where(finite, array, -np.inf)
    keep_list: list[int] = []
    for start, stop in zip([0, *edges.tolist()], [*edges.tolist(), n], strict=True):
        picked = {start, stop - 1}
        window = finite[start:stop]
        if window.any():
            picked.add(start + int(np.argmin(for_min[start:stop])))
            picked.add(start + int(np.argmax(for_max[start:stop])))
        if has_gaps and not window.all():
            picked.add(start + int(np.argmin(window)))  # first False
        keep_list.extend(sorted(picked))
    return keep_list
