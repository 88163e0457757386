import pytest
import torch

from elbo_lib import calibrate as cal


def test_minmax_and_constant():
    x = torch.tensor([2.0, 4.0, 3.0])
    torch.testing.assert_close(cal.minmax(x), torch.tensor([0.0, 1.0, 0.5]))
    torch.testing.assert_close(cal.minmax(torch.full((3,), 7.0)), torch.zeros(3))


def test_scores_order_and_range():
    losses = torch.tensor([[1.0, 1.0], [3.0, 2.0], [2.0, 1.5]])  # totals 2, 5, 3.5
    s = cal.alignment_scores(losses, gamma=1 / 3)
    assert s[0] == 1.0 and abs(s[1] - 1 / 3) < 1e-12
    assert 1 / 3 < s[2] < 1
    torch.testing.assert_close(s[2], torch.tensor(1 / 3, dtype=torch.float64) ** 0.5)


def test_gamma_one_and_single_class_and_equal_losses_are_identity():
    maps = torch.rand(3, 5, 5)
    norm = cal.calibrate_maps(maps, torch.ones(3, dtype=torch.float64))
    for scores in (cal.alignment_scores(torch.rand(3, 4), gamma=1.0),
                   cal.alignment_scores(torch.ones(3, 4), gamma=0.2)):
        torch.testing.assert_close(scores, torch.ones(3, dtype=torch.float64))
        torch.testing.assert_close(cal.calibrate_maps(maps, scores), norm)
    assert cal.alignment_scores(torch.rand(1, 4), gamma=0.2).item() == 1.0


def test_root_calibration_math():
    maps = torch.tensor([[[0.0, 0.5], [1.0, 0.25]]])
    out = cal.calibrate_maps(maps, torch.tensor([0.5], dtype=torch.float64))  # A ** 2
    torch.testing.assert_close(out, maps ** 2)  # in the maps' dtype


def test_probs_and_masks():
    heat = torch.rand(4, 6, 7)
    p = cal.class_probabilities(heat)
    torch.testing.assert_close(p.sum(0), torch.ones(6, 7, dtype=torch.float64))
    heat = torch.tensor([[[0.1, 0.9]], [[0.2, 0.3]]])
    assert cal.masks_from_heatmaps(heat, 0.5).tolist() == [[0, 1]]
    assert cal.masks_from_heatmaps(heat, 0.15).tolist() == [[2, 1]]


def test_refine_is_weighted_average():
    maps = torch.rand(2, 3, 3)
    eye = torch.eye(9)
    torch.testing.assert_close(cal.refine_with_self_attention(maps, eye), maps)
    uniform = torch.full((9, 9), 1 / 9)
    out = cal.refine_with_self_attention(maps, uniform)
    torch.testing.assert_close(out[0], torch.full((3, 3), maps[0].mean().item()))
    rows = torch.rand(9, 9).softmax(-1)  # rows are queries: out[q] = sum_k A[q, k] map[k]
    torch.testing.assert_close(cal.refine_with_self_attention(maps, rows)[1].reshape(9), rows @ maps[1].reshape(9))
    with pytest.raises(ValueError, match="does not match"):
        cal.refine_with_self_attention(maps, torch.eye(4))


@pytest.mark.parametrize("bad", [0.0, -0.1, 1.5])
def test_bad_gamma_and_fixed(bad):
    with pytest.raises(ValueError, match="gamma"):
        cal.alignment_scores(torch.rand(2, 2), bad)
    with pytest.raises(ValueError, match="fixed"):
        cal.fixed_scores(2, bad)


def test_bad_threshold():
    with pytest.raises(ValueError, match="threshold"):
        cal.masks_from_heatmaps(torch.rand(2, 3, 3), 1.5)


def test_renormalize_spans_unit_range_per_class():
    h = torch.rand(3, 5, 6) * torch.tensor([0.1, 2.0, 0.5]).view(3, 1, 1) + 0.3
    out = cal.renormalize(h)
    assert torch.allclose(out.amin(dim=(1, 2)), torch.zeros(3)) and torch.allclose(out.amax(dim=(1, 2)), torch.ones(3))
    assert torch.equal(cal.renormalize(torch.full((1, 2, 2), 0.7)), torch.zeros(1, 2, 2))
