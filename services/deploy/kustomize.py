"""Render a kustomization without the kustomize binary: the subset the files in `k8s/` use.

Supported fields: `resources` (YAML files and directories holding a kustomization), `images` (name ->
newName/newTag/digest on every container and init container), `configMapGenerator` (`name`,
`namespace`, `behavior` create|merge, `files`, `literals`; the name gets kustomize's content-hash suffix
and every reference from a pod spec follows it, so a change of content rolls the pods), and `patches` as
JSON 6902 operations
(a `path` to a YAML/JSON list of operations, or an inline `patch`) with a `target` of `kind`, `name`
(a regular expression matched against the whole name, as kustomize does), `namespace`, `group`,
`version`. Anything else (namespace/label transformers, generators, strategic-merge patches) raises
`UnsupportedKustomization`, so a kustomization this cannot render faithfully is never rendered wrongly.
Users apply the same directories with `kubectl apply -k`; tests/deploy compares both renderings.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
import shutil
import subprocess
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

KUSTOMIZATION_FILES = ("kustomization.yaml", "kustomization.yml", "Kustomization")
SUPPORTED = {"apiVersion", "kind", "resources", "configMapGenerator", "images", "patches"}
_GENERATED = "__kustomize_generated__"  # marks a generated ConfigMap until its hash suffix is set


class KustomizeError(ValueError):
    """A kustomization that cannot be rendered: the message names the file and the field."""


class UnsupportedKustomization(KustomizeError):
    pass


def load_yaml_documents(path: Path) -> list[dict[str, Any]]:
    with path.open() as handle:
        return [doc for doc in yaml.safe_load_all(handle) if doc is not None]


def kustomization_file(directory: Path) -> Path:
    for name in KUSTOMIZATION_FILES:
        if (directory / name).is_file():
            return directory / name
    raise KustomizeError(f"{directory}: no kustomization.yaml")


def render(directory: str | Path) -> list[dict[str, Any]]:
    """The objects `kubectl kustomize DIRECTORY` would print (same content; order may differ)."""
    objects = _render(Path(directory))
    _apply_name_hashes(objects)
    return objects


def _render(directory: Path) -> list[dict[str, Any]]:
    path = kustomization_file(directory)
    spec = yaml.safe_load(path.read_text()) or {}
    unknown = sorted(set(spec) - SUPPORTED)
    if unknown:
        raise UnsupportedKustomization(
            f"{path}: field(s) {unknown} are not supported by services.deploy.kustomize "
            f"(supported: {sorted(SUPPORTED)}); render it with `kubectl kustomize` instead"
        )
    objects: list[dict[str, Any]] = []
    for entry in spec.get("resources") or []:
        target = (directory / entry).resolve()
        if target.is_dir():
            objects.extend(_render(target))
        elif target.is_file():
            objects.extend(load_yaml_documents(target))
        else:
            raise KustomizeError(f"{path}: resource {entry!r} does not exist")
    _check_unique(objects, path)
    for generator in spec.get("configMapGenerator") or []:
        _generate_config_map(objects, generator, directory, path)
    for patch in spec.get("patches") or []:
        _apply_patch(objects, patch, directory, path)
    for image in spec.get("images") or []:
        _apply_image(objects, image, path)
    return objects


def _object_id(obj: dict[str, Any]) -> tuple[str, str, str, str]:
    meta = obj.get("metadata") or {}
    return (obj.get("apiVersion", ""), obj.get("kind", ""), meta.get("namespace", ""), meta.get("name", ""))


def _check_unique(objects: list[dict[str, Any]], path: Path) -> None:
    seen: set[tuple[str, str, str, str]] = set()
    for obj in objects:
        key = _object_id(obj)
        if key in seen:
            raise KustomizeError(f"{path}: {key[1]} {key[2]}/{key[3]} is defined twice")
        seen.add(key)


# --- generators ------------------------------------------------------------------------------------------------

GENERATOR_FIELDS = {"name", "namespace", "behavior", "files", "literals"}


def _generate_config_map(
    objects: list[dict[str, Any]], generator: dict[str, Any], directory: Path, path: Path
) -> None:
    unknown = sorted(set(generator) - GENERATOR_FIELDS)
    if unknown or "name" not in generator:
        raise UnsupportedKustomization(
            f"{path}: configMapGenerator needs `name` and supports only {sorted(GENERATOR_FIELDS)} (got {unknown})"
        )
    data: dict[str, str] = {}
    for entry in generator.get("files") or []:
        key, _, file = str(entry).rpartition("=")
        source = directory / file
        if not source.is_file():
            raise KustomizeError(f"{path}: configMapGenerator {generator['name']}: no file {file!r}")
        data[key or source.name] = source.read_text()
    for literal in generator.get("literals") or []:
        key, sep, value = str(literal).partition("=")
        if not sep:
            raise KustomizeError(f"{path}: configMapGenerator literal {literal!r} is not KEY=VALUE")
        data[key] = value
    name, namespace = generator["name"], generator.get("namespace", "")
    behavior = generator.get("behavior", "create")
    existing = [
        o
        for o in objects
        if o.get("kind") == "ConfigMap"
        and o["metadata"]["name"] == name
        and o["metadata"].get("namespace", "") == namespace
    ]
    if behavior == "merge":
        if not existing or not existing[0].get(_GENERATED):
            raise KustomizeError(f"{path}: configMapGenerator {name} merges into no generated ConfigMap")
        existing[0].setdefault("data", {}).update(data)
        return
    if behavior != "create":
        raise UnsupportedKustomization(f"{path}: configMapGenerator behavior {behavior!r} is not supported")
    if existing:
        raise KustomizeError(f"{path}: ConfigMap {name} exists already (use behavior: merge)")
    metadata = {"name": name, **({"namespace": namespace} if namespace else {})}
    objects.append(
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": metadata, "data": data, _GENERATED: True}
    )


def config_map_hash(data: dict[str, str]) -> str:
    """kustomize's name suffix of a generated ConfigMap: sha256 of the JSON of kind, data and an empty
    name (kustomize looks the name up under a path that never matches), as Go's json.Marshal writes it."""
    text = json.dumps(
        {"data": data, "kind": "ConfigMap", "name": ""},
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )
    escapes = (
        ("<", "\\u003c"),
        (">", "\\u003e"),
        ("&", "\\u0026"),
        ("\u2028", "\\u2028"),
        ("\u2029", "\\u2029"),
    )
    for char, escaped in escapes:
        text = text.replace(char, escaped)
    digest = hashlib.sha256(text.encode()).hexdigest()[:10]
    return digest.translate(str.maketrans("013ae", "ghkmt"))


def _apply_name_hashes(objects: list[dict[str, Any]]) -> None:
    renamed: dict[tuple[str, str], str] = {}
    for obj in objects:
        if obj.pop(_GENERATED, False):
            meta = obj["metadata"]
            new = f"{meta['name']}-{config_map_hash(obj.get('data') or {})}"
            renamed[(meta.get("namespace", ""), meta["name"])] = new
            meta["name"] = new
    if not renamed:
        return
    for obj in objects:
        namespace = (obj.get("metadata") or {}).get("namespace", "")
        _rename_references(obj.get("spec"), namespace, renamed)


def _rename_references(node: Any, namespace: str, renamed: dict[tuple[str, str], str]) -> None:
    """ConfigMap names in pod specs: envFrom configMapRef, env configMapKeyRef, (projected) volumes."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("configMapRef", "configMapKeyRef", "configMap") and isinstance(value, dict):
                new = renamed.get((namespace, str(value.get("name", ""))))
                if new is not None:
                    value["name"] = new
            else:
                _rename_references(value, namespace, renamed)
    elif isinstance(node, list):
        for item in node:
            _rename_references(item, namespace, renamed)


# --- patches ---------------------------------------------------------------------------------------------------


def _matches(obj: dict[str, Any], target: dict[str, Any]) -> bool:
    group, _, version = obj.get("apiVersion", "").rpartition("/")
    meta = obj.get("metadata") or {}
    checks = {
        "kind": obj.get("kind", ""),
        "name": meta.get("name", ""),
        "namespace": meta.get("namespace", ""),
        "group": group,
        "version": version,
    }
    for key, value in target.items():
        if key not in checks:
            raise UnsupportedKustomization(f"patch target field {key!r} is not supported")
        if key == "name":
            if not re.fullmatch(str(value), checks["name"]):
                return False
        elif str(value) != checks[key]:
            return False
    return True


def _apply_patch(objects: list[dict[str, Any]], patch: dict[str, Any], directory: Path, path: Path) -> None:
    if "path" in patch:
        source = directory / patch["path"]
        text = source.read_text()
        where = f"{path} -> {patch['path']}"
    elif "patch" in patch:
        text, where = patch["patch"], f"{path} (inline patch)"
    else:
        raise KustomizeError(f"{path}: a patch needs `path` or `patch`")
    operations = yaml.safe_load(text)
    if not isinstance(operations, list):
        raise UnsupportedKustomization(
            f"{where}: only JSON 6902 patches (a list of operations) are supported, not strategic merge"
        )
    target = patch.get("target")
    if not target:
        raise KustomizeError(f"{where}: a JSON 6902 patch needs a `target`")
    hits = [obj for obj in objects if _matches(obj, target)]
    if not hits:
        raise KustomizeError(f"{where}: target {target} matches no resource")
    for obj in hits:
        for number, op in enumerate(operations):
            try:
                apply_operation(obj, op)
            except (KeyError, IndexError, TypeError, ValueError) as exc:
                raise KustomizeError(
                    f"{where}: operation {number} {json.dumps(op)} failed on "
                    f"{obj.get('kind')} {obj['metadata'].get('name')}: {exc}"
                ) from exc


def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise ValueError(f"JSON pointer {path!r} must start with /")
    return [part.replace("~1", "/").replace("~0", "~") for part in path[1:].split("/")]


def _parent(doc: Any, parts: list[str]) -> Any:
    node = doc
    for part in parts[:-1]:
        node = node[int(part)] if isinstance(node, list) else node[part]
    return node


def apply_operation(doc: dict[str, Any], op: dict[str, Any]) -> None:
    """One RFC 6902 operation (add, remove, replace, test), in place."""
    kind = op.get("op")
    parts = _pointer(op["path"])
    if not parts:
        raise ValueError("operations on the whole document are not supported")
    parent, last = _parent(doc, parts), parts[-1]
    if kind == "add":
        value = copy.deepcopy(op["value"])
        if isinstance(parent, list):
            parent.insert(len(parent) if last == "-" else int(last), value)
        else:
            parent[last] = value
    elif kind == "remove":
        del parent[int(last) if isinstance(parent, list) else last]
    elif kind == "replace":
        key: Any = int(last) if isinstance(parent, list) else last
        if not isinstance(parent, list) and key not in parent:
            raise KeyError(f"{op['path']} does not exist (replace needs an existing value)")
        parent[key] = copy.deepcopy(op["value"])
    elif kind == "test":
        actual = parent[int(last)] if isinstance(parent, list) else parent[last]
        if actual != op["value"]:
            raise ValueError(f"test failed: {op['path']} is {actual!r}, not {op['value']!r}")
    else:
        raise ValueError(f"unsupported operation {kind!r}")


# --- images ----------------------------------------------------------------------------------------------------


def _split_image(image: str) -> tuple[str, str]:
    """'repo/name:tag' -> ('repo/name', ':tag'); a port in the registry is not a tag."""
    if "@" in image:
        name, digest = image.split("@", 1)
        return name, "@" + digest
    slash = image.rfind("/")
    colon = image.rfind(":")
    if colon > slash:
        return image[:colon], image[colon:]
    return image, ""


def _containers(node: Any) -> Iterable[dict[str, Any]]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("containers", "initContainers") and isinstance(value, list):
                yield from (c for c in value if isinstance(c, dict))
            else:
                yield from _containers(value)
    elif isinstance(node, list):
        for item in node:
            yield from _containers(item)


def _apply_image(objects: list[dict[str, Any]], image: dict[str, Any], path: Path) -> None:
    if "name" not in image:
        raise KustomizeError(f"{path}: an `images` entry needs `name`")
    for obj in objects:
        for container in _containers(obj):
            name, suffix = _split_image(str(container.get("image", "")))
            if name != image["name"]:
                continue
            new_name = image.get("newName", name)
            if "digest" in image:
                suffix = "@" + str(image["digest"])
            elif "newTag" in image:
                suffix = ":" + str(image["newTag"])
            container["image"] = new_name + suffix


# --- kubectl ---------------------------------------------------------------------------------------------------


def kubectl_available() -> bool:
    if shutil.which("kubectl") is None:
        return False
    probe = subprocess.run(["kubectl", "kustomize", "--help"], capture_output=True, timeout=30)
    return probe.returncode == 0


def render_with_kubectl(directory: str | Path, timeout_s: float = 60.0) -> list[dict[str, Any]]:
    """`kubectl kustomize DIRECTORY` (needs no cluster); raises KustomizeError with its message."""
    result = subprocess.run(
        ["kubectl", "kustomize", str(directory)], capture_output=True, text=True, timeout=timeout_s
    )
    if result.returncode != 0:
        raise KustomizeError(f"kubectl kustomize {directory}: {result.stderr.strip()}")
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc is not None]
