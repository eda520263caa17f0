"""After a fixed number of seeded CPU steps on the captioned digits, the image MMDiT has learnt both
directions (issue 15.4): images drawn for held-out captions are labelled with the caption's digit by a
classifier trained on real train images far more often than images drawn with the caption hidden, and
captions drawn for held-out images name the image's digit far more often than captions drawn with the
image hidden.

Runs `mmdlm.demo_image.run` (the code bench/image_variants.py runs): hidden 64, 2 blocks, 4x4 patches,
`mixture` mode, 400 steps of 64, one thread, fp32; 100 validation rows, 20 sampler steps, guidance 3 in
both directions. No wall-clock limit: the step count is fixed. Thresholds are relative to the baselines
in the same run; measured values are in the docstring of each test.

The discrete variant is not asserted here: at the same 400 steps it learns text -> image (t2i 0.26-0.36
vs 0.06 unconditional) but not yet image -> text (caption accuracy 0.07-0.10 vs 0.08-0.11 hidden); at 1000
steps it has both (t2i 0.92 vs 0.04, captions 0.69 vs 0.07, seed 0, ~95 s of training on a lightly
loaded machine, several minutes on a loaded one), which does not fit the CI budget;
bench/image_variants.py reports both variants.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from mmdlm.demo_image import run


@pytest.mark.slow
def test_continuous_image_mmdit_learns_t2i_and_i2t(tmp_path: Path) -> None:
    """Measured over seeds 0-2 (2026-12-06, loaded 2-core machine, 46-70 s each): t2i accuracy 0.81 / 0.87 /
    0.66 vs unconditional 0.12 / 0.10 / 0.07 (margins 0.59-0.77; judge ceiling 0.97); caption accuracy
    0.64 / 0.64 / 0.81 vs image hidden 0.12 / 0.12 / 0.06 (margins 0.52-0.75). Thresholds 0.3 and 0.25."""
    result = run(tmp_path, variant="continuous", steps=400)
    assert result["train"]["steps"] == 400, result["summary"]
    t2i, i2t = result["t2i"], result["i2t"]
    assert t2i["accuracy"] > t2i["unconditional_accuracy"] + 0.3, result["summary"]
    assert i2t["accuracy"] > i2t["unconditional_accuracy"] + 0.25, result["summary"]
    assert t2i["classifier_accuracy"] > 0.9, result["summary"]
    assert result["frechet"]["protocol"]["name"] == "frechet-classifier-features"
    assert t2i["protocol"]["guidance_scale"] == 3.0 and i2t["protocol"]["guidance_scale"] == 3.0
