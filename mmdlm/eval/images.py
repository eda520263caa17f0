"""Evaluation of an image-text model (family `image-mmdit`), each number next to its ceiling or baseline,
each with the protocol that produced it. Seeded: the same model, data and config give the same numbers.

* judge: a small classifier (`mlp` or `cnn`, torch, seeded) trained on the REAL train split's images and
  labels; its accuracy on the real validation split is the ceiling of (a).
* (a) text -> image accuracy (`t2i`): images generated for validation captions, labelled by the judge;
  the score is agreement with the label the caption names. Baseline: images generated with the caption
  hidden (the classifier-free-guidance null branch: the unconditional model), scored against the same
  labels (chance-level when the model ignores nothing it should not).
* (b) Fréchet distance on the judge's penultimate features (protocol `frechet-classifier-features`, an
  FID-style distance with a domain classifier instead of Inception): generated t2i images vs the real
  validation images of the same rows. Reported next to the unconditional samples' distance and the
  distance of as many real TRAIN images (the floor at this sample size).
* (c) image -> text caption accuracy (`i2t`): a caption is generated for each validation image; it is
  correct when the only label word it contains is the image's label. Baseline: captions generated with
  the image hidden (unconditional text), scored against the same images.

    result = evaluate_images(pipe, data, ImageEvalConfig(num_images=200))
    result["t2i"]["accuracy"], result["t2i"]["unconditional_accuracy"], result["classifier"]["accuracy"]

`pipe` is a loaded model (`mmdlm.pipeline.Pipeline`: `.built`, `.spec`, `.tokenizer`); `data` the dataset
the family opens (`ImageMMDiTFamily.open_dataset` / `open_image_dataset`). PNG helpers are re-exported
from `mmdlm.data.png`.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from mmdlm.config.latent import ImageEvalConfig, ImageSampleConfig
from mmdlm.data.png import decode_png, png_bytes, png_grid_bytes, save_png_grid, to_uint8

__all__ = [
    "ImageClassifier",
    "caption_accuracy",
    "decode_png",
    "evaluate_images",
    "frechet_distance",
    "label_names",
    "png_bytes",
    "png_grid_bytes",
    "save_png_grid",
    "text_to_image_accuracy",
    "to_uint8",
    "train_classifier",
]

FRECHET_PROTOCOL = "frechet-classifier-features"


# ---- data helpers ------------------------------------------------------------------------------------------
def label_names(data: Any) -> list[str]:
    """The label words of a dataset: `labels` of an image-dataset manifest, the digit names for the digits."""
    from mmdlm.data.images import DIGITS, DigitsDataset

    names = DIGITS if isinstance(data, DigitsDataset) else getattr(data, "labels", None)
    if names is None or len(names) == 0:
        raise ValueError(
            "this image dataset has no labels (manifest.labels is null): image metrics need them"
        )
    return [str(n) for n in names]


def _tokenizer(pipe: Any, data: Any) -> Any:
    tok = getattr(pipe, "tokenizer", None)
    if tok is not None:
        return tok
    if callable(getattr(data, "tokenizer", None)):
        return data.tokenizer()
    from mmdlm.data.tokenizers import load_tokenizer

    return load_tokenizer(data.root / data.manifest.tokenizer.dir)


def _rows(data: Any, split: str, limit: int | None) -> np.ndarray:
    """The first `limit` labelled rows of a split, as split indices."""
    part = data.split(split)
    labels = np.concatenate(
        [part.get_batch(np.arange(s, min(s + 4096, len(part))))["label"] for s in range(0, len(part), 4096)]
    )
    rows = np.flatnonzero(labels >= 0)
    return rows if limit is None else rows[:limit]


def _spread(rows: np.ndarray, limit: int | None) -> np.ndarray:
    if limit is None or len(rows) <= limit:
        return rows
    return rows[np.linspace(0, len(rows) - 1, limit).round().astype(np.int64)]


def _batch(data: Any, split: str, rows: np.ndarray) -> dict[str, np.ndarray]:
    part = data.split(split)
    chunks = [part.get_batch(rows[s : s + 4096]) for s in range(0, len(rows), 4096)]
    return {
        k: np.concatenate([c[k] for c in chunks]) for k in ("input_ids", "attention_mask", "image", "label")
    }


def named_label(text: str, names: list[str]) -> int | None:
    """The index of the one label name `text` contains as whole words (None: none or several)."""
    lowered = f" {' '.join(text.lower().split())} "
    found = {
        i for i, n in enumerate(names) if re.search(rf"(?<![\w]){re.escape(n.lower())}(?![\w])", lowered)
    }
    return found.pop() if len(found) == 1 else None


# ---- the judge ---------------------------------------------------------------------------------------------
class ImageClassifier(nn.Module):
    """A small image classifier whose penultimate layer (`features`, 64-d) feeds the Fréchet distance."""

    def __init__(self, kind: str, channels: int, size: int, classes: int, feature_dim: int = 64) -> None:
        super().__init__()
        self.kind = kind
        if kind == "mlp":
            self.body: nn.Module = nn.Sequential(
                nn.Flatten(), nn.Linear(channels * size * size, 256), nn.ReLU(), nn.Linear(256, feature_dim),
                nn.ReLU(),
            )  # fmt: skip
        elif kind == "cnn":
            self.body = nn.Sequential(
                nn.Conv2d(channels, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 64, 3, stride=2, padding=1),
                nn.ReLU(), nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(64 * 16, feature_dim), nn.ReLU(),
            )  # fmt: skip
        else:
            raise ValueError(f"classifier must be 'mlp' or 'cnn', got {kind!r}")
        self.head = nn.Linear(feature_dim, classes)

    def features(self, images: Tensor) -> Tensor:
        return self.body(images.float())

    def forward(self, images: Tensor) -> Tensor:
        return self.head(self.features(images))

    @torch.no_grad()
    def predict(self, images: Tensor | np.ndarray, batch: int = 1024) -> tuple[np.ndarray, np.ndarray]:
        """(labels (N,), features (N, 64)) of images (N, C, S, S) in [-1, 1]."""
        self.eval()
        x = torch.as_tensor(np.asarray(images, dtype=np.float32))
        feats = torch.cat([self.features(x[s : s + batch]) for s in range(0, len(x), batch)])
        return self.head(feats).argmax(-1).numpy(), feats.double().numpy()


def train_classifier(
    data: Any, config: ImageEvalConfig | None = None
) -> tuple[ImageClassifier, dict[str, Any]]:
    """Fit the judge on the real train split (seeded, Adam, `classifier_epochs`), and measure its accuracy
    on the real validation split: the ceiling of text -> image accuracy."""
    config = config or ImageEvalConfig()
    names = label_names(data)
    train = _batch(data, "train", _spread(_rows(data, "train", None), config.classifier_max_train))
    val_rows = _rows(data, "validation", None)
    val = _batch(data, "validation", val_rows)
    x, y = torch.from_numpy(train["image"]).float(), torch.from_numpy(train["label"]).long()
    _, C, S, _ = x.shape
    with torch.random.fork_rng(devices=[]), torch.enable_grad():
        torch.manual_seed(config.seed)
        model = ImageClassifier(config.classifier, C, S, len(names))
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=1e-4)
        gen = torch.Generator().manual_seed(config.seed)
        model.train()
        for _ in range(config.classifier_epochs):
            order = torch.randperm(len(x), generator=gen)
            for s in range(0, len(x), 128):
                idx = order[s : s + 128]
                loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
    pred, _ = model.predict(val["image"])
    info = {
        "accuracy": float((pred == val["label"]).mean()),
        "split": "validation",
        "num_images": len(val_rows),
        "protocol": {
            "classifier": config.classifier,
            "trained_on": "train",
            "train_images": len(x),
            "epochs": config.classifier_epochs,
            "optimizer": "adam lr 1e-3 wd 1e-4, batch 128",
            "feature_dim": 64,
            "classes": len(names),
            "seed": config.seed,
        },  # fmt: skip
    }
    return model, info


def _judge(data: Any, config: ImageEvalConfig, classifier: Any) -> tuple[ImageClassifier, dict[str, Any]]:
    return classifier if classifier is not None else train_classifier(data, config)


# ---- generation ----------------------------------------------------------------------------------------
def _generate(
    pipe: Any, sample: ImageSampleConfig, unconditional: bool, chunk: int = 256, **inputs: Tensor
) -> tuple[list[Any], float]:
    """Outputs of `generate` over chunks of the inputs (each chunk seeded by (seed, chunk index)), and
    the wall-clock seconds spent."""
    from mmdlm.families import get_family

    family = get_family(pipe.spec.family)
    n = len(next(iter(inputs.values())))
    outs, seconds = [], 0.0
    for i, s in enumerate(range(0, n, chunk)):
        gen = torch.Generator().manual_seed(sample.seed * 1_000_003 + i)
        part = {k: v[s : s + chunk] for k, v in inputs.items()}
        out = family.generate(pipe.built, sample, unconditional=unconditional, generator=gen, **part)
        outs.append(out)
        seconds += out.elapsed_s
    return outs, seconds


def _protocol(
    pipe: Any, sample: ImageSampleConfig, mode: str, n: int, extra: dict[str, Any]
) -> dict[str, Any]:
    param = next(pipe.built.model.parameters())
    steps = sample.latent_steps if mode == "t2l" else sample.text_steps
    if mode == "t2l":
        sampler = sample.latent_sampler if pipe.spec.model.variant == "continuous" else sample.text_sampler
    else:
        sampler = sample.text_sampler
    return {
        "family": pipe.spec.family,
        "variant": pipe.spec.model.variant,
        "split": "validation",
        "num_samples": n,
        "mode": mode,
        "steps": steps,
        "sampler": sampler,
        "eta": sample.eta,
        "temperature": sample.temperature,
        "guidance_scale": sample.scale_for(mode),
        "precision": str(param.dtype).removeprefix("torch."),
        "device": param.device.type,
        "seed": sample.seed,
        **extra,
    }


def _t2i_images(
    pipe: Any, batch: dict[str, np.ndarray], sample: ImageSampleConfig, unconditional: bool
) -> tuple[np.ndarray, float]:
    sample = sample.model_copy(update={"mode": "t2l"})
    outs, seconds = _generate(
        pipe, sample, unconditional, text_ids=torch.from_numpy(batch["input_ids"]),
        text_mask=torch.from_numpy(batch["attention_mask"]),
    )  # fmt: skip
    return torch.cat([o.latents for o in outs]).numpy(), seconds


# ---- metrics -------------------------------------------------------------------------------------------
def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    values, vectors = np.linalg.eigh(matrix)
    return (vectors * np.sqrt(np.clip(values, 0.0, None))) @ vectors.T


def frechet(features_a: np.ndarray, features_b: np.ndarray) -> float:
    """||mu_a - mu_b||^2 + tr(S_a + S_b - 2 (S_a S_b)^1/2) of two feature sets (N, F), float64.

    tr (S_a S_b)^1/2 = tr (S_a^1/2 S_b S_a^1/2)^1/2, a symmetric PSD root taken by eigendecomposition:
    stable for the rank-deficient covariances of a few hundred ReLU features (no complex sqrtm)."""
    mu_a, mu_b = features_a.mean(0), features_b.mean(0)
    cov_a, cov_b = np.cov(features_a, rowvar=False), np.cov(features_b, rowvar=False)
    root_a = _psd_sqrt(cov_a)
    middle = root_a @ cov_b @ root_a
    trace_root = float(np.sqrt(np.clip(np.linalg.eigvalsh((middle + middle.T) / 2), 0.0, None)).sum())
    value = float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * trace_root)
    return max(value, 0.0)


def text_to_image_accuracy(
    pipe: Any, data: Any, config: ImageEvalConfig | None = None, classifier: Any = None
) -> dict[str, Any]:
    """(a) alone; `evaluate_images` computes it together with (b) from the same samples."""
    return evaluate_images(pipe, data, config, classifier=classifier, metrics=("t2i",))["t2i"]


def frechet_distance(
    pipe: Any, data: Any, config: ImageEvalConfig | None = None, classifier: Any = None
) -> dict[str, Any]:
    """(b) alone; see `evaluate_images`."""
    return evaluate_images(pipe, data, config, classifier=classifier, metrics=("frechet",))["frechet"]


@torch.no_grad()
def caption_accuracy(pipe: Any, data: Any, config: ImageEvalConfig | None = None) -> dict[str, Any]:
    """(c): captions generated for validation images vs captions drawn with the image hidden."""
    config = config or ImageEvalConfig()
    names = label_names(data)
    batch = _batch(data, "validation", _rows(data, "validation", config.num_images))
    sample = config.sample.model_copy(update={"mode": "l2t", "seed": config.seed})
    images = torch.from_numpy(batch["image"])
    tok = _tokenizer(pipe, data)
    scores, texts = {}, {}
    seconds = 0.0
    for key, hidden in (("accuracy", False), ("unconditional_accuracy", True)):
        outs, spent = _generate(pipe, sample, hidden, images=images)
        seconds += spent
        decoded = tok.batch_decode(torch.cat([o.tokens for o in outs]).tolist(), skip_special_tokens=True)
        texts[key] = decoded
        scores[key] = float(
            np.mean([named_label(t, names) == y for t, y in zip(decoded, batch["label"], strict=True)])
        )
    n = len(batch["label"])
    return {
        **scores,
        "num_images": n,
        "captions_per_s": 2 * n / max(seconds, 1e-9),
        "examples": [
            {"label": names[int(y)], "caption": t}
            for y, t in zip(batch["label"][:6], texts["accuracy"][:6], strict=True)
        ],
        "protocol": _protocol(
            pipe,
            sample,
            "l2t",
            n,
            {
                "metric": "caption names the image's label (exactly one label word)",
                "baseline": "captions generated with the image hidden (unconditional text), same seeds",
            },
        ),  # fmt: skip
    }


@torch.no_grad()
def evaluate_images(
    pipe: Any,
    data: Any,
    config: ImageEvalConfig | None = None,
    *,
    classifier: tuple[ImageClassifier, dict[str, Any]] | None = None,
    metrics: tuple[str, ...] = ("t2i", "frechet", "i2t"),
) -> dict[str, Any]:
    """The judge's own accuracy, then (a), (b) and (c) as asked by `metrics`, each with its protocol.
    Returns {"classifier": ..., "t2i": ..., "frechet": ..., "i2t": ..., "samples": {...}} where
    `samples` holds the generated t2i images (N, C, S, S) float, for PNG grids."""
    config = config or ImageEvalConfig()
    result: dict[str, Any] = {}
    if {"t2i", "frechet"} & set(metrics):
        judge, info = _judge(data, config, classifier)
        result["classifier"] = info
        rows = _rows(data, "validation", config.num_images)
        batch = _batch(data, "validation", rows)
        sample = config.sample.model_copy(update={"mode": "t2l", "seed": config.seed})
        images, seconds = _t2i_images(pipe, batch, sample, False)
        base_images, base_seconds = _t2i_images(pipe, batch, sample, True)
        labels = batch["label"]
        pred, feats = judge.predict(images)
        base_pred, base_feats = judge.predict(base_images)
        real_pred, real_feats = judge.predict(batch["image"])
        n = len(labels)
        judge_name = f"{info['protocol']['classifier']} trained on the real train split ({info['protocol']['train_images']} images)"
        if "t2i" in metrics:
            result["t2i"] = {
                "accuracy": float((pred == labels).mean()),
                "unconditional_accuracy": float((base_pred == labels).mean()),
                "classifier_accuracy": info["accuracy"],
                "classifier_accuracy_same_rows": float((real_pred == labels).mean()),
                "num_images": n,
                "images_per_s": 2 * n / max(seconds + base_seconds, 1e-9),
                "protocol": _protocol(
                    pipe,
                    sample,
                    "t2l",
                    n,
                    {
                        "classifier": judge_name,
                        "metric": "judge's label of the image == the label the caption names",
                        "ceiling": "the judge's accuracy on the real validation images",
                        "baseline": "images generated with the caption hidden (unconditional), same seeds",
                    },
                ),  # fmt: skip
            }
        if "frechet" in metrics:
            train_rows = _spread(_rows(data, "train", None), n)
            train_feats = judge.predict(_batch(data, "train", train_rows)["image"])[1]
            result["frechet"] = {
                "distance": frechet(feats, real_feats),
                "unconditional_distance": frechet(base_feats, real_feats),
                "real_train_distance": frechet(train_feats, real_feats),
                "num_images": n,
                "protocol": _protocol(
                    pipe,
                    sample,
                    "t2l",
                    n,
                    {
                        "name": FRECHET_PROTOCOL,
                        "classifier": judge_name,
                        "features": f"penultimate layer, {feats.shape[1]}-d",
                        "reference": f"the {n} real validation images whose captions were used",
                        "baseline": "unconditional samples; floor: as many real train images",
                    },
                ),  # fmt: skip
            }
        result["samples"] = {"t2i": images, "t2i_labels": labels, "unconditional": base_images}
    if "i2t" in metrics:
        result["i2t"] = caption_accuracy(pipe, data, config)
    return result


def summarize(result: dict[str, Any]) -> str:
    """One line per metric, for logs and the bench table."""
    lines = []
    if "t2i" in result:
        r = result["t2i"]
        lines.append(f"t2i accuracy {r['accuracy']:.3f} (unconditional {r['unconditional_accuracy']:.3f}, "
                     f"judge ceiling {r['classifier_accuracy']:.3f}, n={r['num_images']})")  # fmt: skip
    if "frechet" in result:
        r = result["frechet"]
        lines.append(f"Fréchet {r['distance']:.2f} (unconditional {r['unconditional_distance']:.2f}, "
                     f"real-train floor {r['real_train_distance']:.2f})")  # fmt: skip
    if "i2t" in result:
        r = result["i2t"]
        lines.append(f"caption accuracy {r['accuracy']:.3f} (image hidden {r['unconditional_accuracy']:.3f}, "
                     f"n={r['num_images']})")  # fmt: skip
    return "; ".join(lines)
