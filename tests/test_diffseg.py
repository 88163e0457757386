"""Semantic DiffSeg, each step against the formula of the google/diffseg line it follows (cited in
``elbo_lib/baselines/diffseg.py``; their code needs TensorFlow, so there are no reference maps)."""
import numpy as np
import torch
import torch.nn.functional as F

from elbo_lib import AlignConfig, Aligner
from elbo_lib.attention import AttentionStore, capture_attention
from elbo_lib.baselines import get_baseline
from elbo_lib.baselines.diffseg import (aggregate_cross_attention, aggregate_self_attention, heatmaps, merge_anchors,
                                        merge_greedy, nms, sampling_grid, segment, segment_scores, sym_kl)
from elbo_lib.models import adapter_for
from elbo_lib.models.random_init import tiny_sd_pipeline


def _img():
    return (np.random.default_rng(2).random((32, 32, 3)) * 255).astype(np.uint8)


def test_sampling_grid():
    """S:22-30: 16 points per side; on 64x64 rows and columns 1, 5, ..., 61 (63 // 15 = 4 apart, centred)."""
    g = sampling_grid(64, 16)
    assert len(g) == 256 and g[0] == (1, 1) and g[1] == (1, 5) and g[16] == (5, 1) and g[-1] == (61, 61)
    assert sampling_grid(16, 16) == [(r, c) for r in range(16) for c in range(16)]
    assert sorted({r for r, _ in sampling_grid(32, 16)}) == list(range(0, 31, 2))


def test_kl_is_theirs():
    """S:82-86: sum(x (log x - log Y)) / 2 - sum(Y (log x - log Y)) / 2."""
    torch.manual_seed(0)
    p, q = torch.softmax(torch.randn(3, 20), 1).double(), torch.softmax(torch.randn(4, 20), 1).double()
    quotient = p.log()[:, None] - q.log()[None]
    want = (p[:, None] * quotient).sum(-1) / 2 - (q[None] * quotient).sum(-1) / 2
    torch.testing.assert_close(sym_kl(p, q, eps=0), want)


def test_merge_anchors_averages_every_pixel_within_the_threshold():
    """S:89-101: an anchor becomes the mean of every pixel's map (not only the other anchors') within KL < tau."""
    torch.manual_seed(1)
    attn = torch.softmax(torch.randn(9, 9) * 2, 1).double()
    got = merge_anchors(attn, [0, 4], 0.3)
    kl = sym_kl(attn, attn)
    for k, a in enumerate([0, 4]):
        near = kl[a] < 0.3
        torch.testing.assert_close(got[k], attn[near].mean(0))


def test_merge_greedy_goes_in_order():
    """S:102-117: A ~ B and B ~ C but not A ~ C: A takes mean(A, B) and marks B; C, unmatched, takes mean(B, C)."""
    n = 8
    base = torch.full((n,), 1.0 / n, dtype=torch.float64)
    bump = torch.zeros(n, dtype=torch.float64)
    bump[0] = 1
    a = 0.7 * base + 0.3 * bump
    c = 0.7 * base + 0.3 * bump.roll(4)
    b = (a + c) / 2
    props = torch.stack([a, b, c])
    tau = float(sym_kl(a[None], b[None])) * 1.01
    assert float(sym_kl(b[None], c[None])) < tau < float(sym_kl(a[None], c[None]))
    got = merge_greedy(props, tau)
    torch.testing.assert_close(got, torch.stack([(a + b) / 2, (b + c) / 2]))


def test_nms_upsamples_then_takes_the_argmax():
    """S:139-145: bilinear to the image size first, argmax after (not nearest-upsampled ids)."""
    torch.manual_seed(2)
    props = torch.rand(3, 16).double()
    got = nms(props, 4, (10, 10))
    up = F.interpolate(props.reshape(1, 3, 4, 4), size=(10, 10), mode="bilinear", align_corners=False)[0]
    assert np.array_equal(got, up.argmax(0).numpy())


def test_identical_regions_merge():
    h = w = 8
    n = h * w
    left = torch.zeros(n)
    left[[y * w + x for y in range(h) for x in range(4)]] = 1
    rows = torch.stack([left if (i % w) < 4 else 1 - left for i in range(n)])
    attn = rows / rows.sum(1, keepdim=True) * 0.98 + 0.02 / n
    seg = segment(attn.double(), (8, 8))
    assert len(np.unique(seg)) == 2 and (seg[:, :4] == seg[0, 0]).all() and (seg[:, 4:] == seg[0, 7]).all()
    assert len(np.unique(segment(torch.full((n, n), 1.0 / n, dtype=torch.float64), (8, 8)))) == 1


def test_self_attention_aggregation():
    """S:32-64: keys bilinear to the finest grid, renormalised, queries repeated, weights size / sum of sizes."""
    torch.manual_seed(3)
    fine, coarse = torch.softmax(torch.randn(1, 16, 16), -1), torch.softmax(torch.randn(1, 4, 4), -1)
    got = aggregate_self_attention({16: fine * 2, 4: coarse}, {16: 2, 4: 1}, (4, 4))[0]
    keys = F.interpolate(coarse[0].double().reshape(4, 1, 2, 2), size=(4, 4), mode="bilinear", align_corners=False)
    keys = keys.reshape(4, 16)
    keys = keys / keys.sum(1, keepdim=True)
    q = torch.stack([keys[(r // 2) * 2 + c // 2] for r in range(4) for c in range(4)])
    torch.testing.assert_close(got, fine[0].double() * 4 / 6 + q * 2 / 6)


def test_cross_attention_aggregation_and_scores():
    """S:66-80 (equal weights, normalised over tokens) and S:157-177 (L2 per class, mean per segment)."""
    torch.manual_seed(4)
    store = AttentionStore(latent_hw=(4, 4))
    a, b, c = (torch.softmax(torch.randn(1, n, 5), -1) for n in (16, 16, 4))
    store.cross = {"l0": a, "l1": b, "l2": c}
    got = aggregate_cross_attention(store, (8, 8))[0]

    def up(x, s):
        m = F.interpolate(x.double()[0].T.reshape(1, 5, s, s), size=(8, 8), mode="bilinear", align_corners=False)[0]
        return m / m.sum(0, keepdim=True)
    torch.testing.assert_close(got, up((a + b) / 2, 4) + up(c, 2))
    seg = np.zeros((8, 8), int)
    seg[:, 4:] = 3
    maps = got[[1, 2]]
    ids, scores = segment_scores(seg, maps)
    x = maps.reshape(2, -1) / maps.reshape(2, -1).norm(dim=1, keepdim=True)
    assert list(ids) == [0, 3]
    np.testing.assert_allclose(scores[:, 1], x[:, torch.from_numpy(seg.reshape(-1) == 3)].mean(1).numpy())


@torch.no_grad()
def test_measure_reads_the_clean_latent_at_t300():
    """K:205-215: one UNet call at timestep 300 on the un-noised latent with the caption as context; the heatmaps
    give every segment to DiffSeg's label (the argmax of its scores) and peak at 1."""
    pipe = tiny_sd_pipeline()
    b = get_baseline("Semantic DiffSeg")
    cfg = AlignConfig(**b.measure_overrides)
    al = Aligner(pipe, cfg)
    m = b.measure(al, _img(), ["red circle", "cat"], "a red circle and a cat", 0, cfg)
    ad = adapter_for(pipe)
    x0, _ = al.encode(_img(), cfg)
    with capture_attention(pipe.unet, tuple(x0.shape[-2:]), all_resolutions=True) as store:
        pipe.unet(x0, torch.tensor([300]), encoder_hidden_states=ad.encode_text(["a red circle and a cat"]).embeds)
    sa = aggregate_self_attention(store.self_sums, store.self_counts, tuple(x0.shape[-2:]))[0]
    torch.testing.assert_close(m.self_attn, sa.float(), rtol=0, atol=1e-6)
    torch.testing.assert_close(m.attention_t, np.array([0.3]))
    h = heatmaps(m, cfg)
    seg = segment(m.self_attn, m.image_hw)
    ids, scores = segment_scores(seg, m.cross[0])
    assert np.isclose(h.max(), 1)
    for k, s in enumerate(ids):
        inside = seg == s
        assert (h[:, inside].argmax(0) == scores[:, k].argmax()).all()
