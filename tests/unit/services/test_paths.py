"""`services.common.paths`: per-user data roots, the spec path walk, and the host-path scrubber."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from services.common.errors import FieldError
from services.common.kinds import load_kinds
from services.common.paths import Scrubber, check_spec_paths, resolve_model_refs, user_roots
from services.common.settings import Settings


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    (tmp_path / "data" / "alice" / "corpus").mkdir(parents=True)
    (tmp_path / "data" / "alice" / "corpus" / "a.txt").write_text("hello", encoding="utf-8")
    (tmp_path / "data" / "alice" / "enc").mkdir()
    (tmp_path / "data" / "bob" / "private").mkdir(parents=True)
    return Settings(home=tmp_path / "home", data_roots=f"{tmp_path}/data/{{user}}")


def test_settings_roots_default_template_and_none(tmp_path: Path) -> None:
    assert Settings(home=tmp_path).data_roots == [str(tmp_path / "data")]
    assert Settings(home=tmp_path, data_roots="none").data_roots == []
    assert Settings(home=tmp_path, data_roots="/a,/b/{user}:/c").data_roots == ["/a", "/b/{user}", "/c"]


def test_user_roots_expand_only_safe_names(settings: Settings, tmp_path: Path) -> None:
    assert user_roots(settings, "alice").roots == ((tmp_path / "data" / "alice").resolve(),)
    for name in ("../bob", "a/b", ".hidden", "", None):
        assert user_roots(settings, name).roots == ()


def spec(kind: str, **fields: object) -> object:
    return load_kinds()[kind].spec.model_validate({"kind": kind, **fields})


def test_every_path_field_of_every_kind_is_checked(settings: Settings, tmp_path: Path) -> None:
    alice = user_roots(settings, "alice")
    bob_dir = str(tmp_path / "data" / "bob" / "private")
    cases = [
        ("source.path", spec("prepare-data", source={"type": "folder", "path": bob_dir})),
        ("source.path", spec("prepare-data", source={"type": "folder", "path": "../bob/private"})),
        ("source.path", spec("prepare-images", source={"type": "folder", "path": bob_dir})),
        ("source.path", spec("prepare-images", source={"type": "idx", "path": "../bob/private"})),
        ("source.name", spec("prepare-data", source={"type": "hf", "name": bob_dir})),
        ("tokenizer.name_or_path", spec("prepare-data", tokenizer={"type": "pretrained", "name_or_path": bob_dir})),
        ("encoder.model", spec("encode", dataset="x", encoder={"name": "minilm", "model": "/etc"})),
        ("tokenizer.name_or_path", spec("encode", texts=["a", "b"], tokenizer={"type": "pretrained", "name_or_path": "/"})),
        ("generative.reference_model", spec("evaluate", model="m", generative={"reference_model": bob_dir})),
        ("model.encoder.model", spec("train", dataset="d", model={"family": "mmdit", "encoder": {"name": "minilm", "model": bob_dir}})),
    ]  # fmt: skip
    for field, value in cases:
        with pytest.raises(FieldError) as info:
            check_spec_paths(value, alice)  # type: ignore[arg-type]
        assert info.value.field == field
        assert "bob" not in str(info.value) and str(tmp_path) not in str(info.value)
    # what alice may name
    check_spec_paths(spec("prepare-data", source={"type": "folder", "path": "corpus"}), alice)  # type: ignore[arg-type]
    check_spec_paths(spec("prepare-data", tokenizer={"type": "pretrained", "name_or_path": "org/tok"}), alice)  # type: ignore[arg-type]
    check_spec_paths(spec("evaluate", model="m"), alice)  # type: ignore[arg-type]


def test_resolve_model_refs_rewrites_local_folders_only(settings: Settings, tmp_path: Path) -> None:
    alice = user_roots(settings, "alice")
    local = spec("encode", dataset="x", encoder={"name": "minilm", "model": "enc"})
    resolved = resolve_model_refs(local, alice)  # type: ignore[arg-type]
    assert resolved.encoder.model == str((tmp_path / "data" / "alice" / "enc").resolve())  # type: ignore[attr-defined]
    hub = spec("encode", dataset="x", encoder={"name": "e5", "model": "intfloat/e5-small"})
    assert resolve_model_refs(hub, alice) is hub  # type: ignore[arg-type]


def test_scrubber_placeholders(settings: Settings, tmp_path: Path) -> None:
    scratch = settings.work_dir / "jobs" / "job1"  # type: ignore[operator]
    scrub = Scrubber(settings, scratch=scratch, roots=user_roots(settings, "alice"))
    other_job = settings.work_dir / "jobs" / "job2" / "run" / "samples.jsonl"  # type: ignore[operator]
    text = (
        f"FileNotFoundError: [Errno 2] No such file: '{scratch}/dataset/x.npy'; also {other_job}, "
        f"{tmp_path}/data/alice/corpus/a.txt, {tmp_path}/data/bob/private/b.txt, {settings.cache_dir}/artifacts/a1, "
        f"{Path.home()}/.cache/huggingface, /etc/passwd, {sys.prefix}/lib/x.py, (/var/lib/thing) "
        "and s3://bucket/key, http://host:9000/v1/jobs, 12 tokens/s"
    )
    out = scrub(text)
    assert "'<scratch>/dataset/x.npy'" in out
    assert "<data>/corpus/a.txt" in out and "<data>/private/b.txt" in out
    assert "<cache>/artifacts/a1" in out and "<python>/lib/x.py" in out and "(<path>)" in out
    assert "job2" not in out and "samples.jsonl" not in out and "passwd" not in out
    assert str(tmp_path) not in out and str(Path.home()) not in out
    assert "s3://bucket/key" in out and "http://host:9000/v1/jobs" in out and "12 tokens/s" in out
