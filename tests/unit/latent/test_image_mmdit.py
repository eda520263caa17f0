"""Image MMDiT on the captioned sklearn digits (spec §6): data, network shapes, objective, samplers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from mmdlm.config.latent import ImageMMDiTSpec, ImageSampleConfig, LatentSampleConfig
from mmdlm.data.images import DIGITS, DigitsDataset
from mmdlm.families import get_family
from mmdlm.models.image_mmdit import patchify, unpatchify
from mmdlm.pipeline import load_pretrained, save_model_folder


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> DigitsDataset:
    return DigitsDataset.open("sklearn:digits", root=tmp_path_factory.mktemp("digits"))


def spec(variant: str) -> ImageMMDiTSpec:
    return ImageMMDiTSpec(
        model={"variant": variant, "hidden_size": 32, "n_blocks": 1, "n_heads": 2, "cond_dim": 32}
    )


def test_digits_split_by_image_and_captions(digits: DigitsDataset) -> None:
    train, val = digits.split("train"), digits.split("validation")
    assert len(train) + len(val) == 1797 and 170 <= len(val) <= 190
    assert not set(train.index) & set(val.index)
    batch = val.get_batch(range(8))
    assert batch["image"].shape == (8, 1, 8, 8) and batch["image"].min() >= -1 and batch["image"].max() <= 1
    assert batch["pixels"].shape == (8, 64) and batch["pixels"].max() <= 16
    texts = digits.tokenizer().batch_decode(batch["input_ids"].tolist(), skip_special_tokens=True)
    for text, label in zip(texts, batch["label"], strict=True):
        assert DIGITS[label] in text.split()
    with pytest.raises(ValueError, match="sklearn:digits"):
        DigitsDataset.open("mnist")


def test_patchify_round_trip() -> None:
    image = torch.randn(3, 1, 8, 8)
    patches = patchify(image, 2)
    assert patches.shape == (3, 16, 4)
    torch.testing.assert_close(unpatchify(patches, 2, 1, 8), image)


@pytest.mark.parametrize("variant", ["continuous", "discrete"])
def test_objective_trains_every_parameter(variant: str, digits: DigitsDataset) -> None:
    family = get_family("image-mmdit")
    built = family.build(spec(variant), digits.vocab)
    family.bind_dataset(built, digits)
    batch = {k: torch.from_numpy(v) for k, v in digits.split("train").get_batch(range(12)).items()}
    built.objective.set_step(0)
    out = built.objective(built.model, batch, torch.Generator().manual_seed(0))
    assert torch.isfinite(out.loss) and {"text_loss", "image_loss"} <= set(out.metrics)
    out.loss.backward()
    assert all(p.grad is not None for p in built.model.parameters())
    nll, counts = built.objective.nll_bound(built.model, batch, 2)
    assert nll.shape == (12,) and torch.equal(counts, batch["attention_mask"].sum(1))


@pytest.mark.parametrize("variant", ["continuous", "discrete"])
def test_generate_every_mode(variant: str, digits: DigitsDataset, tmp_path: Path) -> None:
    family = get_family("image-mmdit")
    built = family.build(spec(variant), digits.vocab)
    family.bind_dataset(built, digits)
    val = digits.split("validation").get_batch(range(3))
    ids, mask = torch.from_numpy(val["input_ids"]), torch.from_numpy(val["attention_mask"])
    cfg = LatentSampleConfig(text_steps=3, latent_steps=3, guidance_scale=2.0)
    images = family.generate(built, cfg.model_copy(update={"mode": "t2l"}), text_ids=ids, text_mask=mask)
    assert images.latents.shape == (3, 1, 8, 8) and images.latents.abs().max() <= 1
    key = "image" if variant == "continuous" else "pixels"
    captions = family.generate(
        built, cfg.model_copy(update={"mode": "l2t"}), images=torch.from_numpy(val[key])
    )
    assert captions.tokens.shape == (3, 8) and not (captions.tokens == digits.vocab.mask_id).any()
    blind = family.generate(
        built, cfg.model_copy(update={"mode": "l2t"}), images=torch.from_numpy(val[key]), unconditional=True
    )
    assert blind.tokens.shape == (3, 8)
    joint = family.generate(built, cfg.model_copy(update={"mode": "joint", "num_samples": 2}))
    assert joint.tokens.shape == (2, 8) and joint.latents.shape == (2, 1, 8, 8)
    folder = save_model_folder(
        tmp_path / "m", spec=built.extras["spec"], vocab=digits.vocab, state_dict=built.model.state_dict(),
        tokenizer_dir=digits.root / "tokenizer", extras=built.extras,
    )  # fmt: skip
    pipe = load_pretrained(folder)
    again = family.generate(pipe.built, cfg.model_copy(update={"mode": "t2l"}), text_ids=ids, text_mask=mask)
    np.testing.assert_allclose(again.latents.numpy(), images.latents.numpy(), atol=1e-5)


# ---- any resolution / channels, levels, per-direction guidance, PNG, eval (issue 15 items 2, 4) ----------------
def rgb_spec(variant: str, **objective: object) -> ImageMMDiTSpec:
    return ImageMMDiTSpec(
        model={"variant": variant, "hidden_size": 32, "n_blocks": 1, "n_heads": 2, "cond_dim": 32,
               "image_size": 12, "patch_size": 4, "channels": 3, "levels": 8},
        objective=objective,
    )  # fmt: skip


def rgb_batch(digits: DigitsDataset, n: int = 6) -> dict[str, torch.Tensor]:
    """Digit captions with 12x12 RGB images (each digit tinted, upsampled): a shape the digits lack."""
    batch = digits.split("train").get_batch(range(n))
    grey = torch.nn.functional.interpolate(torch.from_numpy(batch["image"]), size=12, mode="nearest")
    tint = torch.tensor([1.0, 0.5, -0.5])[None, :, None, None]
    return {
        "input_ids": torch.from_numpy(batch["input_ids"]), "attention_mask": torch.from_numpy(batch["attention_mask"]),
        "image": (grey * tint).clamp(-1, 1),
    }  # fmt: skip


def test_discrete_patch_tokens_keep_pixel_order() -> None:
    """A head that copies each input pixel's level to its logits gives the input back: the patch grouping
    of the discrete variant's input and output use the same pixel order (RGB, 2 x 2 patches)."""
    from mmdlm.models.image_mmdit import ImageMMDiT

    model = ImageMMDiT(rgb_spec("discrete").model.model_copy(update={"patch_size": 2}), 16, 8)
    levels = torch.randint(0, 8, (2, 3 * 12 * 12))
    slots = patchify(levels.reshape(2, 3, 12, 12), 2)  # (B, 36, 12) levels, the input grouping
    model.image_head = torch.nn.Identity()
    model.final_norm[1] = torch.nn.Identity()
    model.blocks = torch.nn.ModuleList()
    model.image_in = torch.nn.Identity()
    model.image_position = torch.nn.Parameter(torch.zeros(1, 36, 12 * 8))
    model.pixel_embed = torch.nn.Embedding.from_pretrained(torch.eye(8))  # one-hot per pixel
    text = torch.zeros(2, 4, dtype=torch.long)
    model.text_head = torch.nn.Linear(12 * 8, 16)
    model.final_norm[0] = torch.nn.Identity()
    model.token_embed = torch.nn.Embedding(16, 12 * 8)
    model.text_position = torch.nn.Parameter(torch.zeros(1, 8, 12 * 8))
    _, logits = model(text, levels, torch.zeros(2), torch.zeros(2))
    assert slots.shape == (2, 36, 12)
    assert torch.equal(logits.argmax(-1), levels)


def test_quantize_round_trips_every_level_count() -> None:
    from mmdlm.models.image_mmdit import dequantize, quantize

    for levels in (2, 3, 17, 28, 100, 255, 256):
        grid = torch.arange(levels)[None]
        assert torch.equal(quantize(dequantize(grid, levels, (1, 1, levels)), levels), grid)
    u8 = torch.arange(256).float() / 127.5 - 1
    assert torch.equal(quantize(u8.reshape(1, 1, 1, 256), 256)[0], torch.arange(256))
    digits_levels = torch.arange(17)
    assert torch.equal(quantize((digits_levels / 16 * 2 - 1).reshape(1, 1, 1, 17), 17)[0], digits_levels)


@pytest.mark.parametrize(
    ("variant", "parameterization"),
    [("continuous", "epsilon"), ("continuous", "v"), ("continuous", "x0"), ("discrete", "epsilon")],
)
def test_rgb_objective_and_every_mode(variant: str, parameterization: str, digits: DigitsDataset) -> None:
    family = get_family("image-mmdit")
    built = family.build(rgb_spec(variant, image={"parameterization": parameterization, "normalization": "none"}),
                         digits.vocab)  # fmt: skip
    family.bind_dataset(built, digits)
    batch = rgb_batch(digits)
    out = built.objective(built.model, batch, torch.Generator().manual_seed(0))
    assert torch.isfinite(out.loss)
    out.loss.backward()
    assert all(p.grad is not None for p in built.model.parameters())
    cfg = ImageSampleConfig(text_steps=2, latent_steps=2, image_guidance_scale=3.0, text_guidance_scale=1.5)
    ids, mask = batch["input_ids"][:2], batch["attention_mask"][:2]
    images = family.generate(built, cfg.model_copy(update={"mode": "t2l"}), text_ids=ids, text_mask=mask)
    assert images.latents.shape == (2, 3, 12, 12) and images.latents.abs().max() <= 1
    assert images.protocol["guidance_scale"] == 3.0 and images.protocol["variant"] == variant
    captions = family.generate(built, cfg.model_copy(update={"mode": "l2t"}), images=batch["image"][:2])
    assert captions.tokens.shape == (2, 8) and captions.protocol["guidance_scale"] == 1.5
    joint = family.generate(built, cfg.model_copy(update={"mode": "joint", "num_samples": 2}))
    assert joint.latents.shape == (2, 3, 12, 12)
    if variant == "discrete":  # generated images lie on the level grid
        from mmdlm.models.image_mmdit import dequantize, quantize

        grid = dequantize(quantize(images.latents, 8), 8, (3, 12, 12))
        torch.testing.assert_close(images.latents, grid)


def test_condition_dropout_per_direction(digits: DigitsDataset) -> None:
    """text_dropout 1 hides every t2l caption: the image loss cannot depend on the caption then."""
    family = get_family("image-mmdit")
    spec_ = rgb_spec("continuous", mode="t2l", text_dropout=1.0, image_dropout=0.0)
    built = family.build(spec_, digits.vocab)
    batch = rgb_batch(digits)
    other = {
        **batch,
        "input_ids": batch["input_ids"].flip(0),
        "attention_mask": batch["attention_mask"].flip(0),
    }
    a = built.objective(built.model, batch, torch.Generator().manual_seed(1)).metrics["image_loss"]
    b = built.objective(built.model, other, torch.Generator().manual_seed(1)).metrics["image_loss"]
    torch.testing.assert_close(a, b)
    spec_ = rgb_spec("continuous", mode="t2l", text_dropout=0.0)
    built = family.build(spec_, digits.vocab)
    a = built.objective(built.model, batch, torch.Generator().manual_seed(1)).metrics["image_loss"]
    b = built.objective(built.model, other, torch.Generator().manual_seed(1)).metrics["image_loss"]
    assert not torch.allclose(a, b)


def test_geometry_mismatch_names_the_field() -> None:
    family = get_family("image-mmdit")
    with pytest.raises(ValueError, match="model.image_size=12"):
        family.open_dataset(rgb_spec("continuous"), "sklearn:digits")
    with pytest.raises(ValueError, match="model.channels=3"):
        family.open_dataset({"model": {"channels": 3}}, "sklearn:digits")
    with pytest.raises(ValueError, match="model.image_size=10 must be a multiple of model.patch_size=4"):
        ImageMMDiTSpec(model={"image_size": 10, "patch_size": 4})
    with pytest.raises(ValueError, match="channels"):
        ImageMMDiTSpec(model={"channels": 2})


def test_png_grid_round_trip(tmp_path: Path) -> None:
    from mmdlm.data.png import decode_png, png_bytes, png_grid_bytes, save_png_grid, to_uint8

    rgb = torch.rand(5, 3, 6, 6) * 2 - 1
    grid = decode_png(png_grid_bytes(rgb, nrow=2, padding=1, scale=2))
    assert grid.shape == (3, 3 * 13 + 1, 2 * 13 + 1)
    u8 = to_uint8(rgb)
    np.testing.assert_array_equal(grid[:, 1:13:2, 1:13:2], u8[0])  # first tile, every other (scaled) pixel
    np.testing.assert_array_equal(decode_png(png_bytes(u8[4])), u8[4])
    path = save_png_grid(np.zeros((3, 1, 8, 8), np.uint8), tmp_path / "a" / "grid.png", nrow=8)
    assert decode_png(path.read_bytes()).shape == (1, 10, 28)
    with pytest.raises(ValueError, match="C in"):
        png_grid_bytes(np.zeros((2, 2, 8, 8), np.uint8))


def test_image_eval_protocols(digits: DigitsDataset, tmp_path: Path) -> None:
    """Every metric runs on an untrained model, is seeded, and returns its protocol."""
    from mmdlm.config.latent import ImageEvalConfig
    from mmdlm.eval.images import evaluate_images, frechet, named_label, train_classifier

    assert named_label("a handwritten seven", DIGITS) == 7 and named_label("one two", DIGITS) is None
    assert named_label("sevenfold", DIGITS) is None
    feats = np.random.default_rng(0).normal(size=(200, 4))
    assert frechet(feats, feats) < 1e-6 and frechet(feats, feats + 1.0) == pytest.approx(4.0, rel=1e-3)
    config = ImageEvalConfig(num_images=12, classifier_epochs=3,
                             sample=ImageSampleConfig(text_steps=2, latent_steps=2, image_guidance_scale=2.0))  # fmt: skip
    judge = train_classifier(digits, config)
    assert judge[1]["accuracy"] > 0.5 and judge[1]["protocol"]["trained_on"] == "train"
    family = get_family("image-mmdit")
    built = family.build(spec("continuous"), digits.vocab)
    family.bind_dataset(built, digits)
    folder = save_model_folder(
        tmp_path / "m", spec=built.extras["spec"], vocab=digits.vocab, state_dict=built.model.state_dict(),
        tokenizer_dir=digits.root / "tokenizer", extras=built.extras,
    )  # fmt: skip
    pipe = load_pretrained(folder)
    result = evaluate_images(pipe, digits, config, classifier=judge)
    again = evaluate_images(pipe, digits, config, classifier=judge)
    assert result["t2i"]["accuracy"] == again["t2i"]["accuracy"]
    assert result["frechet"]["distance"] == again["frechet"]["distance"]
    assert result["i2t"]["accuracy"] == again["i2t"]["accuracy"]
    for key in ("t2i", "frechet", "i2t"):
        protocol = result[key]["protocol"]
        assert {"split", "num_samples", "steps", "sampler", "precision", "guidance_scale"} <= set(protocol)
        assert protocol["num_samples"] == 12 and protocol["split"] == "validation"
    assert (
        result["t2i"]["protocol"]["guidance_scale"] == 2.0 and "classifier" in result["frechet"]["protocol"]
    )
    assert result["frechet"]["protocol"]["name"] == "frechet-classifier-features"
    assert result["samples"]["t2i"].shape == (12, 1, 8, 8)


@pytest.mark.parametrize("variant", ["continuous", "discrete"])
def test_rgb_image_dataset_trains_and_samples(variant: str, tmp_path: Path) -> None:
    """A prepared 12x12 RGB image-dataset (E1's format) opens, trains and samples through the family;
    a model of another size or channel count is refused naming the field."""
    from mmdlm.config.images import PrepareImagesConfig
    from mmdlm.data.image_prepare import prepare_images
    from tests.unit.data.image_folders import write_folder

    write_folder(tmp_path / "src", bad=False)
    config = PrepareImagesConfig(
        source={"type": "folder", "path": str(tmp_path / "src")}, resolution=12, channels=3, caption_len=8,
        validation_fraction=0.25,
    )  # fmt: skip
    prepare_images(config, tmp_path / "data")
    family = get_family("image-mmdit")
    data = family.open_dataset(rgb_spec(variant), tmp_path / "data")
    built = family.build(rgb_spec(variant), data.vocab)
    family.bind_dataset(built, data)
    batch = {k: torch.from_numpy(v) for k, v in data.split("train").get_batch(range(4)).items()}
    assert batch["image"].shape == (4, 3, 12, 12)
    out = built.objective(built.model, batch, torch.Generator().manual_seed(0))
    assert torch.isfinite(out.loss)
    cfg = ImageSampleConfig(mode="t2l", latent_steps=2, image_guidance_scale=2.0)
    images = family.generate(built, cfg, text_ids=batch["input_ids"], text_mask=batch["attention_mask"])
    assert images.latents.shape == (4, 3, 12, 12)
    with pytest.raises(ValueError, match="model.channels=1"):
        family.open_dataset({"model": {"image_size": 12, "patch_size": 4}}, tmp_path / "data")
    with pytest.raises(ValueError, match="model.image_size=8"):
        family.open_dataset({"model": {"channels": 3}}, tmp_path / "data")
