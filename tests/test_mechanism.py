"""elbo_lib.mechanism on hand-made measurements and arrays whose answers are known."""
import numpy as np
import pandas as pd
import pytest
import torch

from elbo_lib import mechanism as mc
from elbo_lib.aligner import AlignConfig, Measurement, finalize
from elbo_lib.toy.world import Scene, ToyObject, shape_mask


def _measurement(cross_nhw, elbo_nt, self_attn=None, hw=(8, 8)):
    cross = torch.as_tensor(np.asarray(cross_nhw, dtype=np.float32))[None]
    elbo = torch.as_tensor(np.asarray(elbo_nt, dtype=np.float64))
    n = cross.shape[1]
    return Measurement([f"c{i}" for i in range(n)], "cap", np.linspace(0.1, 0.9, elbo.shape[1]), elbo,
                       np.array([0.02]), cross, self_attn, hw)


def _two_class_scene():
    """Left half class 1 (global id 5), right half class 2 (id 9) on an 8x8 image. Class 1's map is 0.7 on its
    half (peak 1.0 at the corner), 0 on the right; class 2's map is diffuse: 1.0 on its half and 0.8 on class 1's
    (0 at the corner). After min-max the diffuse class wins class 1's half; its cube (S = 1/3) gives it back."""
    label = np.zeros((8, 8), dtype=np.int64)
    label[:, :4], label[:, 4:] = 5, 9
    a = np.zeros((8, 8)); a[:, :4] = 0.7; a[0, 0] = 1.0
    b = np.ones((8, 8)); b[:, :4] = 0.8; b[0, 0] = 0.0
    return label, np.stack([a, b])


CFG = AlignConfig(self_attention=False)


def test_heatmaps_for_scores_equals_finalize():
    rng = np.random.default_rng(0)
    sa = torch.as_tensor(rng.random((64, 64)), dtype=torch.float32)
    sa = sa / sa.sum(1, keepdim=True)
    m = _measurement(rng.random((3, 8, 8)), rng.random((3, 5)), sa, hw=(16, 16))
    cfg = AlignConfig()
    r = finalize(m, cfg)
    np.testing.assert_array_equal(mc.heatmaps_for_scores(m, cfg, r.scores), r.heatmaps)
    np.testing.assert_array_equal(mc.heatmaps_for_scores(m, cfg, np.ones(3)), r.raw)
    np.testing.assert_array_equal(mc.heatmaps_for_scores(m, cfg, np.ones(3), refine=False), r.unrefined)
    with pytest.raises(ValueError, match="one score per class"):
        mc.heatmaps_for_scores(m, cfg, np.ones(2))
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        mc.heatmaps_for_scores(m, cfg, np.array([1.0, 0.0, 0.5]))


def test_image_iu_and_pointing():
    label, maps = _two_class_scene()
    lab = mc.local_label(label, [5, 9])
    # argmax: the diffuse class 2 takes class 1's half except the corner
    inter, union = mc.image_iu(maps, lab, 0.0)
    assert inter.tolist() == [0, 1, 32] and union.tolist() == [0, 32, 63]
    # above 0.8 class 1's half is background but for its peak
    inter, union = mc.image_iu(maps, lab, 0.9)
    assert inter.tolist() == [0, 1, 32] and union.tolist() == [31, 32, 32]
    assert mc.pointing_hits(maps, lab).tolist() == [True, True]
    assert mc.pointing_hits(maps[::-1].copy(), lab).tolist() == [False, False]
    with pytest.raises(ValueError, match="threshold"):
        mc.image_iu(maps, lab, 1.5)


def test_a_root_recovers_the_weak_class_and_the_oracle_finds_it():
    label, maps = _two_class_scene()
    lab = mc.local_label(label, [5, 9])
    m = _measurement(maps, [[1.0], [2.0]])  # class 2 has the higher loss: S = 1/3, class 1 S = 1
    s, elb = mc.elbo_scores(m, 1 / 3)
    np.testing.assert_allclose(s, [1.0, 1 / 3])
    np.testing.assert_allclose(elb, [1.0, 2.0])
    out = mc.variant_iu("img", m, label, [5, 9], CFG, 0.0, seed=0)
    assert set(out) == set(mc.VARIANTS)
    none_i, none_u = out["none"]
    assert none_i[5] == 1  # class 1 keeps only its peak uncalibrated
    elbo_i, elbo_u = out["ELBO S"]
    assert elbo_i[5] == 32 and elbo_i[9] == 32  # 0.8 ** 3 = 0.512 < 0.7: class 1's half comes back
    o = mc.oracle_scores(m, label, [5, 9], CFG, 0.0)
    assert o[1] < 1 and 0.8 ** (1 / o[1]) < 0.7 ** (1 / o[0])  # the diffuse class gets the larger power
    oracle_i, oracle_u = out[mc.VARIANTS[-1]]
    assert oracle_i[5] / oracle_u[5] == 1.0 and oracle_i[9] / oracle_u[9] == 1.0
    # the other way round the power falls on class 1 (0.7 ** 3 < 0.8): it stays lost
    swapped = mc.variant_iu("img", _measurement(maps, [[2.0], [1.0]]), label, [5, 9], CFG, 0.0)
    assert swapped["ELBO S"][0][5] == 1
    tab = mc.miou_table([out, out], n_boot=50)
    row = tab.set_index("variant")
    assert row.loc["none", "mIoU"] < row.loc["ELBO S", "mIoU"] == pytest.approx(1.0)
    assert row.loc["ELBO S", "minus none"] > 0.4
    with pytest.raises(ValueError, match="oracle grid"):
        mc.oracle_scores(m, label, [5, 9], CFG, 0.0, grid=(0.5, 1.5))
    with pytest.raises(ValueError, match="base variant"):
        mc.miou_table([out], base="nope")


def test_oracle_search_agrees_with_exhaustive():
    rng = np.random.default_rng(3)
    lab = rng.integers(0, 4, (12, 12))
    stack = rng.random((3, 3, 12, 12))
    best = mc.oracle_choice(stack, lab, 0.2)
    greedy = mc.oracle_choice(stack, lab, 0.2, max_combos=1)

    def score(c):
        return mc.miou(*mc.image_iu(stack[list(c), np.arange(3)], lab, 0.2))

    assert score(best) >= score(greedy) - 1e-12
    assert score(best) == pytest.approx(max(score(c) for c in np.ndindex(3, 3, 3)))


def test_within_image_spearman_signs_and_drops():
    rows = []
    for k in range(6):  # within each image y rises with x, while across images the level goes the other way
        for j in range(3):
            rows.append({"image": f"i{k}", "x": j + 10 * k, "y": j - 10 * k})
    df = pd.DataFrame(rows)
    r = mc.within_image_spearman(df, "x", "y", n_boot=100)
    assert r["rho"] == pytest.approx(1.0) and r["images"] == 6 and r["pairs"] == 18
    r = mc.within_image_spearman(df.assign(y=-df.y), "x", "y", n_boot=100)
    assert r["rho"] == pytest.approx(-1.0)
    single = pd.concat([df, pd.DataFrame([{"image": "solo", "x": 1, "y": 2}])])
    assert mc.within_image_spearman(single, "x", "y", n_boot=50)["images"] == 6
    with pytest.raises(ValueError, match="columns"):
        mc.within_image_spearman(df, "x", "nope")
    with pytest.raises(ValueError, match="fewer than two images"):
        mc.within_image_spearman(df[df.image == "i0"], "x", "y")


def test_permutation_is_seeded_and_a_permutation():
    s = np.array([0.3, 0.5, 0.9, 1.0])
    a = mc.permuted_scores(s, 0, "img-1")
    assert sorted(a) == sorted(s)
    np.testing.assert_array_equal(a, mc.permuted_scores(s, 0, "img-1"))
    assert any(not np.array_equal(mc.permuted_scores(s, k, "img-1"), a) for k in range(1, 6))


def test_self_attention_mass_against_uniform():
    lab = np.zeros((8, 8), dtype=np.int64)
    lab[:4, :4] = 1  # a quarter of the grid
    uniform = torch.full((64, 64), 1 / 64)
    r = mc.self_attention_mass(uniform, lab)[0]
    assert r["mass"] == pytest.approx(0.25) and r["baseline"] == pytest.approx(0.25) and r["cells"] == 16
    own = (lab.reshape(-1)[:, None] == lab.reshape(-1)[None]).astype(float)  # attend only within the own region
    r = mc.self_attention_mass(own, lab)[0]
    assert r["mass"] == pytest.approx(1.0)
    big = np.kron(lab, np.ones((2, 2), dtype=np.int64))  # a 16x16 image over the 8x8 grid
    assert mc.self_attention_mass(own, big)[0]["mass"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="multiple"):
        mc.self_attention_mass(own, np.zeros((9, 9), dtype=np.int64))
    with pytest.raises(ValueError, match="square"):
        mc.self_attention_mass(np.ones((64, 32)), lab)


def test_class_occlusion_of_a_half_hidden_object():
    size = 32
    back = ToyObject("red", "square", 12.0, 16.0, 6.0)
    front = ToyObject("blue", "square", 20.0, 16.0, 6.0)
    inst = np.zeros((size, size), dtype=np.int64)
    inst[shape_mask("square", 12.0, 16.0, 6.0, size)] = 1
    inst[shape_mask("square", 20.0, 16.0, 6.0, size)] = 2
    scene = Scene(np.zeros((size, size, 3), np.uint8), inst, [back, front])
    full = shape_mask("square", 12.0, 16.0, 6.0, size).sum()
    assert mc.class_occlusion(scene, "blue square") == 0.0
    assert mc.class_occlusion(scene, "red square") == pytest.approx(1 - (inst == 1).sum() / full)
    assert 0 < mc.class_occlusion(scene, "red square") < 1
    with pytest.raises(ValueError, match="no object"):
        mc.class_occlusion(scene, "green circle")


def test_refinement_rows_and_size_buckets():
    label, maps = _two_class_scene()
    own = (mc.local_label(label, [5, 9]).reshape(-1)[:, None] == mc.local_label(label, [5, 9]).reshape(-1)[None])
    sa = torch.as_tensor(own / own.sum(1, keepdims=True), dtype=torch.float32)
    m = _measurement(maps, [[1.0], [2.0]], sa)
    rows = pd.DataFrame(mc.refinement_rows("a", m, label, [5, 9], AlignConfig(), 0.0)
                        + mc.refinement_rows("b", m, label, [5, 9], AlignConfig(), 0.0))
    assert {"i|uncalibrated, refined", "u|calibrated, no refinement"} <= set(rows.columns)
    tab = mc.size_bucket_table(rows, 1, n_boot=50)
    assert set(tab.maps) == {"uncalibrated", "calibrated"} and (tab.classes == 4).all()
    np.testing.assert_allclose(tab["refined minus not"], tab["IoU refined"] - tab["IoU no refinement"])
    with pytest.raises(ValueError, match="n_buckets"):
        mc.size_bucket_table(rows, 0)


def test_split_halves_sum_alternate_timesteps_and_measure_the_orders_reliability():
    elbo = np.array([[1.0, 10.0, 2.0, 20.0, 3.0], [4.0, 40.0, 5.0, 50.0, 6.0]])
    m = _measurement(np.ones((2, 8, 8)), elbo)
    a, b = mc.split_half_losses(m)
    np.testing.assert_allclose(a, [1 + 2 + 3, 4 + 5 + 6])
    np.testing.assert_allclose(b, [10 + 20, 40 + 50])
    a, b = mc.split_half_losses(m, elbo_idx=(1, 2, 3, 4))  # halves of the selected timesteps only
    np.testing.assert_allclose(a, [10 + 20, 40 + 50])
    np.testing.assert_allclose(b, [2 + 3, 5 + 6])
    with pytest.raises(ValueError, match="two or more ELBO timesteps"):
        mc.split_half_losses(m, elbo_idx=(3,))
    # a class order that is a stable property of each image is reliable; pure noise is not
    rng = np.random.default_rng(0)
    rows = []
    for img in range(60):
        level = rng.permutation(3).astype(float) * 5
        for stable, name in ((True, "stable"), (False, "noise")):
            e = (level[:, None] if stable else 0.0) + rng.normal(size=(3, 20))
            a, b = mc.split_half_losses(_measurement(np.ones((3, 8, 8)), e))
            rows += [{"image": f"{name}{img}", "kind": name, "a": a[i], "b": b[i]} for i in range(3)]
    df = pd.DataFrame(rows)
    assert mc.within_image_spearman(df[df.kind == "stable"], "a", "b", n_boot=50)["rho"] > 0.9
    assert abs(mc.within_image_spearman(df[df.kind == "noise"], "a", "b", n_boot=50)["rho"]) < 0.25
    row = mc.class_rows("i", m, np.array([[1] * 4 + [2] * 4] * 8), [1, 2], CFG, 0.5)[0]
    assert (row["elbo_loss_a"], row["elbo_loss_b"]) == (6.0, 30.0) and row["elbo_loss"] == 36.0
