import numpy as np
import pytest
import torch

from elbo_lib import AlignConfig, Aligner
from elbo_lib.baselines import BASELINES, NotRunnable, get_baseline
from elbo_lib.baselines.daam import summed_maps
from elbo_lib.baselines.diffseg import segment, sym_kl
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


def test_daam_sums_per_timestep_maps(pipes):
    b = get_baseline("DAAM")
    cfg = AlignConfig(**{**FAST.__dict__, **b.measure_overrides})
    m = Aligner(pipes["sd1"], cfg).measure(_img(), ["red circle", "cat"], cfg=cfg, elbo=False)
    manual = sum(m.cross[k].double() for k in range(m.cross.shape[0]))
    torch.testing.assert_close(summed_maps(m), manual)
    h = b.heatmaps(m, cfg)
    assert np.isclose(h.max(axis=(1, 2)), 1).all()  # normalised per class


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


def test_ovam_refuses_joint_attention(pipes):
    b = get_baseline("OVAM")
    with pytest.raises(NotRunnable, match="joint"):
        b.measure(Aligner(pipes["sd3"], FAST), _img(), ["cat"], None, 0, FAST)
    # what a table asks before running it: a note for the MMDiT, nothing for a UNet; every other baseline runs on both
    assert "joint attention" in b.not_runnable(adapter_for(pipes["sd3"]))
    assert b.not_runnable(adapter_for(pipes["sd1"])) is None
    assert all(get_baseline(n).not_runnable(adapter_for(pipes["sd3"])) is None for n in BASELINES if n != "OVAM")


def test_diffseg_merges_identical_regions():
    h = w = 8
    n = h * w
    left = torch.zeros(n); left[[y * w + x for y in range(h) for x in range(4)]] = 1
    right = 1 - left
    rows = torch.stack([left if (i % w) < 4 else right for i in range(n)])
    attn = rows / rows.sum(1, keepdim=True) * 0.98 + 0.02 / n
    seg = segment(attn.double(), (h, w))
    assert len(np.unique(seg)) == 2
    assert (seg[:, :4] == seg[0, 0]).all() and (seg[:, 4:] == seg[0, 7]).all()
    # two identical regions (top and bottom attend alike) merge into one segment
    same = torch.full((n, n), 1.0 / n)
    assert len(np.unique(segment(same.double(), (h, w)))) == 1
    p = torch.softmax(torch.randn(3, n), 1).double()
    torch.testing.assert_close(torch.diag(sym_kl(p, p)), torch.zeros(3, dtype=torch.float64), atol=1e-9, rtol=0)


def test_registry_and_harness(tmp_path, pipes):
    assert set(BASELINES) == {"DAAM", "DiffSegmenter", "OVAM", "Semantic DiffSeg"}
    with pytest.raises(ValueError, match="unknown baseline"):
        get_baseline("SAM")
    from fixtures_datasets import make_tree
    root = make_tree(tmp_path / "f", "folder", n=3)
    m = evaluate("tiny", f"folder:{root}", config=FAST, baselines=list(BASELINES),
                 **options(limit=3, cache_dir=tmp_path / "c", pipe=pipes["sd1"], n_boot=20, heldout=None))
    assert set(m["variants"]) == {"uncalibrated", "calibrated", *BASELINES}
    # DiffSegmenter is Algorithm 1 without the score: identical to the uncalibrated variant
    for k in ("miou", "threshold", "ci95"):
        assert m["variants"]["DiffSegmenter"]["oracle"][k] == m["variants"]["uncalibrated"]["oracle"][k]
