"""Which local paths a user's job may name, and which host paths a user may read in messages.

Data roots (`MMDLM_DATA_ROOTS`): the folders job specs may point into (folder sources, local tokenizer,
encoder and reference-model folders). A root containing `{user}` is expanded with the submitting user's
name, so each user reaches only their own folder; a name that is not a safe folder name gets no such
root. `check_spec_paths` refuses (FieldError -> 422) any path outside the roots with one message that
never says what exists there; the API runs it at submit and the worker again before the runner starts
(and the library once more right before it reads: `mmdlm.confine`).

`Scrubber` rewrites host paths in what a user reads (job errors, job log lines, progress messages):
the job's own scratch folder -> `<scratch>`, the data roots -> `<data>`, the cache -> `<cache>`, the
object store -> `<store>`, MMDLM_HOME -> `<home>`, the code -> `<app>`, Python -> `<python>`, and any
other absolute path (another job's folder, the worker's home) -> `<path>`.
"""

from __future__ import annotations

import os
import re
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from mmdlm.config.data import FolderSource, HFSource, PretrainedTokenizerConfig
from mmdlm.config.eval import GenerativeEvalConfig
from mmdlm.config.images import IdxImageSource, ImageFolderSource
from mmdlm.config.latent import EncoderConfig
from mmdlm.confine import PathNotAllowed, PathRoots
from services.common.errors import FieldError
from services.common.settings import Settings

if TYPE_CHECKING:
    from services.common.db import Database

USER_PLACEHOLDER = "{user}"
_SAFE_USER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
DEFAULT_REFERENCE = "smollm2-135m"  # mmdlm.eval.reference.DEFAULT_REFERENCE (that module imports torch)


def user_roots(settings: Settings, user_name: str | None) -> PathRoots:
    """The data roots of one user (`{user}` roots only for a name that is a safe folder name)."""
    roots: list[str] = []
    for root in settings.data_roots:
        if USER_PLACEHOLDER in root:
            if user_name is None or not _SAFE_USER.match(user_name):
                continue
            root = root.replace(USER_PLACEHOLDER, user_name)
        roots.append(root)
    return _resolved(tuple(roots))


_RESOLVED_TTL_S = 30.0
_resolved_roots: dict[tuple[str, ...], tuple[float, PathRoots]] = {}


def _resolved(roots: tuple[str, ...]) -> PathRoots:
    """`PathRoots.of` (a realpath per root), kept for 30 s: the gateway checks paths on every submit, and
    the worker and the library check them again, uncached, before anything is read."""
    now = time.monotonic()
    found = _resolved_roots.get(roots)
    if found is not None and found[0] > now:
        return found[1]
    if len(_resolved_roots) >= 10_000:
        _resolved_roots.clear()
    resolved = PathRoots.of(roots)
    _resolved_roots[roots] = (now + _RESOLVED_TTL_S, resolved)
    return resolved


def owner_roots(settings: Settings, db: Database, owner_id: int) -> PathRoots:
    """`user_roots` of a job's owner, looked up in the job table only when a root names `{user}`."""
    name = None
    if any(USER_PLACEHOLDER in root for root in settings.data_roots):
        from services.common.models import User

        with db.session() as session:
            user = session.get(User, owner_id)
            name = user.name if user is not None else None
    return user_roots(settings, name)


# --- the paths a spec names ---------------------------------------------------------------------------------


def _walk(node: Any, prefix: str) -> Iterator[tuple[str, BaseModel]]:
    """(dotted field path, model) for every pydantic model inside a spec."""
    if isinstance(node, BaseModel):
        yield prefix, node
        for name in type(node).model_fields:
            yield from _walk(getattr(node, name), f"{prefix}.{name}" if prefix else name)
    elif isinstance(node, (list, tuple)):
        for i, item in enumerate(node):
            yield from _walk(item, f"{prefix}[{i}]")
    elif isinstance(node, dict):
        for key, item in node.items():
            yield from _walk(item, f"{prefix}.{key}" if prefix else str(key))


def _field(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def check_spec_paths(spec: BaseModel, roots: PathRoots) -> None:
    """Refuse (FieldError naming the field) a spec naming a local path outside `roots`.

    Folder sources must be existing folders inside the roots; hub ids (tokenizers, encoders, reference
    LMs, datasets) pass, local folders among them must lie inside the roots.
    """
    try:
        for prefix, model in _walk(spec, ""):
            if isinstance(model, (FolderSource, ImageFolderSource, IdxImageSource)):
                roots.folder(model.path, _field(prefix, "path"))
            elif isinstance(model, HFSource):
                roots.model_ref(model.name, _field(prefix, "name"))
            elif isinstance(model, PretrainedTokenizerConfig):
                roots.model_ref(model.name_or_path, _field(prefix, "name_or_path"))
            elif isinstance(model, EncoderConfig) and model.model is not None:
                roots.model_ref(model.model, _field(prefix, "model"))
            elif isinstance(model, GenerativeEvalConfig) and model.reference_model != DEFAULT_REFERENCE:
                roots.model_ref(model.reference_model, _field(prefix, "reference_model"))
    except PathNotAllowed as exc:
        raise FieldError(exc.field, exc.message) from None


def resolve_model_refs(spec: BaseModel, roots: PathRoots) -> BaseModel:
    """A copy of `spec` whose local encoder and reference-model folders are real paths inside `roots`.

    The loaders of those (transformers `from_pretrained`) would otherwise resolve a relative value against
    the worker's working directory. Folder sources and tokenizers stay as given: `prepare_dataset(...,
    roots=)` confines them itself, right before it reads, and records the values the user wrote.
    """
    data = spec.model_dump(mode="python")
    changed = False
    for prefix, model in _walk(spec, ""):
        if isinstance(model, EncoderConfig) and model.model is not None:
            target, key, value = prefix, "model", model.model
        elif isinstance(model, GenerativeEvalConfig) and model.reference_model != DEFAULT_REFERENCE:
            target, key, value = prefix, "reference_model", model.reference_model
        else:
            continue
        try:
            resolved = roots.model_ref(value, _field(target, key))
        except PathNotAllowed as exc:
            raise FieldError(exc.field, exc.message) from None
        if resolved != value:
            _set(data, target, key, resolved)
            changed = True
    return type(spec).model_validate(data) if changed else spec


def _set(data: Any, prefix: str, key: str, value: str) -> None:
    node = data
    for part in re.findall(r"[^.\[\]]+", prefix):
        node = node[int(part)] if isinstance(node, list) else node[part]
    node[key] = value


# --- scrubbing host paths from messages ---------------------------------------------------------------------

_END = r"(?=[/\s'\"`:,;)\]}>]|$)"  # a prefix must end at a path boundary (/x/ab is not /x/a + b)
_TOKEN_REST = r"[^\s'\"`,;)\]}>]*"
_ABSOLUTE = re.compile(r"(?<![\w.~/:>\\-])/[^\s'\"`:,;()\[\]{}<>]+")


class Scrubber:
    """Replaces host paths in text a user reads by placeholders (see the module docstring)."""

    def __init__(
        self, settings: Settings, *, scratch: Path | None = None, roots: PathRoots | None = None
    ) -> None:
        rules: list[tuple[str, str, str]] = []  # (regex of the prefix, rest regex, placeholder)

        def add(path: str | Path | None, placeholder: str, rest: str = "") -> None:
            if path is None or str(path) in ("", "/"):
                return
            for form in {os.path.abspath(str(path)), os.path.realpath(str(path))}:
                if form != "/":
                    rules.append((re.escape(form), rest, placeholder))

        add(scratch, "<scratch>")
        add(settings.work_dir, "<path>", _TOKEN_REST)  # other jobs' folders: nothing of them is shown
        for root in settings.data_roots:
            if USER_PLACEHOLDER in root:
                head, _, tail = root.partition(USER_PLACEHOLDER)
                pattern = re.escape(head) + r"[^/\s'\"`]+" + re.escape(tail)
                rules.append((pattern, "", "<data>"))
            else:
                add(root, "<data>")
        for root in roots.roots if roots is not None else ():
            add(root, "<data>")
        add(settings.cache_dir, "<cache>")
        add(settings.store_path, "<store>")
        add(settings.home, "<home>")
        add(Path(__file__).resolve().parents[2], "<app>")
        add(sys.prefix, "<python>")
        add(sys.base_prefix, "<python>")
        rules.sort(key=lambda rule: len(rule[0]), reverse=True)
        self._prefixes = re.compile(
            "|".join(f"(?P<r{i}>{prefix}{_END if not rest else rest})" for i, (prefix, rest, _) in enumerate(rules))
        ) if rules else None  # fmt: skip
        self._placeholders = [placeholder for _, _, placeholder in rules]

    def __call__(self, text: str) -> str:
        if not text or "/" not in text:
            return text
        if self._prefixes is not None:
            text = self._prefixes.sub(self._replace, text)
        return _ABSOLUTE.sub("<path>", text)

    def _replace(self, match: re.Match[str]) -> str:
        assert match.lastgroup is not None
        return self._placeholders[int(match.lastgroup[1:])]


def check_user_paths(spec: BaseModel, user_name: str, settings: Settings | None = None) -> None:
    """The submit-time check of a kind: `check_spec_paths` with the user's roots (FieldError -> 422)."""
    from services.common.settings import get_settings

    check_spec_paths(spec, user_roots(settings or get_settings(), user_name))
