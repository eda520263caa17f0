"""Image models in the sampler: requests resolved (t2i / i2t / joint, guidance per direction), refused with
the field named (captions, uploads: base64, size, pixels, decompression bombs), sampled as the library
samples them, and answered with base64 PNGs. Random-initialised tiny models: these tests check the service
path, not what a trained model draws."""

from __future__ import annotations

import base64
import io
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from mmdlm.config.latent import ImageMMDiTSpec
from mmdlm.data.images import DigitsDataset
from mmdlm.data.png import decode_png
from mmdlm.families import get_family
from mmdlm.pipeline import load_pretrained, save_model_folder
from services.sampler.batcher import BatchInfo
from services.sampler.cache import LoadedModel, module_bytes
from services.sampler.engine import GenJob, GenOutput, latent_config, run_batch
from services.sampler.images import decode_upload
from services.sampler.metrics import SamplerMetrics
from services.sampler.resolve import resolve
from services.sampler.schemas import GenerateRequest, GenerateResponse, RequestError
from services.sampler.service import Generated, SamplerService
from services.sampler.settings import SamplerSettings

LIMITS = SamplerSettings(_env_file=None, max_images=4, max_image_bytes=4096, max_image_pixels=64 * 64)  # type: ignore[call-arg]


@pytest.fixture(scope="module", params=["continuous", "discrete"])
def image_model(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> LoadedModel:
    root = tmp_path_factory.mktemp(f"image-{request.param}")
    digits = DigitsDataset.open("sklearn:digits", root=root / "digits")
    family = get_family("image-mmdit")
    spec = ImageMMDiTSpec(
        model={"variant": request.param, "hidden_size": 32, "n_blocks": 1, "n_heads": 2, "cond_dim": 32}
    )
    built = family.build(spec, digits.vocab)
    family.bind_dataset(built, digits)  # type: ignore[attr-defined]
    folder = save_model_folder(
        root / "model", spec=spec, vocab=digits.vocab, state_dict=built.model.state_dict(),
        tokenizer_dir=digits.root / "tokenizer", extras=built.extras, trained={"step": 0},
    )  # fmt: skip
    pipe = load_pretrained(folder)
    return LoadedModel(artifact_id="m-image", owner_id=1, pipe=pipe, nbytes=module_bytes(pipe))


def png_text(array: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def request(**fields: object) -> GenerateRequest:
    return GenerateRequest.model_validate(
        {"model": "m-image", "steps": 3, "latent_steps": 3, "seed": 5, **fields}
    )


def test_t2i_images_as_png_match_the_library(image_model: LoadedModel) -> None:
    req = request(caption="the digit seven", num_samples=3, image_guidance_scale=2.0)
    job = resolve(image_model, req, LIMITS)
    assert job.mode == "t2i" and job.params.guidance_scale == 2.0 and job.text_ids.shape == (3, 8)
    out = run_batch(image_model.pipe, [job])[0]
    assert out.images is not None and out.images.shape == (3, 1, 8, 8)
    # the same request through the family alone gives the same images (seeded per request)
    family = get_family("image-mmdit")
    cfg = latent_config(job).model_copy(update={"mode": "t2l"})
    alone = family.generate(  # type: ignore[attr-defined]
        image_model.pipe.built, cfg, text_ids=job.text_ids, text_mask=job.text_mask,
        generator=torch.Generator().manual_seed(5),
    )  # fmt: skip
    torch.testing.assert_close(alone.latents, out.images)
    response = _response(image_model, job, out, req)
    assert response.image_size == 8 and response.channels == 1 and response.tokens == 0
    assert response.settings["guidance_scale"] == 2.0 and response.settings["mode"] == "t2i"
    for sample in response.samples:
        assert sample.text == "the digit seven"
        pixels = decode_png(base64.b64decode(sample.image or ""))
        assert pixels.shape == (1, 8, 8) and pixels.dtype == np.uint8


def test_i2t_and_joint(image_model: LoadedModel) -> None:
    upload = png_text(np.tile(np.linspace(0, 255, 20, dtype=np.uint8), (12, 1)))  # 20x12, resized + cropped
    job = resolve(image_model, request(image=upload, num_samples=2, caption_guidance_scale=1.5), LIMITS)
    assert job.mode == "i2t" and job.images.shape == (2, 1, 8, 8) and job.params.guidance_scale == 1.5
    out = run_batch(image_model.pipe, [job])[0]
    assert out.images is None and out.tokens.shape == (2, 8)
    assert not (out.tokens == image_model.pipe.vocab.mask_id).any()
    joint = resolve(image_model, request(num_samples=2), LIMITS)
    assert joint.mode == "joint"
    out = run_batch(image_model.pipe, [joint])[0]
    assert out.images.shape == (2, 1, 8, 8) and out.tokens.shape == (2, 8)


def _response(model: LoadedModel, job: GenJob, out: GenOutput, req: GenerateRequest) -> GenerateResponse:
    """The service's own response formatter (it needs only its metrics; no database or store here)."""
    service = SamplerService.__new__(SamplerService)
    service.metrics = SamplerMetrics(dict, 1)
    return service.response(
        Generated(model, job, out, BatchInfo(queue_s=0.0, requests=1, rows=job.rows)), req
    )


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"caption": "the digit Seven"}, "caption"),  # not a caption word
        ({"caption": "the digit seven written by hand seven"}, "caption"),  # past the caption length
        ({"mode": "t2i"}, "caption"),
        ({"mode": "i2t"}, "image"),
        (
            {"caption": "a seven", "image_guidance_scale": 2.0, "caption_guidance_scale": 2.0},
            "caption_guidance_scale",
        ),
        ({"prompt": "seven"}, "prompt"),
        ({"mode": "prefix"}, "mode"),
        ({"sampler": "cached"}, "sampler"),
        ({"guidance_scale": 3.0}, "guidance_scale"),  # joint has no condition
        ({"seq_len": 4}, "seq_len"),
        ({"num_samples": 5}, "num_samples"),  # past max_images
        ({"image": "not base64!"}, "image"),
        ({"image": base64.b64encode(b"GIF89a" + b"\0" * 20).decode()}, "image"),  # not a PNG
    ],
)
def test_bad_requests_name_the_field(image_model: LoadedModel, fields: dict[str, object], field: str) -> None:
    with pytest.raises(RequestError) as err:
        resolve(image_model, request(**fields), LIMITS)
    assert err.value.field == field and err.value.status == 422


def test_upload_bounds() -> None:
    kwargs = {"max_bytes": 4096, "max_pixels": 64 * 64, "size": 8, "channels": 1}
    rgb = np.zeros((10, 10, 3), dtype=np.uint8)
    rgb[..., 0] = 255
    grey = decode_upload("image", "data:image/png;base64," + png_text(rgb), **kwargs)  # type: ignore[arg-type]
    assert grey.shape == (1, 8, 8) and grey.dtype == np.float32 and -1 <= grey.min() <= grey.max() <= 1
    exact = np.arange(64, dtype=np.uint8).reshape(8, 8) * 4
    np.testing.assert_allclose(
        decode_upload("image", png_text(exact), **kwargs)[0], exact / 255 * 2 - 1, atol=1e-6
    )  # type: ignore[arg-type]
    with pytest.raises(
        RequestError, match="more than the limit|more pixels than the limit"
    ):  # a declared canvas past the limit, tiny in bytes
        decode_upload("image", png_text(np.zeros((65, 64), dtype=np.uint8)), **kwargs)  # type: ignore[arg-type]
    noisy = np.random.default_rng(0).integers(0, 256, (60, 60, 3), dtype=np.uint8)
    with pytest.raises(RequestError, match="bytes"):
        decode_upload("image", png_text(noisy), **kwargs)  # type: ignore[arg-type]
    truncated = base64.b64decode(png_text(exact))[:40]
    with pytest.raises(RequestError, match="not a readable PNG"):
        decode_upload("image", base64.b64encode(truncated).decode(), **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("side", [5000, 12000, 30000])  # under, past Pillow's warning, past its error
def test_bomb_guard_reads_only_the_header(side: int) -> None:
    """A PNG whose header declares side x side pixels (up to 900 MB decoded) is refused from the header."""
    data = bytearray(base64.b64decode(png_text(np.zeros((1, 1), dtype=np.uint8))))
    assert data[12:16] == b"IHDR"
    data[16:24] = struct.pack(">II", side, side)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    with pytest.raises(RequestError, match="more than the limit|more pixels than the limit"):
        decode_upload("image", base64.b64encode(bytes(data)).decode(), max_bytes=1 << 20, max_pixels=1 << 22,
                      size=8, channels=1)  # fmt: skip


def test_token_fields_refused_for_image_models(image_model: LoadedModel) -> None:
    for name, value in (("text", "a seven"), ("latent", [0.0]), ("infill", ["a", 2])):
        with pytest.raises(RequestError) as err:
            resolve(image_model, request(**{name: value}), LIMITS)
        assert err.value.field == name


def test_image_results_become_summary_columns_and_protocol_groups() -> None:
    from services.sampler.evaluate import protocol_groups, summarize
    from services.sampler.protocols import compare_groups, metric_group, order_metrics

    proto = {"family": "image-mmdit", "variant": "continuous", "num_samples": 20, "seed": 3, "device": "cpu"}
    images = {
        "t2i": {
            "accuracy": 0.5,
            "unconditional_accuracy": 0.1,
            "classifier_accuracy": 0.9,
            "protocol": proto,
        },
        "frechet": {
            "distance": 4.0,
            "unconditional_distance": 9.0,
            "real_train_distance": 0.5,
            "protocol": proto,
        },
        "i2t": {"accuracy": 0.7, "unconditional_accuracy": 0.1, "protocol": {**proto, "mode": "l2t"}},
    }
    summary = summarize({}, {}, images)
    assert summary == {
        "t2i_accuracy": 0.5, "t2i_unconditional_accuracy": 0.1, "t2i_classifier_accuracy": 0.9,
        "frechet_distance": 4.0, "frechet_unconditional_distance": 9.0, "frechet_real_train_distance": 0.5,
        "i2t_caption_accuracy": 0.7, "i2t_unconditional_caption_accuracy": 0.1,
    }  # fmt: skip
    groups = protocol_groups({}, {}, images)
    assert (
        set(groups) == {"t2i", "frechet", "i2t"}
        and "seed" not in groups["t2i"]
        and "device" not in groups["i2t"]
    )
    assert {metric_group(name) for name in summary} == {"t2i", "frechet", "i2t"}
    assert order_metrics(set(summary))[0].startswith("t2i_") and order_metrics(set(summary))[-1].startswith(
        "i2t_"
    )
    other = {**groups, "t2i": {**groups["t2i"], "num_samples": 40}}
    table = compare_groups({"a": groups, "b": other})
    assert table["frechet"]["comparable"] and not table["t2i"]["comparable"]
    assert table["t2i"]["mismatches"] == {"num_samples": {"a": 20, "b": 40}}
