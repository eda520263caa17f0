"""Dashboard render benchmark: how long a job page takes, in headless Chromium, from navigation to a drawn
100,000-point curve, when the page asks the server for <= 2,000 points (the default: downsampled, extremes
kept), <= 10,000, or every point (the baseline, measured in the same run on the same stack).

A real embedded stack (API under uvicorn, SQLite); the curve is inserted as metric rows of one job. Per
variant, the median over `--repeat` fresh page loads of the page's own clock (`performance.now()` when the
charts were drawn: page load, the metrics request, JSON parse and uPlot drawing), split into the metrics
request (+ parse) and the drawing, and the points drawn.

    python bench/dashboard_render.py                   # 100,000 points, 5 loads per variant
    python bench/dashboard_render.py --points 300000 --repeat 3
"""

from __future__ import annotations

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

CHROMIUM = os.environ.get("BROWSER_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("BROWSER_CHROMEDRIVER", "/usr/bin/chromedriver")
DRAWN = """
const charts = document.getElementById('job-charts');
const chart = document.querySelector('.chart[data-metric=loss]');
return charts && chart && charts.dataset.drawnAt ? [Number(charts.dataset.drawnAt), Number(chart.dataset.points),
  Number(charts.dataset.fetchMs), Number(charts.dataset.drawMs)] : null;
"""


def _insert_curve(platform: Any, points: int) -> str:
    from sqlalchemy import insert, select

    from services.common.models import Job, Metric, User, utcnow

    now = utcnow()
    with platform.db.begin() as s:
        owner = s.execute(select(User).where(User.name == platform.user)).scalar_one()
        job = Job(owner_id=owner.id, kind="probe-train", queue="train", spec={"kind": "probe-train"},
                  status="succeeded", attempt=1, max_attempts=1, available_at=now, created_at=now, updated_at=now)  # fmt: skip
        s.add(job)
        s.flush()
        job_id = job.id
    curve = [4.0 * math.exp(-i / 20_000) + 0.1 * math.sin(i / 50) for i in range(points)]
    with platform.db.begin() as s:
        for start in range(0, points, 50_000):
            rows = [{"job_id": job_id, "step": i + 1, "name": "loss", "value": curve[i], "created_at": now}
                    for i in range(start, min(points, start + 50_000))]  # fmt: skip
            s.execute(insert(Metric), rows)
    return job_id


def _driver() -> Any:
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1400,900", "--disable-extensions"):  # fmt: skip
        options.add_argument(arg)
    return webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)


def _load(driver: Any, url: str, timeout_s: float = 120.0) -> list[float]:
    """[page -> curve ms, points drawn, metrics request + parse ms, drawing ms] of one fresh page load."""
    driver.get("about:blank")
    driver.get(url)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = driver.execute_script(DRAWN)
        if found:
            return [float(v) for v in found]
        time.sleep(0.02)
    raise TimeoutError(f"no chart drawn at {url} after {timeout_s}s")


def run(points: int, repeat: int, variants: list[str]) -> dict[str, Any]:
    from tests.utils.harness import Backend, Platform

    home = Path(tempfile.mkdtemp(prefix="bench-dashboard-"))
    backend = Backend("embedded", {"MMDLM_HOME": str(home / "home")})
    rows: list[dict[str, Any]] = []
    with Platform(backend, home / "p", workers_queues=[]) as platform:
        job_id = _insert_curve(platform, points)
        driver = _driver()
        try:
            driver.get(f"{platform.url}/ui")
            driver.execute_script("sessionStorage.setItem('mmdlm.token', arguments[0])", platform.token)
            for variant in variants:
                url = f"{platform.url}/ui#/jobs/{job_id}?points={variant}"
                _load(driver, url)  # warm-up: caches, JIT
                loads = [_load(driver, url) for _ in range(repeat)]
                times = [load[0] for load in loads]
                rows.append({"max_points": variant, "points_drawn": int(loads[-1][1]),
                             "page_to_curve_ms": statistics.median(times), "min_ms": min(times), "max_ms": max(times),
                             "fetch_ms": statistics.median(load[2] for load in loads),
                             "draw_ms": statistics.median(load[3] for load in loads)})  # fmt: skip
        finally:
            driver.quit()
    base = next(r for r in rows if r["max_points"] == "all")
    for row in rows:
        row["ratio_vs_all"] = row["page_to_curve_ms"] / base["page_to_curve_ms"]
    return {
        "backend": "sqlite",
        "points": points,
        "repeat": repeat,
        "load_avg": os.getloadavg(),
        "rows": rows,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--points", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--variants", nargs="+", default=["2000", "10000", "all"])
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "dashboard_render.json")
    args = parser.parse_args()
    if "all" not in args.variants:
        args.variants.append("all")
    result = run(args.points, args.repeat, args.variants)
    print(f"job page in headless Chromium, one curve of {result['points']:,} points, median of {result['repeat']} "
          f"loads, load average {result['load_avg'][0]:.2f}")  # fmt: skip
    print(
        f"{'points':>8} {'drawn':>8} {'page->curve ms':>15} {'min':>7} {'max':>7} {'fetch ms':>9} {'draw ms':>8} {'x vs all':>9}"
    )
    for row in result["rows"]:
        print(f"{row['max_points']:>8} {row['points_drawn']:>8} {row['page_to_curve_ms']:>15.0f} "
              f"{row['min_ms']:>7.0f} {row['max_ms']:>7.0f} {row['fetch_ms']:>9.0f} {row['draw_ms']:>8.1f} "
              f"{row['ratio_vs_all']:>9.3f}")  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"(written to {args.out})")


if __name__ == "__main__":
    main()
