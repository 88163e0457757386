"""The segment figure and the one mask palette (no model: a synthetic result)."""
import dataclasses

import numpy as np
import pytest

from elbo_lib.aligner import AlignmentResult
from elbo_lib.plotting import BACKGROUND, describe_figure, legend, mask_overlay, mask_rgb, palette, result_figure


@pytest.mark.parametrize("n", [1, 3, 10, 11, 20, 25])
def test_palette_gives_every_class_its_own_colour(n):
    cols = palette(n)
    assert cols.shape == (n + 1, 3) and tuple(cols[0]) == (0, 0, 0)
    assert len({tuple(c) for c in cols}) == n + 1  # background and classes all distinct


def test_legend_is_the_mask_pictures_key():
    classes = ["red square", "yellow triangle", "purple square"]
    key = legend(classes)
    assert [e["label"] for e in key] == [BACKGROUND, *classes] and [e["mask_value"] for e in key] == [0, 1, 2, 3]
    mask = np.array([[0, 1], [2, 3]])
    pic = mask_rgb(mask, 3)
    for e in key:
        assert pic[mask == e["mask_value"]].tolist() == [e["rgb"]]
    over = mask_overlay(np.full((2, 2, 3), 200, np.uint8), mask, 3)
    assert over[0, 0].tolist() == [100, 100, 100]  # background: the image, dimmed
    with pytest.raises(ValueError, match=r"mask labels must lie in \[0, 3\]"):
        mask_rgb(np.array([[4]]), 3)


def synthetic_result(classes):
    rng = np.random.default_rng(0)
    n = len(classes)
    maps = [rng.random((n, 16, 16)) for _ in range(3)]
    return AlignmentResult(classes, maps[0] / maps[0].sum(0), maps[1], maps[0], rng.random((n, 20)),
                           np.array([1.0, 1 / 3, 0.8][:n]), "a photo of " + ", ".join(classes), unrefined=maps[2])


def test_figure_names_every_panel():
    classes = ["red square", "yellow triangle", "purple square"]
    res = synthetic_result(classes)
    source = "held-out on toy-val (data/toy-sd/thresholds.json)"
    d = describe_figure(result_figure(np.zeros((16, 16, 3), np.uint8), res, 0.7, source))
    titles = [p["title"] for p in d["panels"]]
    elbo = res.elbo.sum(1)
    for i, c in enumerate(classes):
        assert sum(t.startswith(f"{c}: raw cross-attention") and "before refinement" in t for t in titles) == 1
        assert sum(t.startswith(f"{c}: refined, uncalibrated") for t in titles) == 1
        assert sum(t.startswith(f"{c}: calibrated") and f"S = {res.scores[i]:.2f}" in t
                   and f"ELBO loss = {elbo[i]:.4g}" in t for t in titles) == 1
    masks = [p for p in d["panels"] if p["title"].startswith("mask")]
    assert len(masks) == 2
    for p in masks:
        assert p["legend"] == [BACKGROUND, *classes]
        assert "threshold 0.70" in p["title"] and "held-out on toy-val" in p["title"].replace("\n", " ")
    bars = [p for p in d["panels"] if p["ylabel"].startswith("heatmap value")]
    assert len(bars) == 1 and "threshold 0.70" in bars[0]["ylabel"]
    assert source in d["title"]
    with pytest.raises(ValueError, match="no maps before refinement"):
        result_figure(np.zeros((16, 16, 3), np.uint8), dataclasses.replace(res, unrefined=None), 0.7, source)
