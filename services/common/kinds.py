"""Job-kind registry: what a job kind is made of, and the one place the gateway and workers look it up.

A kind declares (see README, "How to add a job kind"):
  name      the `kind` tag users write, e.g. "prepare-data";
  spec      a pydantic model with `kind: Literal[name]`, usually a subclass of the library's config
            (`class PrepareDataSpec(PrepareDataConfig): kind: Literal["prepare-data"] = "prepare-data"`);
  queue     the Celery queue its jobs go to (`encode`, `train` or `sample`);
  runner    "module:function" of `run(ctx: JobContext) -> None`, imported only inside workers so the
            API never imports torch;
  check     optional `check(spec, session, user)` run by the API before the job is stored; it raises
            `FieldError(field, message)` (-> 422) when a reference is wrong (unknown artifact, wrong kind);
  check_on_loop  True for a check that makes no database query (only local path checks, microseconds):
            the API then runs it on its event loop, with `session=None`, instead of a threadpool hop;
  permanent_errors  exception types that mean "bad input": the job fails without retry.

Kinds register themselves when their module is imported. `load_kinds()` imports every
`services.<package>.kinds` module it finds plus the modules named in `MMDLM_KIND_MODULES`, so a new
service adds a kind by adding `services/<package>/kinds.py`; nothing else is edited.
"""

from __future__ import annotations

import importlib
import importlib.util
import pkgutil
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel, Field

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from services.common.auth import Principal
    from services.common.context import JobContext

Queue = Literal["encode", "train", "sample"]
QUEUES: tuple[str, ...] = get_args(Queue)
RESERVED_FIELDS = frozenset({"priority", "max_attempts"})  # job options that sit next to the spec fields

CheckFn = Callable[[Any, "Session | None", "Principal"], None]
RunFn = Callable[["JobContext"], None]


@dataclass(frozen=True)
class JobKind:
    name: str
    spec: type[BaseModel]
    queue: str
    runner: str
    check: CheckFn | None = None
    check_on_loop: bool = False
    permanent_errors: tuple[type[BaseException], ...] = ()
    description: str = ""
    max_attempts: int | None = None  # default for this kind; the request may override it
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.queue not in QUEUES:
            raise ValueError(f"job kind {self.name!r}: queue must be one of {QUEUES}, got {self.queue!r}")
        if ":" not in self.runner:
            raise ValueError(f"job kind {self.name!r}: runner must be 'module:function', got {self.runner!r}")
        kind_field = self.spec.model_fields.get("kind")
        if kind_field is None or get_origin(kind_field.annotation) is not Literal:
            raise ValueError(
                f"job kind {self.name!r}: {self.spec.__name__} needs `kind: Literal[{self.name!r}]`"
            )
        if get_args(kind_field.annotation) != (self.name,):
            raise ValueError(
                f"job kind {self.name!r}: {self.spec.__name__}.kind is {kind_field.annotation}, "
                f"expected Literal[{self.name!r}]"
            )
        clash = RESERVED_FIELDS & set(self.spec.model_fields)
        if clash:
            raise ValueError(f"job kind {self.name!r}: spec fields {sorted(clash)} are reserved job options")

    def load_runner(self) -> RunFn:
        module_name, _, attr = self.runner.partition(":")
        fn = getattr(importlib.import_module(module_name), attr, None)
        if not callable(fn):
            raise ImportError(f"job kind {self.name!r}: {self.runner} is not a callable")
        return fn


_REGISTRY: dict[str, JobKind] = {}
_LOCK = threading.Lock()
_LOADED: set[str] = set()


def register(kind: JobKind) -> JobKind:
    """Add a kind. Registering the same name twice with a different spec is an error (import twice is not)."""
    with _LOCK:
        existing = _REGISTRY.get(kind.name)
        if existing is not None and (existing.spec.__qualname__, existing.runner) != (
            kind.spec.__qualname__,
            kind.runner,
        ):
            raise ValueError(f"job kind {kind.name!r} is already registered by {existing.runner}")
        _REGISTRY[kind.name] = kind
    return kind


def unregister(name: str) -> None:
    """For tests that register throw-away kinds."""
    with _LOCK:
        _REGISTRY.pop(name, None)


def load_kinds(extra_modules: Iterable[str] = ()) -> dict[str, JobKind]:
    """Import every kind module (once) and return the registry."""
    import services

    modules = []
    for info in pkgutil.iter_modules(services.__path__):
        if info.ispkg and importlib.util.find_spec(f"services.{info.name}.kinds") is not None:
            modules.append(f"services.{info.name}.kinds")
    modules.extend(extra_modules)
    for name in modules:
        if name not in _LOADED:
            importlib.import_module(name)
            _LOADED.add(name)
    return dict(_REGISTRY)


def get_kind(name: str) -> JobKind:
    try:
        return _REGISTRY[name]
    except KeyError:
        known = ", ".join(sorted(_REGISTRY)) or "none"
        raise KeyError(f"unknown job kind {name!r} (registered: {known})") from None


def all_kinds() -> dict[str, JobKind]:
    return dict(_REGISTRY)


def spec_union(kinds: Iterable[JobKind] | None = None) -> Any:
    """`Annotated[SpecA | SpecB | ..., Field(discriminator="kind")]` over the given (default: all) kinds."""
    specs = tuple(k.spec for k in (kinds if kinds is not None else _REGISTRY.values()))
    if not specs:
        raise RuntimeError("no job kinds registered; call load_kinds() first")
    if len(specs) == 1:  # pydantic needs two variants for a discriminator; one model is its own union
        return specs[0]
    return Annotated[Union[specs], Field(discriminator="kind")]  # noqa: UP007 (a runtime tuple of types)
