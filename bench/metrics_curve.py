"""Dashboard curve benchmark: GET /v1/jobs/{id}/metrics of a 100,000-point curve, every point vs
`max_points` (the dashboard asks for 2,000), in one process, on the embedded default (SQLite) and, with
`--database-url`, on PostgreSQL.

Per variant, the median over `--repeat` requests (in-process ASGI client, so no network): server time of
the request, response bytes, and the client's JSON parse time (what a browser pays before drawing), as
ratios against the every-point answer measured in the same run. Each `max_points` is asked twice: of the
gateway as it is (`sql`: the database cuts the curve, crud.job_metric_points) and of a baseline route added
to the same app for this run (`python`: every row read, then services.api.downsample in Python, as the
gateway did before); `vs python` is the server-time ratio of the two, and both must send the same points.

    python bench/metrics_curve.py                      # SQLite, 100,000 points, 7 repeats
    python bench/metrics_curve.py --points 300000 --database-url postgresql+psycopg://...
"""

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def add_python_baseline(app: Any) -> None:
    """GET /bench/python-metrics/{id}?max_points=N: the metrics route as it was before the cut moved into
    SQL (every row read, then bucketed in Python), with the same auth, ownership check and JSON. (This file
    has no `from __future__ import annotations`: FastAPI must see the locally imported dependencies.)"""
    from fastapi import HTTPException, Response

    from services.api.deps import CurrentUser, StateDep
    from services.api.downsample import downsample_indices
    from services.api.schemas import MetricSeries, MetricsPublic, finite_or_none
    from services.common import crud

    def python_metrics(job_id: str, max_points: int, user: CurrentUser, state: StateDep) -> Response:
        with state.db.read() as conn:
            if crud.job_status(conn, job_id, user.id) is None:
                raise HTTPException(404, "job not found")
            rows = crud.job_metric_columns(conn, job_id, limit=1_000_000)  # its old read bound
        columns: dict[str, tuple[list[int], list[float]]] = {}
        for metric, step, value in rows:
            steps, values = columns.setdefault(metric, ([], []))
            steps.append(step)
            values.append(value)
        series = {}
        for metric, (steps, values) in columns.items():
            keep = downsample_indices(values, max_points, steps)
            series[metric] = MetricSeries(
                steps=[steps[i] for i in keep], values=[finite_or_none(values[i]) for i in keep],
                count=len(steps), downsampled=len(keep) < len(steps),
            )  # fmt: skip
        body = MetricsPublic(job_id=job_id, series=series, max_points=max_points)
        return Response(body.model_dump_json(), media_type="application/json")

    app.add_api_route("/bench/python-metrics/{job_id}", python_metrics, methods=["GET"])


def run(points: int, repeat: int, max_points: list[int], database_url: str | None) -> dict[str, Any]:
    from fastapi.testclient import TestClient
    from sqlalchemy import insert, text

    from services.api.main import create_app
    from services.common.auth import create_token, get_or_create_user
    from services.common.db import Database
    from services.common.migrate import upgrade
    from services.common.models import Job, Metric, utcnow
    from services.common.settings import Settings

    home = Path(tempfile.mkdtemp(prefix="bench-metrics-"))
    settings = Settings(_env_file=None, home=home, **({"database_url": database_url} if database_url else {}))  # type: ignore[call-arg]
    upgrade(settings.database_url)
    db = Database(settings.database_url, pool_size=2)
    now = utcnow()
    with db.begin() as s:
        owner = get_or_create_user(s, "bench")
        token = create_token(s, "bench")[1]
        job = Job(owner_id=owner.id, kind="train", queue="train", spec={}, status="succeeded", available_at=now,
                  created_at=now, updated_at=now)  # fmt: skip
        s.add(job)
        s.flush()
        job_id = job.id
    curve = [4.0 * math.exp(-i / 20_000) + 0.1 * math.sin(i / 50) for i in range(points)]
    with db.begin() as s:
        for start in range(0, points, 50_000):
            s.execute(insert(Metric), [{"job_id": job_id, "step": i + 1, "name": "loss", "value": curve[i],
                                        "created_at": now} for i in range(start, min(points, start + 50_000))])  # fmt: skip
    if not settings.is_sqlite:
        with db.engine.connect() as conn:  # what autovacuum does soon after a bulk insert
            conn.execute(text("ANALYZE metrics"))
            conn.commit()
    headers = {"Authorization": f"Bearer {token}"}
    rows: list[dict[str, Any]] = []
    app = create_app(settings)
    add_python_baseline(app)
    variants = [(None, "sql")] + [(m, path) for m in max_points for path in ("python", "sql")]
    with TestClient(app) as client:
        client.get(f"/v1/jobs/{job_id}/metrics", params={"max_points": 10}, headers=headers)  # warm-up
        answers: dict[tuple[int | None, str], Any] = {}
        for variant, path in variants:
            params = {} if variant is None else {"max_points": variant}
            url = f"/v1/jobs/{job_id}/metrics" if path == "sql" else f"/bench/python-metrics/{job_id}"
            server, parse, size, drawn = [], [], 0, 0
            for _ in range(repeat):
                started = time.perf_counter()
                response = client.get(url, params=params, headers=headers)
                server.append(time.perf_counter() - started)
                assert response.status_code == 200, response.text
                body = response.content
                started = time.perf_counter()
                data = json.loads(body)
                parse.append(time.perf_counter() - started)
                size, drawn = len(body), len(data["series"]["loss"]["steps"])
            answers[variant, path] = data["series"]
            rows.append({"max_points": variant, "path": path, "points_sent": drawn, "bytes": size,
                         "server_ms": statistics.median(server) * 1000, "parse_ms": statistics.median(parse) * 1000})  # fmt: skip
    for m in max_points:  # the cut moved, the answer did not
        assert answers[m, "sql"] == answers[m, "python"], f"sql and python answers differ at max_points={m}"
    base = rows[0]
    python_ms = {row["max_points"]: row["server_ms"] for row in rows if row["path"] == "python"}
    for row in rows:
        row["server_ratio"] = row["server_ms"] / base["server_ms"]
        row["bytes_ratio"] = row["bytes"] / base["bytes"]
        row["vs_python"] = row["server_ms"] / python_ms[row["max_points"]] if row["max_points"] else None
    db.engine.dispose()
    return {"backend": "sqlite" if settings.is_sqlite else "postgresql", "points": points, "repeat": repeat,
            "load_avg": os.getloadavg(), "rows": rows}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--points", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--max-points", type=int, nargs="+", default=[2000, 500])
    parser.add_argument("--database-url", default=None, help="default: SQLite in a temporary folder")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "metrics_curve.json")
    args = parser.parse_args()
    result = run(args.points, args.repeat, args.max_points, args.database_url)
    print(f"{result['backend']}: one curve of {result['points']:,} points, median of {result['repeat']}, "
          f"load average {result['load_avg'][0]:.2f}")  # fmt: skip
    print(f"{'max_points':>10} {'path':>6} {'sent':>8} {'bytes':>10} {'server ms':>10} {'parse ms':>9} "
          f"{'server x':>9} {'bytes x':>8} {'vs python':>9}")  # fmt: skip
    for row in result["rows"]:
        vs_python = "" if row["vs_python"] is None else f"{row['vs_python']:.3f}"
        print(f"{str(row['max_points'] or 'all'):>10} {row['path']:>6} {row['points_sent']:>8} {row['bytes']:>10} "
              f"{row['server_ms']:>10.1f} {row['parse_ms']:>9.2f} {row['server_ratio']:>9.3f} {row['bytes_ratio']:>8.4f} "
              f"{vs_python:>9}")  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"(written to {args.out})")


if __name__ == "__main__":
    main()
