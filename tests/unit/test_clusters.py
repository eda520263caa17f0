"""HDLM clusters (spec §7): size-constrained k-means, the artifact and its vocabulary checks, embedding sources
and the embedding initialisation of §6.4."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from mmdlm.clusters import (
    Clusters,
    ClusterVocabularyError,
    clusters_for_tokenizer,
    compute_clusters,
    embeddings_from_checkpoint,
    embeddings_from_encoder,
    enforce_sizes,
    init_embeddings_from_clusters,
    size_constrained_kmeans,
    tokenizer_fingerprint,
)


def skewed(n: int = 1000, seed: int = 0) -> np.ndarray:
    """A dense blob (90%) plus scattered points: plain k-means leaves clusters far outside the size bounds."""
    rng = np.random.default_rng(seed)
    return np.concatenate([rng.normal(0, 0.01, (9 * n // 10, 8)), rng.normal(0, 3, (n // 10, 8))]).astype(
        np.float32
    )


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_kmeans_sizes_respected_and_deterministic(metric: str) -> None:
    x = skewed()
    result = size_constrained_kmeans(x, 20, metric=metric, seed=3, min_size_ratio=0.5, max_size_ratio=2.0)
    sizes = np.bincount(result.labels, minlength=20)
    assert (result.min_size, result.max_size) == (25, 100)
    assert sizes.min() >= 25 and sizes.max() <= 100 and sizes.sum() == 1000
    again = size_constrained_kmeans(x, 20, metric=metric, seed=3, min_size_ratio=0.5, max_size_ratio=2.0)
    assert np.array_equal(result.labels, again.labels) and np.array_equal(result.centroids, again.centroids)
    other = size_constrained_kmeans(x, 20, metric=metric, seed=4, min_size_ratio=0.5, max_size_ratio=2.0)
    assert not np.array_equal(result.labels, other.labels)


def test_kmeans_recovers_separated_clusters() -> None:
    rng = np.random.default_rng(1)
    centers = rng.normal(0, 10, (5, 4))
    truth = np.repeat(np.arange(5), 40)
    x = (centers[truth] + rng.normal(0, 0.1, (200, 4))).astype(np.float32)
    labels = size_constrained_kmeans(x, 5, seed=0).labels
    # same partition up to renaming
    assert len({(a, b) for a, b in zip(truth, labels, strict=True)}) == 5


def test_donor_problem_fixed() -> None:
    """A cluster may only give rows away while it is above the minimum, so no donor ends below it."""
    rng = np.random.default_rng(2)
    for trial in range(20):
        n, C = 300, 12
        cost = rng.random((n, C)) ** 3
        cost[:, :3] *= 0.01  # three magnets attract almost everything
        labels = enforce_sizes(cost, cost.argmin(1), min_size=20, max_size=40)
        sizes = np.bincount(labels, minlength=C)
        assert sizes.min() >= 20 and sizes.max() <= 40, (trial, sizes)
    with pytest.raises(ValueError, match="infeasible"):
        enforce_sizes(cost, cost.argmin(1), min_size=30, max_size=40)


def test_kmeans_input_errors() -> None:
    with pytest.raises(ValueError, match="num_clusters"):
        size_constrained_kmeans(np.zeros((5, 2)), 6)


def test_artifact_round_trip_and_checks(tmp_path) -> None:
    emb = skewed(200)
    clusters = compute_clusters(emb, 8, source={"kind": "test"}, exclude_ids=[199], fingerprint="abc", seed=1)
    assert clusters.cluster_map[199] == -1 and clusters.sizes().min() >= 1
    directory = clusters.save(tmp_path / "clusters")
    manifest = json.loads((directory / "manifest.json").read_text())
    assert manifest["num_clusters"] == 8 and manifest["vocab_size"] == 200
    assert manifest["source"] == {"kind": "test"} and manifest["tokenizer_fingerprint"] == "abc"
    assert manifest["method"]["seed"] == 1 and manifest["excluded_ids"] == [199]
    assert {f["path"] for f in manifest["files"]} == {"cluster_map.npy", "centroids.npy"}
    loaded = Clusters.load(directory, vocab_size=200, fingerprint="abc")
    assert np.array_equal(loaded.cluster_map, clusters.cluster_map)
    np.testing.assert_array_equal(loaded.centroids, clusters.centroids)
    with pytest.raises(ClusterVocabularyError, match="200 token ids.*201"):
        Clusters.load(directory, vocab_size=201)
    with pytest.raises(ClusterVocabularyError, match="another tokenizer"):
        Clusters.load(directory, fingerprint="xyz")
    np.save(directory / "cluster_map.npy", np.zeros(200, dtype=np.int64))
    with pytest.raises(ValueError, match="sha256"):
        Clusters.load(directory)
    with pytest.raises(FileNotFoundError, match="manifest.json"):
        Clusters.load(tmp_path)


def test_clusters_must_be_non_empty() -> None:
    with pytest.raises(ValueError, match="non-empty"):
        Clusters(np.array([0, 0, 2]), np.zeros((3, 2)))


def _word_tokenizer(words: list[str]):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", mask_token="[MASK]")


def test_encoder_embeddings_same_and_foreign_vocabulary() -> None:
    from transformers import AutoModel, AutoTokenizer

    from mmdlm.clusters import default_encoder_path

    path = default_encoder_path()
    bert = AutoTokenizer.from_pretrained(path)
    table = AutoModel.from_pretrained(path).get_input_embeddings().weight.detach().numpy()
    words = ["[UNK]", "[MASK]", "king", "queen", "playing", "zzzqqq"]
    ours = _word_tokenizer(words)
    emb = embeddings_from_encoder(ours, path)
    assert emb.shape == (len(ours), table.shape[1])
    np.testing.assert_allclose(emb[2], table[bert.convert_tokens_to_ids("king")], rtol=1e-6)
    pieces = bert("playing", add_special_tokens=False)["input_ids"]
    np.testing.assert_allclose(emb[4], table[pieces].mean(0), rtol=1e-5)
    assert tokenizer_fingerprint(ours) != tokenizer_fingerprint(bert)
    np.testing.assert_array_equal(embeddings_from_encoder(bert, path), table)  # same vocabulary: its rows
    clusters = clusters_for_tokenizer(ours, 2, mask_id=1, encoder=path, seed=0)
    assert clusters.cluster_map[1] == -1 and clusters.manifest["source"]["kind"] == "encoder"
    assert clusters.manifest["tokenizer_fingerprint"] == tokenizer_fingerprint(ours)


def test_checkpoint_embeddings_and_centroid_init(tmp_path) -> None:
    from safetensors.torch import save_file

    from mmdlm.config.model import DiTConfig
    from mmdlm.models.dit import DiT

    model = DiT(DiTConfig.model_validate("cpu-nano"), 128)
    save_file(model.state_dict(), tmp_path / "model.safetensors")
    emb = embeddings_from_checkpoint(tmp_path, 100)
    np.testing.assert_array_equal(emb, model.embed.weight.detach().numpy()[:100])
    clusters = compute_clusters(emb, 4, source={"kind": "checkpoint"}, exclude_ids=[99])
    fresh = DiT(DiTConfig.model_validate("cpu-nano"), 128)
    init_embeddings_from_clusters(fresh.embed.weight, clusters, 100, emb)
    np.testing.assert_array_equal(fresh.embed.weight.detach().numpy()[100:104], clusters.centroids)
    torch.testing.assert_close(fresh.embed.weight[:100], model.embed.weight[:100])
    narrow = Clusters(clusters.cluster_map, np.zeros((4, 3)))
    with pytest.raises(ValueError, match="hidden_size=64"):
        init_embeddings_from_clusters(fresh.embed.weight, narrow, 100)
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        embeddings_from_checkpoint(tmp_path / "nope", 100)


def test_checkpoint_clusters_carry_their_token_embeddings(tmp_path) -> None:
    """embed_init=centroids copies the clustered checkpoint's token rows; a job may train on another machine
    than the one that clustered, so the artifact holds them and the checkpoint can be gone."""
    import shutil

    from safetensors.torch import save_file
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    from mmdlm.config.model import DiTConfig
    from mmdlm.models.dit import DiT

    model = DiT(DiTConfig.model_validate("cpu-nano"), 128)
    (tmp_path / "ckpt").mkdir()
    save_file(model.state_dict(), tmp_path / "ckpt" / "model.safetensors")
    words = Tokenizer(models.WordLevel({f"w{i}": i for i in range(100)}, unk_token="w0"))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=words)
    clusters = clusters_for_tokenizer(tokenizer, 4, mask_id=99, checkpoint=tmp_path / "ckpt")
    clusters.save(tmp_path / "clusters")
    shutil.rmtree(tmp_path / "ckpt")
    loaded = Clusters.load(tmp_path / "clusters", tokenizer=tokenizer)
    assert "token_embeddings.npy" in {f["path"] for f in loaded.manifest["files"]}
    assert loaded.token_embeddings is not None
    np.testing.assert_array_equal(loaded.token_embeddings, model.embed.weight.detach().numpy()[:100])
    from_encoder = Clusters(clusters.cluster_map, clusters.centroids, {})
    assert Clusters.load(from_encoder.save(tmp_path / "plain")).token_embeddings is None
