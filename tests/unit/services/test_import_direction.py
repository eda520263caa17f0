"""Imports run one way: the gateway may use the other services' schemas, never the reverse, and the
library never imports the services (docs/ARCHITECTURE.md, layout)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[3]


def imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


@pytest.mark.parametrize(
    ("package", "forbidden"),
    [
        ("services/sampler", "services.api"),
        ("services/trainer", "services.api"),
        ("services/encoder", "services.api"),
        ("services/common", "services.api"),
        ("mmdlm", "services"),
    ],
)
def test_no_import_against_the_direction(package: str, forbidden: str) -> None:
    offenders = sorted(
        f"{path.relative_to(ROOT)}: {name}"
        for path in (ROOT / package).rglob("*.py")
        for name in imported_modules(path)
        if name == forbidden or name.startswith(forbidden + ".")
    )
    assert not offenders, offenders


def test_sampler_metrics_does_not_import_the_service() -> None:
    assert "services.sampler.service" not in imported_modules(ROOT / "services/sampler/metrics.py")
