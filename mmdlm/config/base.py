"""Base class and helpers shared by every config: strict fields, YAML files, `--set` overrides."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated, Any, Self

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, field_validator

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
"""Every integer a config holds fits a 64-bit column (PostgreSQL BIGINT) and a torch/numpy int64."""
INT32_MAX = 2**31 - 1


def check_text(value: str) -> str:
    """Refuse NUL (PostgreSQL text cannot hold it, C APIs cut at it) and lone surrogates (not UTF-8:
    they fail later, when the value is stored or encoded, as a 500)."""
    if "\x00" in value:
        raise ValueError("must not contain NUL characters (\\u0000)")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode text (lone surrogate characters are refused)") from None
    return value


SafeStr = Annotated[str, AfterValidator(check_text)]
"""A `str` with the text policy, for query/path parameters and models that are not a `StrictModel`."""


def check_value(value: Any) -> Any:
    """The edge policy for any parsed value, walked into lists and mappings: text as in `check_text`,
    integers within int64, floats finite. Shared by every `StrictModel` field (nested models check
    their own fields)."""
    if isinstance(value, str):
        return check_text(value)
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        if not INT64_MIN <= value <= INT64_MAX:
            raise ValueError("integer out of range: must fit in 64 bits (-2^63 to 2^63-1)")
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError("must be a finite number (not NaN or Infinity)")
    elif isinstance(value, (list, tuple, set, frozenset)):
        for item in value:
            check_value(item)
    elif isinstance(value, dict):
        for key, item in value.items():
            check_value(key)
            check_value(item)
    return value


class StrictModel(BaseModel):
    """A config section: unknown keys are an error, so a typo never silently falls back to a default.
    Every field also passes `check_value` (no NUL or lone surrogates, int64 integers, finite floats),
    so a value that validates here can be stored in PostgreSQL and run."""

    model_config = ConfigDict(
        extra="forbid", validate_assignment=True, protected_namespaces=(), allow_inf_nan=False
    )

    @field_validator("*", mode="after")
    @classmethod
    def _edge_policy(cls, value: Any) -> Any:
        return value if isinstance(value, BaseModel) else check_value(value)

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
