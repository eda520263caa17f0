"""Job specs can only read inside the operator's data roots, and what users read carries no host paths.

Attacks from issue 11, against a real API + encode worker: another user's job folder on the worker,
another user's data folder (absolute and by `..`), a symlink inside the user's own folder that leads
out, absolute host paths (/etc, the worker's home), a missing path and a file. Every one is a 422
naming the field whose body is byte-for-byte the one a missing path gets (so it says nothing about
what exists) and holds no host path. A legit folder in the user's root still prepares end to end.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from mmdlm.confine import not_allowed_message
from tests.utils.harness import REPO, Platform

pytestmark = pytest.mark.integration


def corpus(folder: Path, words: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(6):
        (folder / f"doc{i}.txt").write_text(f"{words} number {i}. " * 20, encoding="utf-8")
    return folder


def submit_raw(p: Platform, token: str, spec: dict[str, Any]) -> httpx.Response:
    return httpx.post(f"{p.url}/v1/jobs", json=spec, headers={"Authorization": f"Bearer {token}"}, timeout=30)


def folder_spec(path: str) -> dict[str, Any]:
    return {"kind": "prepare-data", "source": {"type": "folder", "path": path}, "tokenizer": "bert-base-uncased",
            "seq_len": 32, "validation_fraction": 0.2}  # fmt: skip


def host_paths(tmp_path: Path) -> list[str]:
    return [str(tmp_path), str(REPO), sys.prefix, str(Path.home()), "/etc", "/tmp"]


def assert_no_leak(text: str, tmp_path: Path, *extra: str) -> None:
    for path in [*host_paths(tmp_path), *extra]:
        assert path not in text, (path, text)


def test_attacks_are_422_without_a_leak_and_a_legit_folder_works(
    backend: Any, platform_factory: Any, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    p: Platform = platform_factory(
        backend,
        workers_queues=[["encode"]],
        env={"MMDLM_DATA_ROOTS": f"{data}/{{user}}", "MMDLM_KEEP_SCRATCH": "true"},
    )
    alice_root, bob_root = data / "alice", data / "bob"
    corpus(alice_root / "corpus", "alice writes")
    bob_corpus = corpus(bob_root / "corpus", "bob's private notes")
    (alice_root / "escape").symlink_to(bob_corpus, target_is_directory=True)
    (alice_root / "etc-link").symlink_to("/etc", target_is_directory=True)
    (alice_root / "leaky").mkdir()
    (alice_root / "leaky" / "ok.txt").write_text("fine " * 50, encoding="utf-8")
    (alice_root / "leaky" / "stolen.txt").symlink_to(bob_corpus / "doc0.txt")

    # bob's own job leaves its run folder on the worker (kept scratch): alice must not reach it
    bob = p.client_for("bob")
    bob_job = bob.submit(folder_spec("corpus"))
    assert bob.wait(bob_job["id"], timeout_s=180)["status"] == "succeeded"
    bob_run = p.settings.work_dir / "jobs" / bob_job["id"]  # type: ignore[operator]
    assert bob_run.is_dir()

    reference = submit_raw(p, p.token, folder_spec("no-such-folder"))
    assert reference.status_code == 422, reference.text
    body = reference.json()
    assert body["errors"][0]["field"] == "source.path"
    assert body["detail"] == not_allowed_message("source.path")

    attacks = [
        str(bob_run),  # another user's job folder on the worker
        str(bob_corpus),  # another user's data, absolute
        "../bob/corpus",  # ... and by `..`
        "corpus/../../bob/corpus",
        "escape",  # a symlink in alice's own folder that leads to bob's
        "etc-link",
        "leaky",  # a folder holding one symlinked file that leads out
        "/etc",
        str(Path.home()),
        "/",
        "corpus/doc0.txt",  # a file, not a folder
        str(alice_root / "corpus" / "missing"),
    ]
    for path in attacks:
        response = submit_raw(p, p.token, folder_spec(path))
        assert response.status_code == 422, (path, response.text)
        assert response.text == reference.text, (path, response.text)  # says nothing about what is there
        assert_no_leak(response.text, tmp_path, bob_job["id"], "bob")

    # every other path a spec can name
    others = [
        ("tokenizer.name_or_path", {**folder_spec("corpus"), "tokenizer": {"type": "pretrained", "name_or_path": str(bob_corpus)}}),
        ("source.name", {"kind": "prepare-data", "source": {"type": "hf", "name": "../bob/corpus"}}),
        ("encoder.model", {"kind": "encode", "texts": ["a b", "c d"], "encoder": {"name": "minilm", "model": "/etc"}}),
        ("tokenizer.name_or_path", {"kind": "encode", "texts": ["a b", "c d"], "tokenizer": {"type": "pretrained", "name_or_path": "escape"}}),
        ("generative.reference_model", {"kind": "evaluate", "model": "any", "generative": {"reference_model": str(bob_run)}}),
        ("model.encoder.model", {"kind": "train", "dataset": "any", "model": {"family": "mmdit", "encoder": {"name": "minilm", "model": "escape"}}}),
    ]  # fmt: skip
    for field, spec in others:
        response = submit_raw(p, p.token, spec)
        assert response.status_code == 422, (field, response.text)
        assert response.json()["errors"][0]["field"] == field, response.text
        assert_no_leak(response.text, tmp_path, bob_job["id"], "bob")
    # the REST train spec has no run_dir / resume / data path a user could aim at the worker's disk
    for field in ("run_dir", "resume"):
        response = submit_raw(
            p, p.token, {"kind": "train", "dataset": "any", "model": {"family": "mdlm"}, field: "/tmp"}
        )
        assert response.status_code == 422 and field in response.text, response.text

    # a legit folder in alice's root: prepared end to end; the artifact records the path alice gave
    job = p.client.submit(folder_spec("corpus"))
    done = p.wait(job["id"], timeout_s=180)
    assert done["status"] == "succeeded", done
    artifact = p.client.artifact(done["artifacts"][0])
    assert artifact["metadata"]["source"]["path"] == "corpus"
    manifest = p.client.download(artifact["id"], "manifest.json").decode()
    assert_no_leak(manifest, tmp_path)
    assert "bob" not in manifest


def test_worker_checks_again_and_errors_carry_no_host_paths(
    make_backend: Any, platform_factory: Any, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    p: Platform = platform_factory(
        make_backend("embedded"), workers_queues=[], env={"MMDLM_DATA_ROOTS": f"{data}/{{user}}"}
    )
    alice_root = data / "alice"
    swapped = corpus(alice_root / "swapped", "alice")
    secret = corpus(tmp_path / "outside", "secret words")
    corpus(alice_root / "plain", "alice")
    (alice_root / "empty-tokenizer").mkdir()
    # accepted at submit ...
    job = p.client.submit(folder_spec("swapped"))
    broken = p.client.submit(
        {**folder_spec("plain"), "tokenizer": {"type": "pretrained", "name_or_path": "empty-tokenizer"}}
    )
    # ... then the folder becomes a symlink to outside before any worker runs it
    for child in swapped.iterdir():
        child.unlink()
    swapped.rmdir()
    swapped.symlink_to(secret, target_is_directory=True)
    p.add_worker(["encode"])
    done = p.wait(job["id"], timeout_s=120)
    assert done["status"] == "failed" and done["attempt"] == 1, done
    assert done["error"] == not_allowed_message("source.path")
    assert not p.client.artifacts(job_id=job["id"])["data"]

    # a library error naming the worker's real folders reaches the user with placeholders only
    done = p.wait(broken["id"], timeout_s=120)
    assert done["status"] == "failed", done
    assert "tokenizer.name_or_path" in done["error"]
    text = done["error"] + "\n".join(
        str(e.data)
        for e in p.client.events(broken["id"], follow=False)
        if e.type in ("log", "state", "progress")
    )
    assert "<python>/" in text and "<app>/" in text  # the traceback is there, its file paths scrubbed
    assert_no_leak(text, tmp_path)
    assert os.fspath(p.settings.work_dir) not in text


def test_embed_encoder_model_is_confined(make_backend: Any, platform_factory: Any, tmp_path: Path) -> None:
    from tests.integration.sampler.helpers import sampler_env, sampler_process

    data = tmp_path / "data"
    (data / "alice").mkdir(parents=True)
    (data / "alice" / "escape").symlink_to(Path.home(), target_is_directory=True)
    port, env = sampler_env()
    p: Platform = platform_factory(
        make_backend("embedded"), workers_queues=[], env={**env, "MMDLM_DATA_ROOTS": f"{data}/{{user}}"}
    )
    with sampler_process(p, port):
        for model in ("/etc", "escape", "../bob", str(Path.home()), "./missing"):  # "missing": a hub id
            body = {"texts": ["a castle"], "encoder": {"name": "minilm", "model": model}}
            response = httpx.post(f"{p.url}/v1/embed", json=body, headers={"Authorization": f"Bearer {p.token}"},
                                  timeout=30)  # fmt: skip
            assert response.status_code == 422, (model, response.text)
            assert response.json()["detail"] == not_allowed_message("encoder.model"), response.text
