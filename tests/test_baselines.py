import numpy as np
import pytest
import torch

from elbo_lib import AlignConfig, Aligner
from elbo_lib.baselines import BASELINES, NotRunnable, get_baseline
from elbo_lib.evaluation import evaluate, options
from elbo_lib.models import adapter_for

FAST = AlignConfig(elbo_steps=2, attention_steps=3)


def _img():
    return (np.random.default_rng(0).random((32, 32, 3)) * 255).astype(np.uint8)


@pytest.mark.parametrize("name", ["DAAM", "DiffSegmenter", "OVAM", "Semantic DiffSeg"])
def test_shapes_and_range(name, pipes):
    b = get_baseline(name)
    cfg = AlignConfig(**{**FAST.__dict__, **b.measure_overrides})
    al = Aligner(pipes["sd1"], cfg)
    classes = ["red circle", "cat"]
    m = (b.measure(al, _img(), classes, None, 0, cfg) if b.measure else al.measure(_img(), classes, cfg=cfg, elbo=b.elbo))
    h = b.heatmaps(m, cfg)
    assert h.shape == (2, 32, 32) and h.min() >= 0 and h.max() <= 1 + 1e-9


@pytest.mark.parametrize("name", ["DAAM", "OVAM"])
def test_unet_baselines_on_sdxl(name, pipes):
    """SDXL's layout (a down block without cross-attention, two encoders; OVAM's unconditional branch is the
    pipeline's zero text) runs through the same code."""
    b = get_baseline(name)
    cfg = AlignConfig(**{**FAST.__dict__, **b.measure_overrides})
    h = b.heatmaps(b.measure(Aligner(pipes["sdxl"], cfg), _img(), ["red circle", "cat"], None, 0, cfg), cfg)
    assert h.shape == (2, 32, 32) and np.isfinite(h).all() and h.min() >= 0 and h.max() <= 1


def test_sdxl_unconditional_text_is_zero(pipes):
    ad = adapter_for(pipes["sdxl"])
    assert ad.pipe.config.force_zeros_for_empty_prompt
    u = ad.unconditional_text()
    assert u.embeds.abs().max() == 0 and u.extra["text_embeds"].abs().max() == 0
    torch.testing.assert_close(u.extra["time_ids"], ad.encode_text([""]).extra["time_ids"])
    sd = adapter_for(pipes["sd1"])
    torch.testing.assert_close(sd.unconditional_text().embeds, sd.encode_text([""]).embeds)


def test_daam_measures_time_summed_word_maps(pipes):
    """DAAM's measurement is one row of word maps (daam sums over time before its clamp); its heatmaps are
    min-maxed with daam's 1e-8, so each spans [0, 1) with its minimum at 0."""
    b = get_baseline("DAAM")
    cfg = AlignConfig(**{**FAST.__dict__, **b.measure_overrides})
    m = b.measure(Aligner(pipes["sd1"], cfg), _img(), ["red circle", "cat"], None, 0, cfg)
    assert m.cross.shape == (1, 2, 16, 16) and m.self_attn is None and len(m.attention_t) == 10
    h = b.heatmaps(m, cfg)
    assert np.allclose(h.min(axis=(1, 2)), 0) and np.allclose(h.max(axis=(1, 2)), 1, atol=1e-6) and h.max() < 1


def test_ovam_matches_cross_attention_for_the_caption_itself(pipes):
    """With the caption as the attribution prompt, OVAM's maps equal the captured cross-attention."""
    from elbo_lib.attention import aggregate_cross
    from elbo_lib.baselines.ovam import attribution_probs
    al = Aligner(pipes["sd1"], FAST)
    x0, _ = al.encode(_img(), FAST)
    cap = "a photo of a cat"
    t = torch.tensor([0.05], dtype=torch.float64)
    store = next(al.attention_passes(x0, cap, t, 0, FAST, self_attn=False, keep_queries=True))
    emb = al.adapter.encode_text([cap]).embeds
    got = aggregate_cross(attribution_probs(store, emb), "uniform")
    ref = aggregate_cross(store, "uniform")
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name", ["DAAM", "OVAM"])
def test_unet_baselines_refuse_other_denoisers(name, pipes):
    """DAAM and OVAM locate a UNet's down- and up-block layers: an MMDiT or a cross-attention DiT has none."""
    b = get_baseline(name)
    for family in ("sd3", "pixart"):
        with pytest.raises(NotRunnable, match="UNet"):
            b.measure(Aligner(pipes[family], FAST), _img(), ["cat"], None, 0, FAST)
        # what a table asks before running it: a note for the DiT, nothing for a UNet
        assert "has none" in b.not_runnable(adapter_for(pipes[family]))
    assert b.not_runnable(adapter_for(pipes["sd1"])) is None
    assert b.not_runnable(adapter_for(pipes["sdxl"])) is None
    assert get_baseline("Semantic DiffSeg").not_runnable(adapter_for(pipes["sd3"])) is None


def test_registry_and_harness(tmp_path, pipes):
    assert set(BASELINES) == {"DAAM", "DiffSegmenter", "OVAM", "Semantic DiffSeg"}
    with pytest.raises(ValueError, match="unknown baseline"):
        get_baseline("SAM")
    from fixtures_datasets import make_tree
    root = make_tree(tmp_path / "f", "folder", n=3)
    m = evaluate("tiny", f"folder:{root}", config=FAST, baselines=list(BASELINES),
                 **options(limit=3, cache_dir=tmp_path / "c", pipe=pipes["sd1"], n_boot=20, heldout=None))
    assert set(m["variants"]) == {"uncalibrated", "calibrated", *BASELINES}
    assert all(0 <= m["variants"][b]["oracle"]["miou"] <= 1 for b in BASELINES)


def test_denoiser_passes_per_image():
    """What each baseline's measurement costs in denoiser passes (the plan's estimate and the cache's rate record):
    DAAM and OVAM one per attention timestep, DiffSegmenter one per class at its single timestep, DiffSeg one."""
    cfgs = {n: AlignConfig(**get_baseline(n).measure_overrides) for n in BASELINES}
    assert {n: get_baseline(n).denoiser_passes(cfgs[n], 3) for n in BASELINES} == {
        "DAAM": 10, "OVAM": 10, "DiffSegmenter": 3, "Semantic DiffSeg": 1}
