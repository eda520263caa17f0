"""Base class and helpers shared by every config: strict fields, YAML files, `--set` overrides."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Self

import yaml
from pydantic import BaseModel, ConfigDict


class StrictModel(BaseModel):
    """A config section: unknown keys are an error, so a typo never silently falls back to a default."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())

    @classmethod
    def from_file(cls, path: str | Path, overrides: list[str] | None = None) -> Self:
        """Load from YAML/JSON and apply `key.sub=value` overrides (values parsed as YAML scalars)."""
        data = load_mapping(path)
        return cls.model_validate(apply_overrides(data, overrides or []))

    def to_file(self, path: str | Path) -> None:
        path = Path(path)
        payload = self.model_dump(mode="json")
        if path.suffix == ".json":
            path.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
        else:
            path.write_text(yaml.safe_dump(payload, sort_keys=False))


def load_mapping(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    text = path.read_text()
    data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Return a copy of `data` with each `a.b.c=value` applied; the value is parsed as YAML."""
    result = json.loads(json.dumps(data))
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"override {item!r} must look like key.sub=value")
        parts = key.strip().split(".")
        node = result
        for part in parts[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ValueError(f"override {item!r}: {part!r} is not a section")
            node = child
        node[parts[-1]] = yaml.safe_load(raw)
    return result
