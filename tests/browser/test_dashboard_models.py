"""The models pages in a real browser with evaluations in the database: the compare view (the table of
GET /v1/models/compare, sortable by a click on a column header, metrics measured under a different
protocol flagged), the steps-sweep plot (gen PPL vs sampling steps) and the gen PPL vs entropy scatter.

A real `evaluate` job costs ~26 s of CPU per model, too much for the browser suite: the evaluations are
written the way the evaluate runner writes them instead (services/sampler/evaluate.py): a library
`EvalReport`, flattened by the runner's own `summarize` / `protocol_groups`, published through
services.common.artifacts.publish_file as the `evaluation` artifact of a (stand-in) evaluate job. Three
models: two measured under one protocol, the third's validation NLL under another (fewer ELBO time
samples), each with a steps sweep. Everything the page shows is compared with what the API answers."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from services.common import artifacts, lifecycle
from services.common.lifecycle import Lease
from services.common.models import Job, JobStatus, User, utcnow
from tests.browser.conftest import UiStack
from tests.browser.test_dashboard import api, element, js, sign_in, wait_for
from tests.utils.harness import Platform

pytestmark = [pytest.mark.browser, pytest.mark.integration]

Shot = Callable[[str], Path]
SWEEP = re.compile(r"^sweep_(\d+)_(gen_ppl|entropy)$")
DATASET = "artifact:" + "d" * 32  # the evaluations' validation set (a protocol field only: never staged)


# --- evaluations written the way `kind: evaluate` writes them ------------------------------------------------


@dataclass(frozen=True)
class Measured:
    """What one evaluation measured: validation NLL, generative PPL + entropy at the default steps, a steps
    sweep {steps: (gen_ppl, entropy)}; `time_samples` is the NLL protocol field the third model differs in."""

    family: str
    nll: float
    gen: tuple[float, float]
    sweep: dict[int, tuple[float, float]]
    time_samples: int = 8
    data_reference: bool = True


MODELS = (
    Measured("mdlm", 3.61, (142.7, 5.31), {8: (12340.2, 5.52), 16: (310.4, 5.44), 32: (190.2, 5.37), 64: (142.7, 5.31)}),
    Measured("gidd", 3.88, (121.3, 5.02), {8: (402.9, 5.48), 16: (251.0, 5.30), 32: (160.6, 5.15), 64: (121.3, 5.02)}),
    # low PPL at low entropy: the mode collapse the scatter is there to show; NLL with 2 time samples
    Measured("hdlm", 9.4208, (38.2, 3.11), {8: (95.1, 3.62), 16: (61.4, 3.35), 32: (45.7, 3.20), 64: (38.2, 3.11)},
             time_samples=2, data_reference=False),
)  # fmt: skip


def _report(model_id: str, m: Measured) -> Any:
    """A library EvalReport as `mmdlm.eval.evaluate.evaluate` returns it (paths already localized)."""
    from mmdlm.eval.results import EvalProtocol, EvalReport, GenerativeResult, NLLResult, SweepResult

    common = {"model": f"artifact:{model_id}", "family": m.family, "context_length": 32, "precision": "fp32",
              "tokens_seen": 3_145_728}  # fmt: skip
    nll_protocol = EvalProtocol(**common, dataset=DATASET, tokenizer="gpt2", split="validation",
                                estimator="elbo", num_time_samples=m.time_samples, seed=0)  # fmt: skip

    def generative(
        steps: int | None, gen_ppl: float, entropy: float, model: dict[str, Any] = common
    ) -> GenerativeResult:
        settings = {"steps": steps, "temperature": 1.0, "seed": 0, "batch_size": 8} if steps else None
        protocol = EvalProtocol(
            **model, sampling_steps=steps, sampler_precision="float64" if steps else None,
            reference_model="smollm2-135m", num_samples=16, seed=0, sample_settings=settings,
        )  # fmt: skip
        return GenerativeResult(
            gen_ppl=gen_ppl, gen_nll=math.log(gen_ppl), scored_tokens=16 * 30, unigram_entropy=entropy,
            pooled_entropy=entropy + 0.9, distinct_1=0.41, distinct_2=0.83, distinct_3=0.95, repetition_4=0.02,
            num_samples=16, mean_sample_tokens=31.0, protocol=protocol,
        )  # fmt: skip

    rows = [generative(steps, *numbers) for steps, numbers in sorted(m.sweep.items())]
    held_out = {"dataset": DATASET, "split": "validation", "context_length": 32, "precision": "fp32"}
    return EvalReport(
        nll=NLLResult.from_sums(m.nll * 4096, tokens=4096, sequences=128, protocol=nll_protocol),
        generative=generative(64, *m.gen),
        data_reference=generative(None, 55.4, 5.71, model=held_out) if m.data_reference else None,
        sweep=SweepResult(rows=rows, protocol=rows[0].protocol.model_copy(update={"sampling_steps": None})),
    )


def _stand_in_job(platform: Platform, kind: str, queue: str, spec: dict[str, Any]) -> tuple[Lease, int]:
    """A running job of the platform's user holding a lease, as a worker holds one while it publishes."""
    with platform.db.begin() as s:
        owner = s.execute(select(User).where(User.name == platform.user)).scalar_one()
        now = utcnow()
        job = Job(
            owner_id=owner.id, kind=kind, queue=queue, spec=spec, status=JobStatus.running.value, attempt=1,
            max_attempts=1, lease_owner="tests", lease_expires_at=now + timedelta(hours=1), available_at=now,
            created_at=now, updated_at=now,
        )  # fmt: skip
        s.add(job)
        s.flush()
        return Lease(job_id=job.id, owner="tests", attempt=1), owner.id


def publish_model(platform: Platform, folder: Path, family: str) -> str:
    """A `model` artifact with the metadata the trainer records (the weights are never loaded here)."""
    folder.mkdir(parents=True)
    trained = {"step": 2000, "tokens_seen": 3_145_728}
    (folder / "config.json").write_text(json.dumps({"family": family, "trained": trained}))
    lease, owner_id = _stand_in_job(platform, "train", "train", {"kind": "train"})
    model_id = artifacts.publish_directory(
        platform.db, platform.store(), lease=lease, owner_id=owner_id, local_dir=folder, kind="model",
        name="model", metadata={"family": family, **trained},
    )  # fmt: skip
    assert lifecycle.finish_succeeded(platform.db, lease)
    return model_id


def publish_evaluation(platform: Platform, folder: Path, model_id: str, m: Measured) -> str:
    """What services/sampler/evaluate.py:run publishes, through the same functions."""
    from services.sampler.evaluate import ARTIFACT_NAME, FORMAT, protocol_groups, summarize

    report = _report(model_id, m).to_dict()
    summary, protocols = summarize(report, {}), protocol_groups(report, {})
    spec = {"kind": "evaluate", "model": model_id, "dataset": None}
    lease, owner_id = _stand_in_job(platform, "evaluate", "sample", spec)
    folder.mkdir(parents=True)
    path = folder / "evaluation.json"
    document = {"format": FORMAT, "model": model_id, "family": m.family, "dataset": None, "spec": spec,
                "summary": summary, "protocols": protocols, "report": report, "latent": {}, "images": {}}  # fmt: skip
    path.write_text(json.dumps(document, indent=2) + "\n")
    evaluation = artifacts.publish_file(
        platform.db, platform.store(), lease=lease, owner_id=owner_id, local_path=path, kind="evaluation",
        name=ARTIFACT_NAME, metadata={"format": FORMAT, "model": model_id, "family": m.family, "dataset": None,
                                      "summary": summary, "protocols": protocols},
    )  # fmt: skip
    assert lifecycle.finish_succeeded(platform.db, lease)
    return evaluation


@pytest.fixture(scope="module")
def evaluated(ui_stack: UiStack, tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """Three evaluated models of the stack's user (ids in MODELS' order); the second also has an older
    evaluation under other numbers, which the latest one replaces in every table."""
    root = tmp_path_factory.mktemp(f"evaluated-{ui_stack.backend}")
    ids = [publish_model(ui_stack.platform, root / f"model-{i}", m.family) for i, m in enumerate(MODELS)]
    older = Measured("gidd", 4.5, (300.0, 5.6), {8: (900.0, 5.9), 64: (300.0, 5.6)})
    publish_evaluation(ui_stack.platform, root / "older", ids[1], older)
    for i, (model_id, m) in enumerate(zip(ids, MODELS, strict=True)):
        publish_evaluation(ui_stack.platform, root / f"evaluation-{i}", model_id, m)
    return ids


# --- what the plots must draw, derived from the API's numbers ----------------------------------------------------


def _label(family: str | None, model_id: str) -> str:
    return f"{family or '?'} {model_id[:8]}"


def _sweep(values: dict[str, Any]) -> dict[int, dict[str, float]]:
    out: dict[int, dict[str, float]] = {}
    for key, value in values.items():
        if (match := SWEEP.match(key)) and value is not None:
            out.setdefault(int(match[1]), {})[match[2]] = value
    return out


def expected_sweep(items: list[tuple[str, dict[str, Any]]]) -> list[tuple[str, float, float]]:
    """One point per (model, steps) pair with a gen PPL: (label, steps, gen PPL)."""
    return sorted(
        (label, float(steps), r["gen_ppl"])
        for label, values in items
        for steps, r in _sweep(values).items()
        if "gen_ppl" in r
    )


def expected_scatter(items: list[tuple[str, dict[str, Any]]]) -> list[tuple[str, float, float]]:
    """Per model its default-steps point and one per sweep step (entropy, gen PPL); the held-out text's
    reference point once."""
    points = []
    for label, values in items:
        if values.get("gen_entropy") is not None and values.get("gen_ppl") is not None:
            points.append((label, values["gen_entropy"], values["gen_ppl"]))
        points += [(label, r["entropy"], r["gen_ppl"]) for r in _sweep(values).values() if len(r) == 2]
    reference = next(
        (v for _, v in items if v.get("data_entropy") is not None and v.get("data_gen_ppl") is not None), None
    )
    if reference is not None:
        points.append(("data (reference)", reference["data_entropy"], reference["data_gen_ppl"]))
    return sorted(points)


def drawn(browser: Any, plot_id: str) -> list[tuple[str, float, float]]:
    dots = js(
        browser,
        "const svg = document.getElementById(arguments[0]);"
        "return [svg.dataset.points, [...svg.querySelectorAll('circle.dot')]"
        ".map(d => [d.dataset.series, d.dataset.x, d.dataset.y])]",
        plot_id,
    )
    assert int(dots[0]) == len(dots[1]), f"{plot_id}: data-points says {dots[0]}, {len(dots[1])} dots drawn"
    return sorted((series, float(x), float(y)) for series, x, y in dots[1])


# --- the compare view --------------------------------------------------------------------------------------------


ROW_IDS = "return [...document.querySelectorAll('#compare-table tbody tr')].map(r => r.dataset.modelId)"


def _shown_number(cell: str) -> float | None:
    cell = cell.replace("⚠", "").replace(",", "").strip()
    return None if cell == "—" else float(cell)


def _sorted_ids(rows: list[dict[str, Any]], column: str, descending: bool) -> list[str]:
    """The order a click on `column` must give: by value (stable), models without it last either way."""
    key = (lambda r: r["model"]) if column == "model" else (lambda r: r["values"][column])
    present = [r for r in rows if key(r) is not None]
    return [r["model"] for r in sorted(present, key=key, reverse=descending)] + [
        r["model"] for r in rows if key(r) is None
    ]


def test_compare_view_shows_the_compare_api_sorted_flagged_and_plotted(
    ui_stack: UiStack, evaluated: list[str], browser: Any, screenshot: Shot
) -> None:
    sign_in(browser, ui_stack, "#/models")
    for model_id in evaluated:
        element(browser, f'tr[data-model-id="{model_id}"] input.compare-pick').click()
    element(browser, "#compare-button").click()
    wait_for(browser, "return document.querySelectorAll('#compare-table tbody tr').length === arguments[0]",
             len(evaluated), what="the compare rows")  # fmt: skip
    assert ui_stack.token not in browser.current_url
    # the picked models travel in the hash (ids only, never the token); the API answers for the same ids
    ids = js(browser, "return new URLSearchParams(location.hash.split('?')[1]).get('ids')")
    assert sorted(ids.split(",")) == sorted(evaluated)
    table = api(ui_stack, "GET", "/v1/models/compare", params={"ids": ids}).json()
    rows = table["rows"]

    # rows and columns as the API lists them, each number as the API gives it (5 significant digits)
    assert js(browser, ROW_IDS) == [r["model"] for r in rows]
    columns = js(
        browser,
        "return [...document.querySelectorAll('#compare-table th[data-sort]')].map(t => t.dataset.sort)",
    )
    assert columns == ["model", *table["columns"]]
    assert {"val_ppl", "gen_ppl", "gen_entropy", "data_gen_ppl", "sweep_8_gen_ppl"} <= set(table["columns"])
    cells = js(
        browser,
        "return [...document.querySelectorAll('#compare-table tbody td[data-column]')]"
        ".map(td => [td.closest('tr').dataset.modelId, td.dataset.column, td.textContent,"
        " td.classList.contains('not-comparable')])",
    )
    assert len(cells) == len(rows) * len(table["columns"])
    values = {(r["model"], c): v for r in rows for c, v in r["values"].items()}
    for model_id, column, shown, _ in cells:
        number, expected = _shown_number(shown), values[model_id, column]
        assert (number is None) == (expected is None), (model_id, column, shown, expected)
        if expected is not None:
            assert math.isclose(number, expected, rel_tol=1e-3), (model_id, column, shown, expected)
    # flagged cells are exactly the API's: here the NLL columns (the third model used 2 time samples)
    flagged = {(model_id, column) for model_id, column, _, flag in cells if flag}
    assert flagged == {(r["model"], c) for r in rows for c in r["not_comparable"]}
    assert table["groups"]["nll"]["mismatches"] == {
        "num_time_samples": dict(zip(evaluated, (8, 8, 2), strict=True))
    }
    assert flagged and all(column.startswith("val_") for _, column in flagged)
    assert table["groups"]["generative"]["comparable"] and not table["comparable"]
    verdict = js(browser, "return document.getElementById('compare-verdict').className")
    assert verdict == ("ok" if table["comparable"] else "warn")

    # a click on a header sorts ascending, a second click descending; models without the value stay last
    for column in ("gen_ppl", "data_gen_ppl", "val_ppl", "model"):
        for descending in (False, True):
            element(browser, f'#compare-table th[data-sort="{column}"]').click()
            assert js(browser, ROW_IDS) == _sorted_ids(rows, column, descending), (column, descending)
            state = "sorted-desc" if descending else "sorted-asc"
            assert (
                js(browser, f"return document.querySelector('#compare-table th.{state}')?.dataset.sort")
                == column
            )
    element(browser, '#compare-table th[data-sort="gen_ppl"]').click()
    assert js(browser, ROW_IDS) == _sorted_ids(rows, "gen_ppl", False)
    screenshot(f"compare-sorted-{ui_stack.backend}")

    # the plots draw the compared rows' numbers: one sweep point per (model, steps), the scatter per model
    items = [(_label(r["family"], r["model"]), r["values"]) for r in rows]
    sweep = drawn(browser, "sweep-plot")
    assert sweep == expected_sweep(items)
    assert len(sweep) == sum(len(m.sweep) for m in MODELS)
    assert drawn(browser, "entropy-plot") == expected_scatter(items)
    js(browser, "document.getElementById('sweep-plot').scrollIntoView({block: 'center'})")
    screenshot(f"sweep-{ui_stack.backend}")


def test_models_page_plots_every_latest_evaluation(
    ui_stack: UiStack, evaluated: list[str], browser: Any, screenshot: Shot
) -> None:
    sign_in(browser, ui_stack, "#/models")
    wait_for(browser, "return document.querySelector('#models-table tr[data-model-id]')", what="the models")
    models = api(ui_stack, "GET", "/v1/models", params={"limit": 200}).json()["data"]
    shown = js(
        browser,
        "return [...document.querySelectorAll('#models-table tr[data-model-id]')].map(r => r.dataset.modelId)",
    )
    assert shown == [m["id"] for m in models] and set(evaluated) <= set(shown)
    counts = js(
        browser,
        "return Object.fromEntries([...document.querySelectorAll('#models-table tr[data-model-id]')]"
        ".map(r => [r.dataset.modelId, r.cells[5].textContent]))",
    )
    assert {m["id"]: str(m["evaluations"]) for m in models} == counts
    assert counts[evaluated[1]] == "2"  # the older evaluation counts, its numbers are not plotted
    items = [
        (_label(m["family"], m["id"]), m["latest_evaluation"]["summary"])
        for m in models
        if m["latest_evaluation"]
    ]
    assert drawn(browser, "sweep-plot") == expected_sweep(items)
    assert drawn(browser, "entropy-plot") == expected_scatter(items)
    js(browser, "document.getElementById('entropy-plot').scrollIntoView({block: 'center'})")
    screenshot(f"models-plots-{ui_stack.backend}")
