"""Semantic DiffSeg (Tian et al., CVPR 2024), "Diffuse, Attend, and Segment: unsupervised zero-shot segmentation
using Stable Diffusion", with its semantic labelling, reviewed step by step against its authors' code
(google/diffseg, commit 77ea596; ``S`` = ``diffseg/segmentor.py``, ``K`` = ``third_party/keras_cv/
stable_diffusion.py``, ``D`` = ``third_party/keras_cv/diffusion_model.py``, notebooks ``diffseg.ipynb`` (semantic
labels) and ``benchmarks.ipynb`` (the paper's benchmark settings)). That code runs Stable Diffusion in
TensorFlow / KerasCV, which this environment does not have, so no reference maps were made; each step below is
tested against the formula its line implements (``tests/test_diffseg.py``).

1. Latent: the image encoder's posterior mean times 0.18215 (KerasCV's ``ImageEncoder``, whose last layer keeps
   the mean's 4 channels; ``latent = vae(images)`` in both notebooks), **no noise added**.
2. One UNet call at timestep 300 on that clean latent (``timestep=300``, notebooks; K:205-215); with a caption
   (the semantic notebook's BLIP caption) as context, else the unconditional one. Here the given caption.
3. Self-attention per resolution (D:49-89): the mean over a resolution's layers (each added ``/5``; the mid block's
   single layer), over heads (S:49).
4. Aggregation (S:32-64): each resolution's (query, key) maps with keys resized bilinearly to the finest grid
   (S:52), renormalised to sum 1 (S:56), queries repeated (S:59-60), weighted by resolution / sum of resolutions
   (S:32-38, ``weight_ratio=None``) and summed (:func:`aggregate_self_attention`).
5. Anchors (S:22-30): a ``NUM_POINTS`` x ``NUM_POINTS`` grid (16, ``benchmarks.ipynb``), spaced
   ``(L - 1) // (NUM_POINTS - 1)`` apart and centred on the L x L grid; on SD's 64x64, rows/columns 1, 5, ..., 61,
   on the toy's 16x16 every position (:func:`sampling_grid`).
6. Iterative merging (S:88-126), ``len(KL_THRESHOLD)`` = 3 iterations at threshold 1.1 (COCO-Stuff,
   ``benchmarks.ipynb``), KL = the symmetric KL ``(KL(x||y) + KL(y||x)) / 2`` (S:82-86, :func:`sym_kl`):
   iteration 0 replaces each anchor by the mean of **every pixel's** map within the threshold of it (S:89-101,
   :func:`merge_anchors`); later ones go through the proposals in order, each not yet matched one taking the mean
   of all proposals within the threshold and marking them matched (S:102-117, :func:`merge_greedy`).
7. No K-means refinement (``REFINEMENT = False`` in ``benchmarks.ipynb``; the semantic notebook's True is optional).
8. Non-maximum suppression (S:139-145): each proposal resized bilinearly to the image size, the pixel's segment its
   argmax (:func:`nms`).
9. Semantic labels (S:66-80 with ``weight_ratio=[1, 1, 1, 1]``, S:157-177 with ``voting="mean"``, as
   ``diffseg.ipynb`` calls them): per resolution the head- and layer-mean cross-attention resized bilinearly to the
   image size, normalised over the tokens per pixel, summed over resolutions with equal weights; each class column
   divided by its L2 norm over the image; a segment's score for a class is the mean of that column inside it, and
   the segment goes to the class with the highest score (:func:`segment_scores`).

Deviations, each forced by the referring protocol or the toy's sizes:

- Classes: the given class phrases instead of nouns tagged in a BLIP caption; a phrase's column is the mean of its
  tokens' columns (DiffSeg reads one token per noun word; the same phrase choice as OVAM's).
- Background: DiffSeg gives every segment a label. Here the class heatmap is the segment's score divided by the
  image's highest (segment, class) score, so the argmax over classes is DiffSeg's label and the shared background
  threshold of our protocol decides which segments are background.
- Sizes: the KerasCV code is written for 512x512 images (64x64 latent, 77 tokens); the threshold 1.1 and the 16
  anchors per side are kept unchanged at other grid sizes (untuned: a KL over 256-pixel maps on the toy is not on
  the scale of one over 4096-pixel maps). A square latent grid is required, as DiffSeg's code assumes.
- Numerics: DiffSeg computes iteration 0's KL in float16 (S:98); here float64 with logs of ``p + 1e-12``.
- Their cross-attention sum for the 64x64 resolution adds the last up-block layer ``/3`` where the others are
  ``/5`` (D:120; the self-attention uses ``/5``); here every resolution's layers are averaged.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from ..aligner import Measurement
from ..attention import AttentionStore
from ..tokens import default_caption
from .base import PAPER_TIMESTEPS, Baseline, register

TAU = 1.1          # benchmarks.ipynb: KL_THRESHOLD = [1.1]*3 (COCO-Stuff)
ITERATIONS = 3     # len(KL_THRESHOLD)
NUM_POINTS = 16    # benchmarks.ipynb / diffseg.ipynb: NUM_POINTS = 16
TIMESTEP = 300     # text_to_image(..., timestep=300)
EPS = 1e-12


def aggregate_self_attention(sums: dict[int, torch.Tensor], counts: dict[int, int], latent_hw) -> torch.Tensor:
    """S:32-64: (B, Nf, Nf) at the finest grid from per-resolution self-attention sums over layers (and heads
    averaged): keys bilinear to the finest grid, renormalised, queries repeated, weights proportional to the
    resolution."""
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


def sampling_grid(size: int, num_points: int = NUM_POINTS) -> list[tuple[int, int]]:
    """S:22-30 with 63 = size - 1: num_points per side, ``(size - 1) // (num_points - 1)`` apart, centred;
    (row, column) pairs, rows first. More points than positions: every position."""
    n = min(num_points, size)
    seg = (size - 1) // (n - 1) if n > 1 else 0
    total = seg * (n - 1)
    start = (size - 1 - total) // 2
    coords = np.linspace(start, total + start, n).astype(int)
    return [(int(r), int(c)) for r in coords for c in coords]


def sym_kl(p: torch.Tensor, q: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """S:82-86, (K, M): sum(p (log p - log q)) / 2 - sum(q (log p - log q)) / 2 between the rows of p (K, N)
    and of q (M, N)."""
    lp, lq = (p + eps).log(), (q + eps).log()
    kl_pq = (p * lp).sum(1, keepdim=True) - p @ lq.T
    kl_qp = (q * lq).sum(1)[None] - lp @ q.T
    return 0.5 * (kl_pq + kl_qp)


def merge_anchors(attn_nn: torch.Tensor, anchors: list[int], tau: float) -> torch.Tensor:
    """S:89-101, iteration 0: each anchor's map replaced by the mean of the maps of every pixel within KL < tau."""
    near = (sym_kl(attn_nn[anchors], attn_nn) < tau).double()
    return near @ attn_nn / near.sum(1, keepdim=True)


def merge_greedy(props: torch.Tensor, tau: float) -> torch.Tensor:
    """S:102-117, later iterations: in order, each proposal not yet matched takes the mean of every proposal within
    KL < tau of it (matched or not) and marks them matched."""
    near = sym_kl(props, props) < tau
    matched: set[int] = set()
    out = []
    for i in range(len(props)):
        if i in matched:
            continue
        matched.add(i)
        row = near[i]
        if row.any():
            matched.update(torch.nonzero(row).flatten().tolist())
            out.append(props[row].mean(0))
    return torch.stack(out)


def proposals(attn_nn: torch.Tensor, size: int, tau: float = TAU, iterations: int = ITERATIONS,
              num_points: int = NUM_POINTS) -> torch.Tensor:
    """S:119-126: (K, N) merged attention maps from the (N, N) aggregated self-attention (rows = queries)."""
    anchors = [r * size + c for r, c in sampling_grid(size, num_points)]
    props = merge_anchors(attn_nn.double(), anchors, tau)
    for _ in range(iterations - 1):
        props = merge_greedy(props, tau)
    return props


def nms(props: torch.Tensor, size: int, image_hw: tuple[int, int]) -> np.ndarray:
    """S:139-145: every proposal resized bilinearly to the image size; each pixel takes the argmax."""
    up = F.interpolate(props.reshape(1, -1, size, size), size=tuple(image_hw), mode="bilinear", align_corners=False)
    return up[0].argmax(0).numpy()


def segment(attn_nn: torch.Tensor, image_hw: tuple[int, int], tau: float = TAU, iterations: int = ITERATIONS,
            num_points: int = NUM_POINTS) -> np.ndarray:
    """DiffSeg's segmentation: (H, W) segment ids from the (N, N) aggregated self-attention of a square grid."""
    size = math.isqrt(attn_nn.shape[0])
    if size * size != attn_nn.shape[0]:
        raise ValueError(f"DiffSeg's segmentation needs a square latent grid; got {attn_nn.shape[0]} positions")
    return nms(proposals(attn_nn, size, tau, iterations, num_points), size, image_hw)


def aggregate_cross_attention(store: AttentionStore, image_hw: tuple[int, int]) -> torch.Tensor:
    """S:66-80 with ``weight_ratio=[1, 1, 1, 1]``: (B, T, H, W) per resolution the layer mean (heads averaged at
    capture) resized bilinearly to the image size, normalised over the tokens per pixel, summed over resolutions."""
    groups: dict[int, list[torch.Tensor]] = {}
    for p in store.cross.values():
        groups.setdefault(p.shape[1], []).append(p.double())
    total = None
    for n, maps in groups.items():
        hl, wl = store.layer_hw(n)
        m = torch.stack(maps).mean(0)  # (B, Nq, T)
        m = m.transpose(1, 2).reshape(m.shape[0], m.shape[2], hl, wl)
        m = F.interpolate(m, size=tuple(image_hw), mode="bilinear", align_corners=False)
        m = m / m.sum(1, keepdim=True)
        total = m if total is None else total + m
    if total is None:
        raise ValueError("no cross-attention was captured")
    return total


def segment_scores(seg: np.ndarray, class_maps: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """S:157-177, ``voting="mean"``: (segment ids, scores (N, K)): each class map divided by its L2 norm over the
    image, then its mean inside each segment."""
    x = class_maps.double().reshape(class_maps.shape[0], -1)
    x = x / x.norm(dim=1, keepdim=True)
    ids = np.unique(seg)
    flat = torch.from_numpy(seg.reshape(-1))
    scores = torch.stack([x[:, flat == s].mean(1) for s in ids], 1)
    return ids, scores.numpy()


def heatmaps(m: Measurement, cfg) -> np.ndarray:
    """(N, H, W): each pixel's segment score for each class over the image's highest (segment, class) score."""
    if m.cross.shape[0] != 1 or m.self_attn is None:
        raise ValueError("a Semantic DiffSeg measurement holds one row of class maps and the aggregated self-attention")
    seg = segment(m.self_attn, m.image_hw)
    ids, scores = segment_scores(seg, m.cross[0])
    top = scores.max()
    if not top > 0:
        raise ValueError("no segment has a positive class score")
    out = np.zeros((len(m.classes), *seg.shape))
    for k, s in enumerate(ids):
        out[:, seg == s] = scores[:, k:k + 1] / top
    return out


@torch.no_grad()
def measure(aligner, image, classes, caption, seed, cfg) -> Measurement:
    """One pass at t = 300 on the clean latent with the caption: ``cross`` (1, N, H, W) the class columns of the
    aggregated cross-attention at the image size, ``self_attn`` (N_f, N_f) the aggregated self-attention."""
    ad = aligner.adapter
    caption = caption or default_caption(classes, cfg.caption_template, cfg.caption_item)
    positions = aligner.class_tokens(caption, classes, cfg)
    x0, image_hw = aligner.encode(image, cfg)
    latent_hw = (x0.shape[-2] // ad.patch_size, x0.shape[-1] // ad.patch_size)
    if latent_hw[0] != latent_hw[1]:
        raise ValueError(f"Semantic DiffSeg needs a square latent grid (DiffSeg's code assumes one); got {latent_hw}")
    t = torch.tensor([TIMESTEP / 1000], dtype=torch.float64)
    store = next(aligner.attention_passes(x0, caption, t, seed, cfg, noised=False, self_attn=True,
                                          all_resolutions=True))
    tok = aggregate_cross_attention(store, image_hw)[0]  # (T, H, W)
    cross = torch.stack([tok[p].mean(0) for p in positions])[None]
    sa = aggregate_self_attention(store.self_sums, store.self_counts, latent_hw)[0]
    return Measurement(list(classes), caption, np.zeros(0), torch.zeros(len(classes), 0), t.numpy(),
                       cross.float().cpu(), sa.float().cpu(), image_hw)


DIFFSEG = register(Baseline("Semantic DiffSeg", heatmaps, measure_overrides=dict(**PAPER_TIMESTEPS),
                            measure=measure, method="semantic-diffseg", passes=lambda cfg, n_classes: 1,
                            notes="t = 300 on the clean latent, 16x16 anchors, KL 1.1, 3 iterations, mean voting"))
