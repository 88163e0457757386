"""Semantic DiffSeg (Tian et al., CVPR 2024), "Diffuse, Attend, and Segment: unsupervised
zero-shot segmentation using Stable Diffusion", with its semantic labelling.

Facts followed: self-attention maps of every layer are averaged over heads, each resolution's
4-D attention (query h x w, key h x w) is brought to the finest grid (keys bilinearly, queries
by repetition) and averaged with weights proportional to the resolution; proposals start from an
anchor grid (every 2nd token in each direction); for a few iterations each proposal becomes the
mean of all proposals within a symmetric-KL distance tau; near-duplicates are merged, and every
pixel takes the proposal in which it is most probable (non-maximum suppression). Semantic
labelling: each segment is scored for every class by the mean of the class's min-max normalised
cross-attention inside it; the class heatmap is that segment score, so the shared background
threshold and argmax assign whole segments.
Deviations: tau = 1.1 and 3 iterations (DiffSeg's defaults for 64 x 64 attention) are kept for every
model without tuning; the attention timesteps are the shared (0, 0.2] ones instead of DiffSeg's
single t = 300 of an unconditional pass; the caption conditions the pass.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..aligner import Measurement
from ..attention import aggregate_cross
from ..calibrate import minmax
from ..elbo import attention_timesteps
from ..tokens import default_caption, token_positions
from .base import PAPER_TIMESTEPS, Baseline, register

TAU = 1.1
ITERATIONS = 3


def aggregate_self_attention(sums: dict[int, torch.Tensor], counts: dict[int, int], latent_hw) -> torch.Tensor:
    """(B, Nf, Nf) at the finest grid from per-resolution self-attention, weighted by resolution."""
    hf, wf = latent_hw
    total, wsum = None, 0.0
    for n, s in sums.items():
        a = (s / counts[n]).double()
        f = (hf * wf / n) ** 0.5
        h, w = round(hf / f), round(wf / f)
        b = a.shape[0]
        keys = F.interpolate(a.reshape(b * n, 1, h, w), size=(hf, wf), mode="bilinear", align_corners=False)
        keys = keys.reshape(b, h, w, hf * wf)
        queries = keys.repeat_interleave(hf // h, 1).repeat_interleave(wf // w, 2).reshape(b, hf * wf, hf * wf)
        queries = queries / queries.sum(-1, keepdim=True)
        weight = h / hf
        total = queries * weight if total is None else total + queries * weight
        wsum += weight
    return total / wsum


def sym_kl(p: torch.Tensor, q: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """(K, M) symmetric KL between rows of p (K, N) and q (M, N): (KL(p||q) + KL(q||p)) / 2."""
    lp, lq = (p + eps).log(), (q + eps).log()
    kl_pq = (p * lp).sum(1, keepdim=True) - p @ lq.T
    kl_qp = (q * lq).sum(1)[None] - lp @ q.T
    return 0.5 * (kl_pq + kl_qp)


def segment(attn_nn: torch.Tensor, hw: tuple[int, int], tau: float = TAU, iterations: int = ITERATIONS,
            stride: int = 2) -> np.ndarray:
    """DiffSeg's iterative attention merging: (h, w) segment ids from (N, N) self-attention."""
    h, w = hw
    anchors = [y * w + x for y in range(stride // 2, h, stride) for x in range(stride // 2, w, stride)]
    props = attn_nn[anchors].double()
    for _ in range(iterations):
        near = (sym_kl(props, props) < tau).double()
        props = near @ props / near.sum(1, keepdim=True)
    kept: list[torch.Tensor] = []
    for p in props:  # merge near-duplicates
        if not kept or (sym_kl(p[None], torch.stack(kept)) >= tau).all():
            kept.append(p)
    return torch.stack(kept).argmax(0).reshape(h, w).numpy()


def heatmaps(m, cfg) -> np.ndarray:
    h, w = m.cross.shape[-2:]
    seg = segment(m.self_attn, (h, w))
    cls = minmax(m.cross.double().mean(0), dim=(1, 2)).numpy()  # (N, h, w)
    out = np.zeros_like(cls)
    for s in np.unique(seg):
        inside = seg == s
        out[:, inside] = cls[:, inside].mean(1, keepdims=True)
    seg_up = F.interpolate(torch.from_numpy(out)[None], size=m.image_hw, mode="nearest")[0]
    return seg_up.numpy()


@torch.no_grad()
def measure(aligner, image, classes, caption, seed, cfg) -> Measurement:
    ad = aligner.adapter
    caption = caption or default_caption(classes, cfg.caption_template, cfg.caption_item)
    positions = [[p + ad.token_offset for p in token_positions(ad.tokenizer, caption, c)] for c in classes]
    x0, image_hw = aligner.encode(image, cfg)
    latent_hw = (x0.shape[-2] // ad.patch_size, x0.shape[-1] // ad.patch_size)
    t_att = torch.as_tensor(attention_timesteps(cfg.attention_steps, cfg.attention_t_max), dtype=torch.float64)
    cross, self_sum = [], None
    for store in aligner.attention_passes(x0, caption, t_att, seed, cfg, self_attn=True, all_resolutions=True):
        tok = aggregate_cross(store, "uniform", latent_hw)
        cross.append(torch.stack([tok[:, p].mean(1) for p in positions], 1))
        sa = aggregate_self_attention(store.self_sums, store.self_counts, latent_hw).sum(0)
        self_sum = sa if self_sum is None else self_sum + sa
    return Measurement(list(classes), caption, np.zeros(0), torch.zeros(len(classes), 0), t_att.numpy(),
                       torch.cat(cross).float().cpu(), (self_sum / len(t_att)).float().cpu(), image_hw)


DIFFSEG = register(Baseline("Semantic DiffSeg", heatmaps, measure_overrides=dict(layer_weights="uniform", **PAPER_TIMESTEPS),
                            measure=measure, method="diffseg", notes="tau 1.1, 3 iterations, anchors every 2nd token"))
