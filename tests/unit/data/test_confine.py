"""`mmdlm.confine` and the confined folder corpus / tokenizer: every escape is refused with one message."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mmdlm.config.data import FolderSource, PrepareDataConfig, PretrainedTokenizerConfig
from mmdlm.confine import PathNotAllowed, PathRoots, not_allowed_message
from mmdlm.data.corpus import FolderCorpus
from mmdlm.data.prepare import prepare_dataset


@pytest.fixture
def layout(tmp_path: Path) -> dict[str, Path]:
    """root/alice/corpus (allowed), outside/secret (not), symlinks from inside to outside."""
    root = tmp_path / "root"
    corpus = root / "alice" / "corpus"
    corpus.mkdir(parents=True)
    (corpus / "a.txt").write_text("first document\n", encoding="utf-8")
    (corpus / "b.jsonl").write_text('{"text": "second"}\n{"text": "third"}\n', encoding="utf-8")
    outside = tmp_path / "outside" / "secret"
    outside.mkdir(parents=True)
    (outside / "s.txt").write_text("a secret\n", encoding="utf-8")
    (root / "alice" / "escape").symlink_to(outside, target_is_directory=True)
    (root / "alice" / "file.txt").write_text("x", encoding="utf-8")
    leaky = root / "alice" / "leaky"
    leaky.mkdir()
    (leaky / "ok.txt").write_text("fine\n", encoding="utf-8")
    (leaky / "link.txt").symlink_to(outside / "s.txt")
    inner = root / "alice" / "inner-link"
    inner.symlink_to(corpus, target_is_directory=True)
    return {"root": root, "user": root / "alice", "corpus": corpus, "outside": outside}


REFUSED = [
    "escape",  # a symlink inside the root to a folder outside
    "escape/",
    "leaky",  # a folder holding a symlinked file that leads outside
    "../outside/secret",
    "corpus/../../../outside/secret",
    "corpus/..",
    "missing",
    "file.txt",  # a file, not a folder
    "/etc",
    "/",
    "bad\x00name",
]


@pytest.mark.parametrize("value", REFUSED)
def test_every_escape_gets_the_same_message(layout: dict[str, Path], value: str) -> None:
    roots = PathRoots.of([layout["user"]])
    with pytest.raises(PathNotAllowed) as info:
        roots.folder(value, "source.path")
    assert str(info.value) == not_allowed_message("source.path")
    assert info.value.field == "source.path"


def test_absolute_outside_and_absolute_inside(layout: dict[str, Path]) -> None:
    roots = PathRoots.of([layout["user"]])
    with pytest.raises(PathNotAllowed):
        roots.folder(str(layout["outside"]), "source.path")
    assert roots.folder(str(layout["corpus"]), "source.path") == layout["corpus"].resolve()
    assert roots.folder("corpus", "source.path") == layout["corpus"].resolve()
    # a symlink that stays inside the roots is fine
    assert roots.folder("inner-link", "source.path") == layout["corpus"].resolve()


def test_no_roots_allows_nothing_local(layout: dict[str, Path]) -> None:
    roots = PathRoots.of([])
    with pytest.raises(PathNotAllowed):
        roots.folder(str(layout["corpus"]), "source.path")
    assert roots.model_ref("gpt2", "tokenizer.name_or_path") == "gpt2"


def test_model_ref_hub_ids_and_local_folders(
    layout: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    roots = PathRoots.of([layout["user"]])
    assert roots.model_ref("org/model-1.5", "encoder.model") == "org/model-1.5"
    assert roots.model_ref("corpus", "encoder.model") == str(layout["corpus"].resolve())
    for value in ("escape", "/etc", "../outside/secret", "./corpus/..", "~/x"):
        with pytest.raises(PathNotAllowed):
            roots.model_ref(value, "encoder.model")
    # a hub-shaped name that exists relative to the working directory would be read as a folder there
    monkeypatch.chdir(layout["outside"].parent)
    with pytest.raises(PathNotAllowed):
        roots.model_ref("secret", "encoder.model")


def test_folder_corpus_confined_reads_and_records_the_given_path(layout: dict[str, Path]) -> None:
    roots = PathRoots.of([layout["user"]])
    corpus = FolderCorpus(FolderSource(path="corpus"), roots)
    assert [d.text.strip() for d in corpus] == ["first document", "second", "third"]
    assert corpus.describe()["path"] == "corpus"  # never the worker's real path
    with pytest.raises(PathNotAllowed):
        FolderCorpus(FolderSource(path="leaky"), roots)


def test_file_swapped_for_a_symlink_after_opening_is_refused(layout: dict[str, Path]) -> None:
    roots = PathRoots.of([layout["user"]])
    corpus = FolderCorpus(FolderSource(path="corpus"), roots)
    target = layout["corpus"] / "a.txt"
    target.unlink()
    target.symlink_to(layout["outside"] / "s.txt")  # swapped between the listing and the read
    with pytest.raises(PathNotAllowed):
        list(corpus)


def test_unconfined_library_use_is_unchanged(layout: dict[str, Path]) -> None:
    corpus = FolderCorpus(FolderSource(path=str(layout["outside"])))
    assert [d.text for d in corpus] == ["a secret\n"]


def test_prepare_dataset_refuses_a_tokenizer_folder_outside(layout: dict[str, Path], tmp_path: Path) -> None:
    roots = PathRoots.of([layout["user"]])
    config = PrepareDataConfig(
        source=FolderSource(path="corpus"),
        tokenizer=PretrainedTokenizerConfig(name_or_path=str(layout["outside"])),
        validation_fraction=0.5,
    )
    with pytest.raises(PathNotAllowed, match="tokenizer.name_or_path"):
        prepare_dataset(config, tmp_path / "out", roots=roots)
    assert not (tmp_path / "out").exists()
    assert not any(p.name.startswith(".out.tmp") for p in tmp_path.iterdir())


def test_prepare_dataset_confined_records_given_values(layout: dict[str, Path], tmp_path: Path) -> None:
    roots = PathRoots.of([layout["user"]])
    config = PrepareDataConfig(source=FolderSource(path="corpus"), tokenizer="bert-base-uncased", seq_len=16,
                               validation_fraction=0.5)  # fmt: skip
    manifest = prepare_dataset(config, tmp_path / "out", roots=roots)
    text = (tmp_path / "out" / "manifest.json").read_text(encoding="utf-8")
    assert manifest.source["path"] == "corpus"
    assert str(layout["root"]) not in text and os.fspath(tmp_path) not in text
