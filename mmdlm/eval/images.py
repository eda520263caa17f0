"""Toy evaluation of the image MMDiT on the captioned digits, each number next to its baseline.

* caption accuracy (image -> caption): the generated caption names the image's digit; baseline: captions
  sampled with the image hidden (the null condition), scored against the same images.
* image accuracy (caption -> image): a logistic-regression digit classifier fitted on the train split's
  real pixels labels the generated images; the score is agreement with the digit the caption asked for;
  baseline: images generated with the caption hidden. The classifier's own validation accuracy is
  reported as the ceiling.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from mmdlm.config.latent import LatentSampleConfig
from mmdlm.data.images import DIGITS, DigitsDataset
from mmdlm.families import get_family


def _named_digit(text: str) -> int | None:
    """The digit a caption names, if it names exactly one."""
    found = {DIGITS.index(w) for w in text.split() if w in DIGITS}
    return found.pop() if len(found) == 1 else None


@torch.no_grad()
def caption_accuracy(
    pipe: Any, data: DigitsDataset, *, num_images: int = 100, sample: LatentSampleConfig | None = None
) -> dict[str, Any]:
    sample = (sample or LatentSampleConfig(text_steps=8)).model_copy(update={"mode": "l2t"})
    family = get_family(pipe.family)
    split = data.split("validation")
    rows = np.arange(min(num_images, len(split)))
    batch = split.get_batch(rows)
    key = "image" if pipe.spec.model.variant == "continuous" else "pixels"
    images = torch.from_numpy(batch[key])
    cond = family.generate(
        pipe.built, sample, images=images, generator=torch.Generator().manual_seed(sample.seed)
    )
    uncond = family.generate(
        pipe.built,
        sample,
        images=images,
        unconditional=True,
        generator=torch.Generator().manual_seed(sample.seed),
    )
    tok = data.tokenizer()
    texts = tok.batch_decode(cond.tokens.tolist(), skip_special_tokens=True)
    base_texts = tok.batch_decode(uncond.tokens.tolist(), skip_special_tokens=True)
    labels = batch["label"]
    acc = float(np.mean([_named_digit(t) == y for t, y in zip(texts, labels, strict=True)]))
    base = float(np.mean([_named_digit(t) == y for t, y in zip(base_texts, labels, strict=True)]))
    return {
        "caption_accuracy": acc,
        "unconditional_caption_accuracy": base,
        "num_images": len(rows),
        "examples": [{"label": int(y), "caption": t} for y, t in zip(labels[:4], texts[:4], strict=True)],
        "protocol": {"family": pipe.family, "variant": pipe.spec.model.variant, "split": "validation",
                     "sample": sample.model_dump(mode="json"), "baseline": "captions with the image hidden"},
    }  # fmt: skip


@torch.no_grad()
def image_accuracy(
    pipe: Any, data: DigitsDataset, *, num_images: int = 100, sample: LatentSampleConfig | None = None
) -> dict[str, Any]:
    from sklearn.linear_model import LogisticRegression

    sample = (sample or LatentSampleConfig(latent_steps=25, text_steps=25)).model_copy(update={"mode": "t2l"})
    family = get_family(pipe.family)
    train = data.split("train").get_batch(range(len(data.split("train"))))
    classifier = LogisticRegression(max_iter=2000).fit(
        train["image"].reshape(len(train["image"]), -1), train["label"]
    )
    split = data.split("validation")
    batch = split.get_batch(np.arange(min(num_images, len(split))))
    ceiling = float(classifier.score(batch["image"].reshape(len(batch["image"]), -1), batch["label"]))
    ids, mask = torch.from_numpy(batch["input_ids"]), torch.from_numpy(batch["attention_mask"])
    gen = torch.Generator().manual_seed(sample.seed)
    images = family.generate(pipe.built, sample, text_ids=ids, text_mask=mask, generator=gen).latents.numpy()
    gen = torch.Generator().manual_seed(sample.seed)
    base_images = family.generate(
        pipe.built, sample, text_ids=ids, text_mask=mask, unconditional=True, generator=gen
    ).latents.numpy()
    acc = float((classifier.predict(images.reshape(len(images), -1)) == batch["label"]).mean())
    base = float((classifier.predict(base_images.reshape(len(base_images), -1)) == batch["label"]).mean())
    return {
        "image_accuracy": acc,
        "unconditional_image_accuracy": base,
        "classifier_accuracy_on_real": ceiling,
        "num_images": int(len(batch["label"])),
        "protocol": {"family": pipe.family, "variant": pipe.spec.model.variant, "split": "validation",
                     "classifier": "logistic regression on train-split pixels",
                     "sample": sample.model_dump(mode="json"), "baseline": "images with the caption hidden"},
    }  # fmt: skip
