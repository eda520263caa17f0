"""Schema checks for Kubernetes manifests, including the Kubeflow custom resources.

Built-in kinds go through `kubernetes_validate.validate(obj, version, strict=True)` (strict: unknown
fields are errors). kubernetes-validate knows no CRDs, so the Kubeflow kinds are checked in two layers:
a JSON schema of the custom resource's envelope (the fields this project writes, unknown ones refused),
then every pod template inside it through the strict built-in schema (wrapped as a `PodTemplate`, a
JobSet replicated job as a `batch/v1` Job, a TrainJob's `trainer` as the container it becomes).

    from services.deploy.k8s import validate_object, validate_documents
    problems = validate_object(trainjob_dict)          # [] when valid, else one line per problem
    validate_documents(objs, raise_on_error=True)      # raises ManifestError listing every problem

Needs `kubernetes-validate` (requirements-dev.txt); imported lazily so the module loads without it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

# The oldest Kubernetes minor the manifests target (autoscaling/v2, policy/v1 and the restricted Pod
# Security Standard labels are all GA well before it); tests also check the newest schema available.
KUBERNETES_VERSION = "1.31.0"

_DNS_LABEL = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"
_DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"


class ManifestError(ValueError):
    """Raised by `validate_documents(..., raise_on_error=True)`; `.problems` lists them all."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class CrdSpec:
    """What is known about one custom resource kind: its envelope schema and where pod specs sit."""

    api_version: str
    kind: str
    namespaced: bool
    schema: dict[str, Any]


def _metadata(namespaced: bool) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "type": "object",
        "required": ["name"],
        "properties": {
            "name": {"type": "string", "pattern": _DNS_LABEL, "maxLength": 63},
            "labels": {"type": "object", "additionalProperties": {"type": "string"}},
            "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
        },
        "additionalProperties": False,
    }
    if namespaced:
        meta["properties"]["namespace"] = {"type": "string", "pattern": _DNS_LABEL}
    return meta


def _envelope(api_version: str, kind: str, namespaced: bool, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": api_version},
            "kind": {"const": kind},
            "metadata": _metadata(namespaced),
            "spec": spec,
        },
        "additionalProperties": False,
    }


_STRING_LIST = {"type": "array", "items": {"type": "string"}}
_OBJECT = {"type": "object"}  # checked further by the built-in schemas

# Kubeflow Trainer v2 (trainer.kubeflow.org/v1alpha1, Trainer >= 2.2: numProcPerNode is an integer).
_TRAINJOB_SPEC = {
    "type": "object",
    "required": ["runtimeRef"],
    "properties": {
        "runtimeRef": {
            "type": "object",
            "required": ["name"],
            "properties": {
                "name": {"type": "string", "minLength": 1},
                "kind": {"enum": ["TrainingRuntime", "ClusterTrainingRuntime"]},
                "apiGroup": {"const": "trainer.kubeflow.org"},
            },
            "additionalProperties": False,
        },
        "trainer": {
            "type": "object",
            "properties": {
                "image": {"type": "string", "minLength": 1},
                "command": _STRING_LIST,
                "args": _STRING_LIST,
                "env": {"type": "array", "items": _OBJECT},
                "numNodes": {"type": "integer", "minimum": 1},
                "numProcPerNode": {"type": "integer", "minimum": 1},
                "resourcesPerNode": _OBJECT,
            },
            "additionalProperties": False,
        },
        "suspend": {"type": "boolean"},
        "managedBy": {"type": "string"},
        "activeDeadlineSeconds": {"type": "integer", "minimum": 1},
        "runtimePatches": {"type": "array", "items": _OBJECT},
    },
    "additionalProperties": False,
}

_RUNTIME_SPEC = {
    "type": "object",
    "required": ["template"],
    "properties": {
        "mlPolicy": {
            "type": "object",
            "properties": {
                "numNodes": {"type": "integer", "minimum": 1},
                "torch": {"type": "object"},
            },
            "additionalProperties": False,
        },
        "podGroupPolicy": _OBJECT,
        "template": {
            "type": "object",
            "required": ["spec"],
            "properties": {
                "metadata": _OBJECT,
                "spec": {
                    "type": "object",
                    "required": ["replicatedJobs"],
                    "properties": {
                        "replicatedJobs": {
                            "type": "array",
                            "minItems": 1,
                            "items": {
                                "type": "object",
                                "required": ["name", "template"],
                                "properties": {
                                    "name": {"type": "string", "pattern": _DNS_LABEL},
                                    "replicas": {"type": "integer", "minimum": 1},
                                    "dependsOn": {"type": "array", "items": _OBJECT},
                                    "template": {
                                        "type": "object",
                                        "required": ["spec"],
                                        "properties": {"metadata": _OBJECT, "spec": _OBJECT},
                                        "additionalProperties": False,
                                    },
                                },
                                "additionalProperties": False,
                            },
                        },
                        "network": _OBJECT,
                        "successPolicy": _OBJECT,
                        "failurePolicy": _OBJECT,
                        "startupPolicy": _OBJECT,
                        "ttlSecondsAfterFinished": {"type": "integer", "minimum": 0},
                    },
                    "additionalProperties": False,
                },
            },
            "additionalProperties": False,
        },
    },
    "additionalProperties": False,
}

# Kubeflow Training Operator v1 (kubeflow.org/v1), for clusters still on it.
_REPLICA = {
    "type": "object",
    "required": ["template"],
    "properties": {
        "replicas": {"type": "integer", "minimum": 0},
        "restartPolicy": {"enum": ["Always", "OnFailure", "Never", "ExitCode"]},
        "template": _OBJECT,
    },
    "additionalProperties": False,
}
_PYTORCHJOB_SPEC = {
    "type": "object",
    "required": ["pytorchReplicaSpecs"],
    "properties": {
        "pytorchReplicaSpecs": {
            "type": "object",
            "properties": {"Master": _REPLICA, "Worker": _REPLICA},
            "additionalProperties": False,
            "minProperties": 1,
        },
        "elasticPolicy": {
            "type": "object",
            "properties": {
                "rdzvBackend": {"enum": ["c10d", "etcd", "etcd-v2"]},
                "rdzvHost": {"type": "string"},
                "rdzvPort": {"type": "integer", "minimum": 1, "maximum": 65535},
                "rdzvId": {"type": "string"},
                "rdzvConf": {"type": "array", "items": _OBJECT},
                "standalone": {"type": "boolean"},
                "nProcPerNode": {"type": "integer", "minimum": 1},
                "minReplicas": {"type": "integer", "minimum": 1},
                "maxReplicas": {"type": "integer", "minimum": 1},
                "maxRestarts": {"type": "integer", "minimum": 0},
                "metrics": {"type": "array", "items": _OBJECT},
            },
            "additionalProperties": False,
        },
        "nprocPerNode": {"type": "string", "pattern": r"^(auto|cpu|gpu|[1-9][0-9]*)$"},
        "runPolicy": {
            "type": "object",
            "properties": {
                "cleanPodPolicy": {"enum": ["All", "Running", "None"]},
                "ttlSecondsAfterFinished": {"type": "integer", "minimum": 0},
                "activeDeadlineSeconds": {"type": "integer", "minimum": 1},
                "backoffLimit": {"type": "integer", "minimum": 0},
                "suspend": {"type": "boolean"},
                "managedBy": {"type": "string"},
                "schedulingPolicy": _OBJECT,
            },
            "additionalProperties": False,
        },
    },
    "additionalProperties": False,
}

CRDS: dict[tuple[str, str], CrdSpec] = {
    (spec.api_version, spec.kind): spec
    for spec in (
        CrdSpec(
            "trainer.kubeflow.org/v1alpha1",
            "TrainJob",
            True,
            _envelope("trainer.kubeflow.org/v1alpha1", "TrainJob", True, _TRAINJOB_SPEC),
        ),
        CrdSpec(
            "trainer.kubeflow.org/v1alpha1",
            "TrainingRuntime",
            True,
            _envelope("trainer.kubeflow.org/v1alpha1", "TrainingRuntime", True, _RUNTIME_SPEC),
        ),
        CrdSpec(
            "trainer.kubeflow.org/v1alpha1",
            "ClusterTrainingRuntime",
            False,
            _envelope("trainer.kubeflow.org/v1alpha1", "ClusterTrainingRuntime", False, _RUNTIME_SPEC),
        ),
        CrdSpec(
            "kubeflow.org/v1",
            "PyTorchJob",
            True,
            _envelope("kubeflow.org/v1", "PyTorchJob", True, _PYTORCHJOB_SPEC),
        ),
    )
}


def _describe(obj: dict[str, Any]) -> str:
    meta = obj.get("metadata") or {}
    namespace = f"{meta['namespace']}/" if meta.get("namespace") else ""
    return f"{obj.get('kind', '?')} {namespace}{meta.get('name', '?')}"


def _path(parts: Iterable[Any]) -> str:
    return ".".join(str(p) for p in parts) or "(root)"


@lru_cache(maxsize=128)
def _builtin_validator(api_version: str, kind: str, version: str) -> Any:
    """The strict schema kubernetes-validate would use for this kind (None if it has none), built once.

    Same schema files and resolution as `kubernetes_validate.validate`, kept as a validator so that
    every error is reported (validate() stops at the first) and the 1.3 MB of definitions load once.
    """
    import jsonschema
    from kubernetes_validate import utils
    from referencing import Registry, Resource

    wanted = utils.major_minor(version.lstrip("v"))
    candidates = [v for v in utils.all_versions() if _minor_key(utils.major_minor(v)) <= _minor_key(wanted)]
    if not candidates:
        raise ValueError(f"kubernetes-validate has no schemas for Kubernetes {version}")
    folder = f"kubernetes-json-schema/v{candidates[-1]}-local-strict"
    group = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", api_version)
    try:
        schema = utils.schema_contents(f"{folder}/{kind.lower()}-{group}.json", version)
    except FileNotFoundError:
        return None
    definitions = utils.schema_contents(f"{folder}/_definitions.json", version)
    registry = Resource.from_contents(definitions) @ (Resource.from_contents(schema) @ Registry())
    return jsonschema.Draft202012Validator(schema, registry=registry)


def _minor_key(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split("."))


def validate_builtin(obj: dict[str, Any], version: str = KUBERNETES_VERSION) -> list[str]:
    """A built-in kind against kubernetes-validate's strict schema; every error, with its field path."""
    validator = _builtin_validator(obj.get("apiVersion", ""), obj.get("kind", ""), version)
    if validator is None:
        return [
            f"{_describe(obj)}: no schema for {obj.get('apiVersion')} {obj.get('kind')} in Kubernetes {version}"
        ]
    errors = sorted(validator.iter_errors(obj), key=lambda e: [str(p) for p in e.absolute_path])
    return [f"{_describe(obj)}: {_path(e.absolute_path)}: {_message(e)}" for e in errors]


def _message(error: Any) -> str:
    # oneOf/anyOf failures (int-or-string fields) say little; the deepest cause says more.
    if error.context:
        best = max(error.context, key=lambda e: len(e.absolute_path))
        return f"{error.message} ({best.message})"
    return error.message


def validate_crd(obj: dict[str, Any], version: str = KUBERNETES_VERSION) -> list[str]:
    """Envelope schema of a known custom resource, then each pod template inside it."""
    import jsonschema

    key = (obj.get("apiVersion", ""), obj.get("kind", ""))
    spec = CRDS[key]
    validator = jsonschema.Draft202012Validator(spec.schema)
    problems = [
        f"{_describe(obj)}: {_path(e.absolute_path)}: {e.message}"
        for e in sorted(validator.iter_errors(obj), key=lambda e: list(map(str, e.absolute_path)))
    ]
    if problems:
        return problems
    for where, wrapped in embedded_objects(obj):
        for problem in validate_builtin(wrapped, version):
            problems.append(f"{_describe(obj)}: {where}: {problem.split(': ', 1)[1]}")
    return problems


def embedded_objects(obj: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(field path, built-in object) for every pod-bearing part of a known custom resource."""
    kind = obj.get("kind")
    name = (obj.get("metadata") or {}).get("name", "x")
    spec = obj.get("spec") or {}
    if kind == "PyTorchJob":
        for role, replica in (spec.get("pytorchReplicaSpecs") or {}).items():
            yield (
                f"spec.pytorchReplicaSpecs.{role}.template",
                {
                    "apiVersion": "v1",
                    "kind": "PodTemplate",
                    "metadata": {"name": f"{name}-{role.lower()}"},
                    "template": replica["template"],
                },
            )
    elif kind in ("TrainingRuntime", "ClusterTrainingRuntime"):
        for index, job in enumerate(spec["template"]["spec"]["replicatedJobs"]):
            template = job["template"]
            yield (
                f"spec.template.spec.replicatedJobs.{index}.template",
                {
                    "apiVersion": "batch/v1",
                    "kind": "Job",
                    "metadata": {"name": f"{name}-{job['name']}", **(template.get("metadata") or {})},
                    "spec": template["spec"],
                },
            )
    elif kind == "TrainJob":
        trainer = spec.get("trainer")
        if trainer:
            container: dict[str, Any] = {"name": "node", "image": trainer.get("image", "runtime-image")}
            for field, target in (("command", "command"), ("args", "args"), ("env", "env")):
                if field in trainer:
                    container[target] = trainer[field]
            if "resourcesPerNode" in trainer:
                container["resources"] = trainer["resourcesPerNode"]
            yield (
                "spec.trainer",
                {
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "metadata": {"name": f"{name}-node"},
                    "spec": {"containers": [container]},
                },
            )


# --- upstream CRDs ------------------------------------------------------------------------------------------


def _openapi_to_jsonschema(node: Any) -> Any:
    """A CRD's structural OpenAPI v3 schema as a strict JSON schema (draft 4 keywords): objects with
    `properties` refuse unknown fields (as `kubectl apply --validate=strict` and the API server's
    strict field validation do) unless marked x-kubernetes-preserve-unknown-fields; int-or-string and
    nullable become their JSON-schema spelling. CEL rules (x-kubernetes-validations) are not checked."""
    if isinstance(node, list):
        return [_openapi_to_jsonschema(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {k: _openapi_to_jsonschema(v) for k, v in node.items() if not k.startswith("x-kubernetes-")}
    out.pop("nullable", None)
    out.pop("format", None)  # int32/int64/date-time...: not assertions in JSON schema either
    if node.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if "properties" in node and "additionalProperties" not in node:
        if not node.get("x-kubernetes-preserve-unknown-fields"):
            out["additionalProperties"] = False
    if node.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    return out


@lru_cache(maxsize=16)
def _crd_validator(path: str) -> tuple[dict[str, Any], dict[str, Any]]:
    crd = yaml.load(Path(path).read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    versions = {
        v["name"]: _openapi_to_jsonschema(v["schema"]["openAPIV3Schema"])
        for v in crd["spec"]["versions"]
        if v.get("served", True)
    }
    return crd, versions


def validate_against_crd(obj: dict[str, Any], crd_path: str | Path) -> list[str]:
    """An object against an upstream CustomResourceDefinition (its served version's schema, strict),
    plus group/version/kind, scope and metadata.name; every problem with its field path."""
    import jsonschema

    crd, versions = _crd_validator(str(crd_path))
    names = crd["spec"]["names"]
    group, _, version = str(obj.get("apiVersion", "")).rpartition("/")
    if obj.get("kind") != names["kind"] or group != crd["spec"]["group"]:
        return [f"{_describe(obj)}: not a {crd['spec']['group']} {names['kind']}"]
    if version not in versions:
        return [f"{_describe(obj)}: version {version} is not served (served: {sorted(versions)})"]
    namespaced = crd["spec"]["scope"] == "Namespaced"
    problems = [
        f"{_describe(obj)}: metadata.{_path(e.absolute_path)}: {e.message}"
        for e in jsonschema.Draft202012Validator(_metadata(namespaced)).iter_errors(obj.get("metadata") or {})
    ]
    if namespaced and not (obj.get("metadata") or {}).get("namespace"):
        problems.append(f"{_describe(obj)}: metadata.namespace: required for a namespaced kind")
    validator = jsonschema.Draft4Validator(versions[version])
    errors = sorted(validator.iter_errors(obj), key=lambda e: [str(p) for p in e.absolute_path])
    problems += [f"{_describe(obj)}: {_path(e.absolute_path)}: {_message(e)}" for e in errors]
    return problems


# --- NetworkPolicy reachability -----------------------------------------------------------------------------


def selector_matches(selector: dict[str, Any] | None, labels: dict[str, str]) -> bool:
    """A LabelSelector (matchLabels + matchExpressions) against labels; {} matches everything."""
    selector = selector or {}
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values") or []
        ok = {
            "In": key in labels and labels[key] in values,
            "NotIn": key not in labels or labels[key] not in values,
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
        }[op]
        if not ok:
            return False
    return True


def _port_matches(
    ports: list[dict[str, Any]] | None, port: int, protocol: str, named: dict[str, int]
) -> bool:
    if not ports:
        return True
    for entry in ports:
        if entry.get("protocol", "TCP") != protocol:
            continue
        value = entry.get("port")
        if value is None:
            return True
        number = named.get(value) if isinstance(value, str) else value
        if number is not None and number <= port <= entry.get("endPort", number):
            return True
    return False


def _peer_matches(peer: dict[str, Any], namespace: str, labels: dict[str, str], ns_labels: dict[str, str],
                  own_namespace: str) -> bool:  # fmt: skip
    if "ipBlock" in peer:
        return False  # pod-to-pod traffic is judged by selectors here
    if "namespaceSelector" in peer:
        if not selector_matches(peer["namespaceSelector"], ns_labels):
            return False
    elif namespace != own_namespace:
        return False
    return selector_matches(peer.get("podSelector"), labels) if "podSelector" in peer else True


def network_allows(
    policies: Iterable[dict[str, Any]],
    *,
    src: tuple[str, dict[str, str]],
    dst: tuple[str, dict[str, str]],
    port: int,
    protocol: str = "TCP",
    named_ports: dict[str, int] | None = None,
) -> bool:
    """Whether NetworkPolicy semantics let a pod (namespace, labels) reach another on a port: the
    destination's ingress and the source's egress must both allow it (a pod no policy selects for a
    direction is open in that direction)."""
    policies = [p for p in policies if p.get("kind") == "NetworkPolicy"]
    named = named_ports or {}

    def direction_allows(
        kind: str, own: tuple[str, dict[str, str]], peer: tuple[str, dict[str, str]]
    ) -> bool:
        key = "ingress" if kind == "Ingress" else "egress"
        peers_key = "from" if kind == "Ingress" else "to"
        selecting = [
            p for p in policies
            if (p["metadata"].get("namespace") or "default") == own[0]
            and kind in (p["spec"].get("policyTypes") or (["Ingress", "Egress"] if "egress" in p["spec"] else ["Ingress"]))
            and selector_matches(p["spec"].get("podSelector"), own[1])
        ]  # fmt: skip
        if not selecting:
            return True
        peer_ns_labels = {"kubernetes.io/metadata.name": peer[0]}
        for policy in selecting:
            for rule in policy["spec"].get(key) or []:
                if not _port_matches(rule.get("ports"), port, protocol, named):
                    continue
                peers = rule.get(peers_key)
                if not peers or any(
                    _peer_matches(x, peer[0], peer[1], peer_ns_labels, own[0]) for x in peers
                ):
                    return True
        return False

    return direction_allows("Ingress", dst, src) and direction_allows("Egress", src, dst)


def validate_object(obj: dict[str, Any], version: str = KUBERNETES_VERSION) -> list[str]:
    """Problems of one manifest object ([] when it is valid)."""
    if not isinstance(obj, dict) or "apiVersion" not in obj or "kind" not in obj:
        return [f"not a Kubernetes object (needs apiVersion and kind): {str(obj)[:120]}"]
    if (obj["apiVersion"], obj["kind"]) in CRDS:
        return validate_crd(obj, version)
    return validate_builtin(obj, version)


def validate_documents(
    objects: Iterable[dict[str, Any]], version: str = KUBERNETES_VERSION, *, raise_on_error: bool = False
) -> list[str]:
    problems: list[str] = []
    for obj in objects:
        problems.extend(validate_object(obj, version))
    if problems and raise_on_error:
        raise ManifestError(problems)
    return problems


def load_manifests(path: str | Path) -> list[dict[str, Any]]:
    """Every object of a YAML file (multi-document) or of the YAML files directly in a directory."""
    path = Path(path)
    files = sorted(p for p in path.iterdir() if p.suffix in (".yaml", ".yml")) if path.is_dir() else [path]
    objects: list[dict[str, Any]] = []
    for file in files:
        with file.open() as handle:
            objects.extend(doc for doc in yaml.safe_load_all(handle) if doc is not None)
    return objects


def main(argv: list[str] | None = None) -> int:
    """`python -m services.deploy.k8s PATH...`: render each kustomization directory (or read each YAML
    file) and validate every object; one line per problem, exit 1 if there is any."""
    import argparse
    import sys

    from services.deploy.kustomize import KustomizeError, render

    parser = argparse.ArgumentParser(prog="python -m services.deploy.k8s")
    parser.add_argument("paths", nargs="+", type=Path, help="kustomization directories or YAML files")
    parser.add_argument("--kubernetes-version", default=KUBERNETES_VERSION)
    args = parser.parse_args(argv)
    problems: list[str] = []
    count = 0
    for path in args.paths:
        try:
            objects = render(path) if path.is_dir() else load_manifests(path)
        except (KustomizeError, OSError, yaml.YAMLError) as exc:
            problems.append(f"{path}: {exc}")
            continue
        count += len(objects)
        problems += [f"{path}: {p}" for p in validate_documents(objects, args.kubernetes_version)]
    for problem in problems:
        sys.stderr.write(problem + "\n")
    sys.stdout.write(f"{count} objects, {len(problems)} problems (Kubernetes {args.kubernetes_version})\n")
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
