"""Downsampling of a metric curve for drawing: at most `max_points` points that keep its extremes.

A chart a few thousand pixels wide cannot show 100,000 points; sending them all costs the network, the JSON
parser and the plot. Picking every k-th point (or averaging buckets) would hide exactly what a reader looks
for: a loss spike, a divergence, a NaN. So the series is cut into equal buckets of consecutive points and
each bucket keeps its first, minimum, maximum and last point (and its first non-finite one, drawn as a gap):
every spike survives at its own step, and the curve still starts and ends where the data does.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

PER_BUCKET = 4  # first, min, max, last
PER_BUCKET_WITH_GAPS = 5  # ... and the bucket's first non-finite value


def downsample_indices(values: Sequence[float], max_points: int) -> list[int]:
    """Indices (ascending, no repeats, at most `max_points`) of the points of `values` to keep.

    All of them when they fit. Fewer than 4 points allowed: evenly spaced ones, first and last included.
    """
    n = len(values)
    if max_points < 1:
        raise ValueError("max_points must be at least 1")
    if n <= max_points:
        return list(range(n))
    if max_points < PER_BUCKET:
        if max_points == 1:
            return [n - 1]  # the latest value: what a one-number view wants
        return sorted({round(i * (n - 1) / (max_points - 1)) for i in range(max_points)})
    array = np.asarray(values, dtype=np.float64)
    finite = np.isfinite(array)
    has_gaps = not bool(finite.all())
    buckets = max_points // (PER_BUCKET_WITH_GAPS if has_gaps else PER_BUCKET)
    edges = np.linspace(0, n, buckets + 1).round().astype(np.int64)
    # +inf / -inf never win a min / max: a non-finite point is kept as a gap, not as an extreme
    for_min = np.where(finite, array, np.inf)
    for_max = np.where(finite, array, -np.inf)
    keep: list[int] = []
    for start, stop in zip(edges[:-1].tolist(), edges[1:].tolist(), strict=True):
        if stop <= start:
            continue
        picked = {start, stop - 1}
        window = finite[start:stop]
        if window.any():
            picked.add(start + int(np.argmin(for_min[start:stop])))
            picked.add(start + int(np.argmax(for_max[start:stop])))
        if has_gaps and not window.all():
            picked.add(start + int(np.argmin(window)))  # first False
        keep.extend(sorted(picked))
    return keep
