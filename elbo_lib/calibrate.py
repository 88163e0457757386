"""Calibration of class heatmaps with ELBO alignment scores (Eq. 5, Algorithm 1 lines 6-9)."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def minmax(x: torch.Tensor, dim: int | tuple[int, ...] | None = None) -> torch.Tensor:
    """(x - min) / (max - min) over ``dim`` (all of x when None); a constant input maps to 0."""
    if dim is None:
        lo, hi = x.min(), x.max()
    else:
        lo, hi = x.amin(dim=dim, keepdim=True), x.amax(dim=dim, keepdim=True)
    rng = hi - lo
    return torch.where(rng > 0, (x - lo) / torch.where(rng > 0, rng, torch.ones_like(rng)), torch.zeros_like(x))


def elbo_totals(losses_nt: torch.Tensor) -> torch.Tensor:
    """Eq. 4: ELB_i = sum over timesteps of the class's loss (lower = stronger match)."""
    return losses_nt.sum(dim=1)


def alignment_scores(losses_nt: torch.Tensor, gamma: float = 1 / 3) -> torch.Tensor:
    """Eq. 5: S = gamma ** minmax(ELB), so S_i in [gamma, 1]; the weakest match (highest loss) gets gamma."""
    if not 0 < gamma <= 1:
        raise ValueError(f"gamma must be in (0, 1], got {gamma}")
    return torch.as_tensor(gamma, dtype=torch.float64) ** minmax(elbo_totals(losses_nt).double())


def fixed_scores(n: int, s: float) -> torch.Tensor:
    """Table VIII: every class gets the same S (the root alone, no ELBO)."""
    if not 0 < s <= 1:
        raise ValueError(f"a fixed alignment score must be in (0, 1], got {s}")
    return torch.full((n,), float(s), dtype=torch.float64)


def calibrate_maps(maps_nhw: torch.Tensor, scores_n: torch.Tensor) -> torch.Tensor:
    """Alg. 1 lines 6-7: min-max normalise each class map, then take its S_i-th root: A <- A ** (1 / S_i).
    Computed in the maps' dtype (float32 as the authors do: see :func:`refine_with_self_attention`)."""
    norm = minmax(maps_nhw, dim=tuple(range(1, maps_nhw.ndim)))
    exps = (1.0 / scores_n.double()).to(maps_nhw.dtype).view(-1, *[1] * (maps_nhw.ndim - 1))
    return norm ** exps


def refine_with_self_attention(maps_nhw: torch.Tensor, self_attn_qk: torch.Tensor) -> torch.Tensor:
    """Alg. 1 line 8: heatmap <- SelfAttn @ map at the self-attention's resolution (rows = queries), in the
    maps' dtype. The refined maps can be nearly flat (a range of 1e-4 of their mean on random weights),
    so the precision of this step shows after the final min-max: float32, as the authors compute it,
    is what reproduces their heatmaps."""
    n, h, w = maps_nhw.shape
    if self_attn_qk.shape != (h * w, h * w):
        raise ValueError(f"self-attention {tuple(self_attn_qk.shape)} does not match maps of {h}x{w}; "
                         "aggregate the cross-attention at the self-attention's resolution")
    sa = self_attn_qk.to(maps_nhw.dtype)
    # one matrix-vector product per class, as theirs: a batched product sums in another order
    return torch.stack([(sa @ m.reshape(h * w, 1)).reshape(h, w) for m in maps_nhw])


def upsample(maps_nhw: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of (N, h, w) maps to size (H, W)."""
    if tuple(maps_nhw.shape[-2:]) == tuple(size):
        return maps_nhw
    return F.interpolate(maps_nhw[None], size=size, mode="bilinear", align_corners=False)[0]


def renormalize(heatmaps_nhw: torch.Tensor) -> torch.Tensor:
    """The authors' last step: each class heatmap min-max normalised again after refinement and resize
    (``run_segmentation.py``, before ``* 255``), so every class map spans [0, 1] before thresholding."""
    return minmax(heatmaps_nhw, dim=tuple(range(1, heatmaps_nhw.ndim)))


def class_probabilities(heatmaps_nhw: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Alg. 1 line 9: p(c_i | x_k) = softmax over classes of the heatmaps (sums to 1 at each pixel)."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    return torch.softmax(heatmaps_nhw.double() / temperature, dim=0)


def masks_from_heatmaps(heatmaps_nhw: torch.Tensor, threshold: float) -> torch.Tensor:
    """(H, W) ints: 0 where every class heatmap is below ``threshold`` (background), else 1 + argmax."""
    if not 0 <= threshold <= 1:
        raise ValueError(f"background threshold must be in [0, 1], got {threshold}")
    best, idx = heatmaps_nhw.max(dim=0)
    return torch.where(best >= threshold, idx + 1, torch.zeros_like(idx))
