"""Which protocol each evaluation metric is measured under, and whether results of several models share
it (torch-free: the gateway's model table uses it).

An `evaluation` artifact carries `summary` (flat metric -> value) and `protocols` (group -> the protocol
fields that must be equal for two results to be compared; seeds are left out). Two models are compared on
a group's metrics only when their `protocols[group]` are equal; otherwise the table says which fields
differ, per model, and marks those columns as not comparable.
"""

from __future__ import annotations

from typing import Any

GROUP_ORDER = ("nll", "generative", "sweep", "t2l", "l2t", "sts", "t2i", "frechet", "i2t")


def metric_group(name: str) -> str:
    if name.startswith("val_"):
        return "nll"
    if name.startswith(("gen_", "data_")):
        return "generative"
    if name.startswith("sweep_"):
        return "sweep"
    return name.split("_", 1)[0]  # t2l, l2t, sts, t2i, frechet, i2t


def order_metrics(names: set[str]) -> list[str]:
    def key(name: str) -> tuple[int, str]:
        group = metric_group(name)
        return (GROUP_ORDER.index(group) if group in GROUP_ORDER else len(GROUP_ORDER), name)

    return sorted(names, key=key)


def compare_groups(protocols: dict[str, dict[str, Any] | None]) -> dict[str, dict[str, Any]]:
    """model id -> its evaluation's `protocols` (None: no evaluation). Per group: comparable or not, the
    shared protocol, or the differing fields with each model's value; models without the group listed."""
    groups: dict[str, dict[str, Any]] = {}
    names = {g for p in protocols.values() if p for g in p}
    for group in sorted(names, key=lambda g: (GROUP_ORDER.index(g) if g in GROUP_ORDER else 99, g)):
        have = {m: p[group] for m, p in protocols.items() if p and group in p}
        missing = sorted(m for m in protocols if m not in have)
        fields = sorted({f for proto in have.values() for f in proto})
        mismatches = {
            f: {m: proto.get(f) for m, proto in have.items()}
            for f in fields
            if len({_canon(proto.get(f)) for proto in have.values()}) > 1
        }
        entry: dict[str, Any] = {"comparable": not mismatches and len(have) > 1, "models": sorted(have)}
        if mismatches:
            entry["mismatches"] = mismatches
        else:
            entry["protocol"] = next(iter(have.values()))
        if missing:
            entry["missing"] = missing
        groups[group] = entry
    return groups


def _canon(value: Any) -> str:
    import json

    return json.dumps(value, sort_keys=True, default=str)
