"""Confine the local paths a config names to folders an operator allows (the platform's data roots).

A job spec is written by a user but read on a worker, so every path in it (a folder source, a local
tokenizer, encoder or reference model) must land inside roots the deployment chose, after every
symlink is followed. `PathRoots.folder()` / `.model_ref()` resolve a value or raise `PathNotAllowed`,
whose message is the SAME whether the path is outside, missing, a file, a symlink that escapes or
uses `..`: a refusal must not tell a user what exists on the worker. The library runs unconfined
(`roots=None`) when a person runs it on their own files; the services always pass roots.

Relative values resolve against the first root (the user's data folder); absolute values must resolve
inside one of the roots. A bare hub id (`gpt2`, `org/name`) that is not a folder under the first root
stays a hub id, unless the same name exists relative to the worker's working directory, where the
Hugging Face loaders would read it as a local folder.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")


def not_allowed_message(field: str) -> str:
    """The one message for every refused path (never echoes the value or what exists there)."""
    return (
        f"{field}: not a readable path inside the data folders this deployment allows; give a path "
        "relative to your data folder (see MMDLM_DATA_ROOTS)"
    )


class PathNotAllowed(ValueError):
    """A config names a path outside the allowed roots (or one that does not exist, or has the wrong type)."""

    def __init__(self, field: str) -> None:
        super().__init__(not_allowed_message(field))
        self.field = field
        self.message = not_allowed_message(field).split(": ", 1)[1]


def _real(path: str | Path) -> Path:
    return Path(os.path.realpath(path))


@dataclass(frozen=True)
class PathRoots:
    """Folders whose contents a job may read; `roots[0]` is where relative paths start."""

    roots: tuple[Path, ...]

    @classmethod
    def of(cls, roots: Iterable[str | Path]) -> PathRoots:
        return cls(tuple(_real(Path(r)) for r in roots))

    def contains(self, path: str | Path) -> bool:
        """Whether `path`, with every symlink resolved, lies inside (or is) one of the roots."""
        try:
            real = _real(path)
        except (ValueError, OSError):
            return False
        return any(real == root or real.is_relative_to(root) for root in self.roots)

    def resolve(self, value: str, field: str) -> Path:
        """The real path of `value` inside the roots (it need not exist); PathNotAllowed otherwise."""
        if not self.roots or not value or "\x00" in value or "\\" in value:
            raise PathNotAllowed(field)
        raw = Path(value)
        if ".." in raw.parts:
            raise PathNotAllowed(field)
        candidate = raw if raw.is_absolute() else self.roots[0] / raw
        try:
            real = _real(candidate)
        except (ValueError, OSError):
            raise PathNotAllowed(field) from None
        if not any(real == root or real.is_relative_to(root) for root in self.roots):
            raise PathNotAllowed(field)
        return real

    def folder(self, value: str, field: str) -> Path:
        """An existing folder inside the roots whose every entry also resolves inside them."""
        real = self.resolve(value, field)
        if not real.is_dir():
            raise PathNotAllowed(field)
        self.check_tree(real, field)
        return real

    def check_tree(self, folder: Path, field: str) -> None:
        """Refuse a folder holding a symlink (file or folder) that leads outside the roots."""
        for dirpath, dirnames, filenames in os.walk(folder, followlinks=False):
            for name in (*dirnames, *filenames):
                entry = os.path.join(dirpath, name)
                if os.path.islink(entry) and not self.contains(entry):
                    raise PathNotAllowed(field)

    def model_ref(self, value: str, field: str) -> str:
        """A hub id (returned as is) or the real path of a local model/tokenizer folder inside the roots."""
        if _HUB_ID.match(value) and not any(part in {".", ".."} for part in value.split("/")):
            local = self.roots[0] / value if self.roots else None
            if local is None or not os.path.lexists(local):
                if os.path.lexists(value):  # a loader would read ./value on the worker as a folder
                    raise PathNotAllowed(field)
                return value
        return str(self.folder(value, field))

    def placeholder(self, text: str) -> str:
        """`text` with every root replaced by `<data>` (for messages a user reads)."""
        for root in sorted(self.roots, key=lambda r: len(str(r)), reverse=True):
            text = text.replace(str(root), "<data>")
        return text


def open_confined(path: Path, roots: PathRoots | None, field: str) -> int:
    """A read-only descriptor of `path`; with roots, its real path must lie inside them and its last
    component must not turn into a symlink between the check and the open (O_NOFOLLOW)."""
    if roots is None:
        return os.open(path, os.O_RDONLY)
    if not roots.contains(path):
        raise PathNotAllowed(field)
    try:
        return os.open(_real(path), os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError:
        raise PathNotAllowed(field) from None
