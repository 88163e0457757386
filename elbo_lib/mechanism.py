"""Why ELBO calibration helps (or not) in the toy world: the premises of the method, measured one by one
from cached measurements (no denoiser call).

The method (Alg. 1, Eqs. 4-5) rests on three premises:

1. a class's summed ELBO loss (Eq. 4) is higher when its cross-attention alignment is weaker, so its score
   S = gamma ** minmax(ELB) (Eq. 5) is lower exactly for the classes the uncalibrated heatmaps segment badly
   (:func:`class_rows`, :func:`within_image_spearman`);
2. the power 1 / S of a class's min-max normalised heatmap (Alg. 1 line 7, the "S-th root"; S <= 1, so the
   exponent is >= 1 and a high-loss class's map is pushed down, strongest where it is weak) moves argmax pixels
   between classes in the right direction: measured as the mIoU of per-class exponents chosen with the ground
   truth (an upper bound), of the ELBO's S, of S shuffled among an image's classes and of each image's mean S
   (:func:`variant_iu`, :func:`miou_table`);
3. the self-attention refinement (Alg. 1 line 8) spreads a class's mass over its own object
   (:func:`self_attention_mass`, :func:`refinement_rows`).
"""
from __future__ import annotations

import dataclasses
import itertools
import zlib

import numpy as np
import pandas as pd
import torch

from . import calibrate as cal
from .aligner import AlignConfig, Measurement, heatmaps_for
from .evaluation.metrics import bootstrap_miou, bootstrap_over, miou, per_image_iu
from .toy.world import Scene, shape_mask

# the exponent grid (as S values) the ground-truth oracle chooses from per class; S = 1 is "no calibration",
# so the oracle is never worse than the uncalibrated maps on an image
ORACLE_GRID = (1 / 4, 1 / 3, 1 / 2, 2 / 3, 1.0)
VARIANTS = ("none", "ELBO S", "S permuted within image", "image-mean S", "oracle (per-image best on grid)")


def _check_threshold(threshold: float) -> float:
    if not 0 <= threshold <= 1:
        raise ValueError(f"background threshold must be in [0, 1], got {threshold}")
    return float(threshold)


def heatmaps_for_scores(m: Measurement, cfg: AlignConfig, scores, attention_idx=None, refine: bool = True) -> np.ndarray:
    """Alg. 1 lines 6-8 with given per-class scores S (N,): min-max, the 1/S-th power (Eq. 5's use), the
    self-attention refinement (when ``refine``, ``cfg.self_attention`` and the measurement has it), resize and the
    final min-max, exactly as :func:`elbo_lib.aligner.finalize` does for its own S. (N, H, W) float64."""
    scores = torch.as_tensor(np.asarray(scores, dtype=np.float64))
    cross = m.cross if attention_idx is None else m.cross[list(attention_idx)]
    maps = cross.float().mean(0)
    if scores.shape != (maps.shape[0],):
        raise ValueError(f"need one score per class ({maps.shape[0]}), got shape {tuple(scores.shape)}")
    if not bool(((scores > 0) & (scores <= 1)).all()):
        raise ValueError(f"scores must lie in (0, 1], got {scores.tolist()}")
    return heatmaps_for(maps, m, cfg, scores, refine).double().numpy()


def elbo_scores(m: Measurement, gamma: float, elbo_idx=None) -> tuple[np.ndarray, np.ndarray]:
    """(S, ELB): Eq. 4's summed loss per class over the selected ELBO timesteps and Eq. 5's S = gamma ** minmax(ELB)."""
    elbo = m.elbo if elbo_idx is None else m.elbo[:, list(elbo_idx)]
    return cal.alignment_scores(elbo, gamma).numpy(), cal.elbo_totals(elbo.double()).numpy()


def split_half_losses(m: Measurement, elbo_idx=None) -> tuple[np.ndarray, np.ndarray]:
    """Eq. 4's summed loss per class over alternate halves of the selected ELBO timesteps (positions 0, 2, 4, ...
    and 1, 3, 5, ...; each timestep has its own noise): two independent estimates of the class order the ELBO
    gives, whose within-image agreement is that order's reliability."""
    idx = list(range(m.elbo.shape[1])) if elbo_idx is None else list(elbo_idx)
    if len(idx) < 2:
        raise ValueError(f"a split half needs two or more ELBO timesteps, got {len(idx)}")
    e = m.elbo.double()
    return cal.elbo_totals(e[:, idx[0::2]]).numpy(), cal.elbo_totals(e[:, idx[1::2]]).numpy()


def local_label(label: np.ndarray, class_ids: list[int], ignore_index: int = 255) -> np.ndarray:
    """The label map with global class ids replaced by 1 + their position in ``class_ids`` (0 elsewhere, ignored
    pixels kept as -1)."""
    out = np.zeros(label.shape, dtype=np.int64)
    for i, gid in enumerate(class_ids):
        out[label == gid] = i + 1
    out[label == ignore_index] = -1
    return out


def image_iu(heatmaps: np.ndarray, lab_local: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Intersections and unions (N + 1,) of one image (index 0 background, i + 1 class i) for the referring
    protocol's prediction: background where every heatmap is below ``threshold``, else the argmax class."""
    n = heatmaps.shape[0]
    inter, union = per_image_iu(heatmaps, lab_local, list(range(1, n + 1)), np.array([_check_threshold(threshold)]),
                                n, ignore_index=-1)
    return inter[0], union[0]


def pointing_hits(heatmaps: np.ndarray, lab_local: np.ndarray) -> np.ndarray:
    """Per class: whether the pixel where its heatmap peaks lies inside its own object (the pointing game)."""
    flat = heatmaps.reshape(heatmaps.shape[0], -1).argmax(1)
    return lab_local.reshape(-1)[flat] == np.arange(1, heatmaps.shape[0] + 1)


def class_occlusion(scene: Scene, phrase: str) -> float:
    """The hidden fraction of a class: 1 - visible pixels / pixels of the union of its objects' full shapes."""
    size = scene.instances.shape[0]
    full = np.zeros(scene.instances.shape, dtype=bool)
    for o in scene.objects:
        if o.phrase == phrase:
            full |= shape_mask(o.shape, o.cx, o.cy, o.r, size)
    if not full.any():
        raise ValueError(f"no object of class {phrase!r} in the scene")
    return float(1 - (scene.class_mask(phrase) & full).sum() / full.sum())


def class_rows(image_id: str, m: Measurement, label: np.ndarray, class_ids: list[int], cfg: AlignConfig,
               threshold: float, elbo_idx=None, attention_idx=None, scene: Scene | None = None) -> list[dict]:
    """Premise 1, per (image, class): the uncalibrated heatmaps' class IoU at ``threshold`` and pointing hit, the
    class's S (Eq. 5) and summed ELBO loss (Eq. 4) with its two split halves (:func:`split_half_losses`), its
    visible area in pixels and (with the toy ``scene``) its occluded fraction."""
    if len(class_ids) != len(m.classes):
        raise ValueError(f"{image_id}: {len(class_ids)} class ids for {len(m.classes)} measured classes")
    lab = local_label(label, class_ids)
    raw = heatmaps_for_scores(m, cfg, np.ones(len(class_ids)), attention_idx)
    inter, union = image_iu(raw, lab, threshold)
    hits = pointing_hits(raw, lab)
    s, elb = elbo_scores(m, cfg.gamma, elbo_idx)
    half_a, half_b = split_half_losses(m, elbo_idx)
    return [{"image": image_id, "class": c, "n_classes": len(class_ids), "area": int((lab == i + 1).sum()),
             "occlusion": class_occlusion(scene, c) if scene is not None else np.nan,
             "iou": float(inter[i + 1] / union[i + 1]) if union[i + 1] else np.nan, "hit": bool(hits[i]),
             "S": float(s[i]), "elbo_loss": float(elb[i]), "elbo_loss_a": float(half_a[i]),
             "elbo_loss_b": float(half_b[i])} for i, c in enumerate(m.classes)]


def _centred_ranks(df: pd.DataFrame, col: str, group: str) -> pd.Series:
    return df.groupby(group)[col].rank() - df.groupby(group)[col].transform(lambda v: (len(v) + 1) / 2)


def within_image_spearman(df: pd.DataFrame, x: str, y: str, group: str = "image", n_boot: int = 1000,
                          seed: int = 0) -> dict:
    """Spearman's rho of ``x`` and ``y`` within images, pooled: each column is ranked within its image (ties
    averaged) and centred on the image's mean rank, and the centred ranks of all images are correlated. Images
    with fewer than two rows, or with a constant column, carry no within-image order and are dropped. 95%
    percentile interval over images (resampled with replacement)."""
    missing = [c for c in (x, y, group) if c not in df.columns]
    if missing:
        raise ValueError(f"columns {missing} are not in the table (it has {list(df.columns)})")
    d = df[[group, x, y]].dropna()
    varies = d.groupby(group)[[x, y]].transform("nunique").min(axis=1) > 1
    d = d[varies]
    if d[group].nunique() < 2:
        raise ValueError(f"fewer than two images with two or more distinct {x!r} and {y!r} values")
    d = d.assign(rx=_centred_ranks(d, x, group), ry=_centred_ranks(d, y, group))
    images = d[group].unique()
    by_image = [d[d[group] == g][["rx", "ry"]].to_numpy() for g in images]

    def rho(idx) -> float:
        a = np.concatenate([by_image[i] for i in idx])
        den = np.sqrt((a[:, 0] ** 2).sum() * (a[:, 1] ** 2).sum())
        return float((a[:, 0] * a[:, 1]).sum() / den) if den > 0 else 0.0

    ci, _ = bootstrap_over(len(images), rho, n_boot, seed)
    return {"rho": rho(np.arange(len(images))), "ci95": ci, "images": int(len(images)), "pairs": int(len(d))}


def permuted_scores(scores: np.ndarray, seed: int, key: str) -> np.ndarray:
    """The scores shuffled among an image's classes; the permutation depends on ``seed`` and the image ``key``
    alone, so a rerun gives the same one."""
    rng = np.random.default_rng([int(seed), zlib.crc32(key.encode())])
    return np.asarray(scores)[rng.permutation(len(scores))]


def oracle_choice(stack: np.ndarray, lab_local: np.ndarray, threshold: float, max_combos: int = 4096) -> np.ndarray:
    """Per class, the index into the exponent grid of ``stack`` (G, N, H, W: every class's final heatmap under every
    grid score) that maximises the image's mIoU (classes + background) at ``threshold``. Each class's final heatmap
    depends on its own exponent only (Alg. 1 lines 6-8 act on each class separately), so all G ** N choices are
    tried when that is at most ``max_combos``; otherwise coordinate ascent from S = 1 (the grid's last entry),
    sweeping the classes until no change helps. Ties keep the earlier choice in itertools order."""
    g, n = stack.shape[:2]

    def score(choice) -> float:
        inter, union = image_iu(stack[list(choice), np.arange(n)], lab_local, threshold)
        return miou(inter, union)

    if g ** n <= max_combos:
        best = max(itertools.product(range(g), repeat=n), key=score)
        return np.asarray(best)
    choice = [g - 1] * n
    current = score(choice)
    improved = True
    while improved:
        improved = False
        for i in range(n):
            for k in range(g):
                trial = choice[:i] + [k] + choice[i + 1:]
                value = score(trial)
                if value > current + 1e-12:
                    choice, current, improved = trial, value, True
    return np.asarray(choice)


def oracle_scores(m: Measurement, label: np.ndarray, class_ids: list[int], cfg: AlignConfig, threshold: float,
                  attention_idx=None, grid=ORACLE_GRID) -> np.ndarray:
    """Per class, the S from ``grid`` that the ground-truth oracle gives it (:func:`oracle_choice` on the image's
    final heatmaps under every grid score)."""
    if not grid or any(not 0 < s <= 1 for s in grid):
        raise ValueError(f"the oracle grid must be non-empty scores in (0, 1], got {grid}")
    n = len(class_ids)
    stack = np.stack([heatmaps_for_scores(m, cfg, np.full(n, g), attention_idx) for g in grid])
    return np.asarray(grid, dtype=np.float64)[oracle_choice(stack, local_label(label, class_ids), threshold)]


def variant_iu(image_id: str, m: Measurement, label: np.ndarray, class_ids: list[int], cfg: AlignConfig,
               threshold: float, elbo_idx=None, attention_idx=None, seed: int = 0, grid=ORACLE_GRID,
               n_global: int | None = None, oracle_s: np.ndarray | None = None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Premise 2 for one image: intersections and unions, indexed by global class id (length ``n_global`` + 1,
    default max(class_ids) + 1), under each calibration of :data:`VARIANTS`: none (S = 1), the ELBO's S (Eq. 5), that
    S permuted among the image's classes, every class at the image's mean S, and the ground-truth oracle on ``grid``
    (:func:`oracle_scores`, an upper bound for any per-class exponent from the grid; ``oracle_s`` if already found)."""
    n = len(class_ids)
    lab = local_label(label, class_ids)
    s, _ = elbo_scores(m, cfg.gamma, elbo_idx)
    if oracle_s is None:
        oracle_s = oracle_scores(m, label, class_ids, cfg, threshold, attention_idx, grid)
    scores = {"none": np.ones(n), "ELBO S": s, "S permuted within image": permuted_scores(s, seed, image_id),
              "image-mean S": np.full(n, s.mean()), VARIANTS[-1]: oracle_s}
    heat = {k: heatmaps_for_scores(m, cfg, v, attention_idx) for k, v in scores.items()}
    size = (n_global if n_global is not None else max(class_ids)) + 1
    ids = np.asarray([0, *class_ids])
    out = {}
    for k, h in heat.items():
        inter, union = image_iu(h, lab, threshold)
        gi, gu = np.zeros(size, dtype=np.int64), np.zeros(size, dtype=np.int64)
        np.add.at(gi, ids, inter)
        np.add.at(gu, ids, union)
        out[k] = (gi, gu)
    return out


def miou_table(per_image: list[dict[str, tuple[np.ndarray, np.ndarray]]], base: str = "none", n_boot: int = 1000,
               seed: int = 0) -> pd.DataFrame:
    """mIoU of each variant over the images (classes pooled over images, as the harness scores), with its 95%
    interval and the paired interval of its difference from ``base`` (the same image resamples)."""
    if not per_image:
        raise ValueError("no images to score")
    names = list(per_image[0])
    if base not in names:
        raise ValueError(f"base variant {base!r} is not among {names}")
    arr = {k: (np.stack([p[k][0] for p in per_image]), np.stack([p[k][1] for p in per_image])) for k in names}
    bi, bu = arr[base]
    rows = []
    for k in names:
        i, u = arr[k]
        boot = bootstrap_miou(i, u, n_boot, seed, None if k == base else bi, None if k == base else bu)
        value = miou(i.sum(0), u.sum(0))
        rows.append({"variant": k, "images": len(per_image), "mIoU": value,
                     "ci95": f"[{boot['ci95'][0]:.3f}, {boot['ci95'][1]:.3f}]",
                     f"minus {base}": value - miou(bi.sum(0), bu.sum(0)),
                     "diff_ci95": "" if k == base else f"[{boot['diff_ci95'][0]:+.3f}, {boot['diff_ci95'][1]:+.3f}]"})
    return pd.DataFrame(rows)


def downsample_label(lab_local: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """The label at the self-attention's resolution: each cell takes the class covering most of its pixels
    (ignored pixels, -1, count as background). The image size must be a multiple of ``hw``."""
    H, W = lab_local.shape
    h, w = hw
    if H % h or W % w:
        raise ValueError(f"image {H}x{W} is not a multiple of the attention grid {h}x{w}")
    n = int(lab_local.max()) + 1
    cells = np.clip(lab_local, 0, None).reshape(h, H // h, w, W // w).transpose(0, 2, 1, 3).reshape(h, w, -1)
    counts = np.stack([(cells == c).sum(-1) for c in range(n)], -1)
    return counts.argmax(-1)


def self_attention_mass(self_attn: torch.Tensor | np.ndarray, lab_local: np.ndarray) -> list[dict]:
    """Premise 3, per class of one image: the mean over the class's cells (queries) of the fraction of the
    self-attention row (Alg. 1 line 8's matrix, rows = queries) that falls on the class's own cells, and its
    uniform baseline, the class's area fraction of the grid (what a row spread evenly would give). Rows are
    normalised by their sum (the two-hop product of row-stochastic matrices sums to 1 already)."""
    a = torch.as_tensor(self_attn).double().numpy()
    side = int(round(np.sqrt(a.shape[0])))
    if a.ndim != 2 or a.shape[0] != a.shape[1] or side * side != a.shape[0]:
        raise ValueError(f"self-attention must be a square (h*w, h*w) matrix of a square grid, got {a.shape}")
    low = downsample_label(lab_local, (side, side)).reshape(-1)
    rows = a / np.where(a.sum(1, keepdims=True) > 0, a.sum(1, keepdims=True), 1)
    out = []
    for c in range(1, int(lab_local.max()) + 1):
        own = low == c
        if not own.any():
            out.append({"class_index": c - 1, "cells": 0, "mass": np.nan, "baseline": np.nan})
            continue
        out.append({"class_index": c - 1, "cells": int(own.sum()), "mass": float(rows[own][:, own].sum(1).mean()),
                    "baseline": float(own.mean())})
    return out


def refinement_rows(image_id: str, m: Measurement, label: np.ndarray, class_ids: list[int], cfg: AlignConfig,
                    threshold: float, elbo_idx=None, attention_idx=None) -> list[dict]:
    """Per (image, class): intersection and union at ``threshold`` with and without the self-attention refinement,
    for the uncalibrated maps and the ELBO-calibrated ones, and the class's area (for size buckets)."""
    lab = local_label(label, class_ids)
    s, _ = elbo_scores(m, cfg.gamma, elbo_idx)
    rows = [{"image": image_id, "class": c, "area": int((lab == i + 1).sum())} for i, c in enumerate(m.classes)]
    for calib, sc in (("uncalibrated", np.ones(len(class_ids))), ("calibrated", s)):
        for refine in (True, False):
            inter, union = image_iu(heatmaps_for_scores(m, cfg, sc, attention_idx, refine), lab, threshold)
            tag = f"{calib}, {'refined' if refine else 'no refinement'}"
            for i, r in enumerate(rows):
                r[f"i|{tag}"], r[f"u|{tag}"] = int(inter[i + 1]), int(union[i + 1])
    return rows


def size_bucket_table(rows: pd.DataFrame, n_buckets: int = 3, n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Pooled class IoU (sum of intersections / sum of unions) by object-area quantile bucket for each
    "i|<setting>" / "u|<setting>" column pair of :func:`refinement_rows`, with the paired difference refined minus
    not refined and its 95% interval over images."""
    if n_buckets < 1:
        raise ValueError(f"n_buckets must be >= 1, got {n_buckets}")
    edges = np.unique(np.quantile(rows.area, np.linspace(0, 1, n_buckets + 1)))
    if len(edges) == 1:  # every object the same size: one bucket
        edges = np.repeat(edges, 2)
    bucket = np.clip(np.searchsorted(edges, rows.area, side="right") - 1, 0, len(edges) - 2)
    settings = [c[2:] for c in rows.columns if c.startswith("i|")]
    out = []
    for b in range(len(edges) - 1):
        sub = rows[bucket == b]
        if not len(sub):
            continue
        per_image = sub.groupby("image")[[f"{p}|{s}" for s in settings for p in "iu"]].sum()
        for calib in ("uncalibrated", "calibrated"):
            on, off = f"{calib}, refined", f"{calib}, no refinement"

            def pooled(idx, s):
                p = per_image.iloc[idx]
                return p[f"i|{s}"].sum() / max(p[f"u|{s}"].sum(), 1)

            ci, _ = bootstrap_over(len(per_image), lambda idx: pooled(idx, on) - pooled(idx, off), n_boot, seed)
            all_idx = np.arange(len(per_image))
            out.append({"bucket": b, "area_min": float(edges[b]), "area_max": float(edges[b + 1]), "classes": len(sub),
                        "maps": calib, "IoU refined": pooled(all_idx, on), "IoU no refinement": pooled(all_idx, off),
                        "refined minus not": pooled(all_idx, on) - pooled(all_idx, off),
                        "diff_ci95": f"[{ci[0]:+.3f}, {ci[1]:+.3f}]"})
    return pd.DataFrame(out)


def mass_summary(rows: pd.DataFrame, n_boot: int = 1000, seed: int = 0) -> dict:
    """Mean own-object self-attention mass and uniform baseline over (image, class) rows, and the mean of their
    difference with a 95% interval over images."""
    d = rows.dropna(subset=["mass"])
    if not len(d):
        raise ValueError("no class covers a cell of the self-attention grid")
    per_image = d.assign(diff=d.mass - d.baseline).groupby("image")["diff"].agg(["sum", "count"])
    ci, _ = bootstrap_over(len(per_image), lambda i: per_image["sum"].iloc[i].sum() / per_image["count"].iloc[i].sum(),
                           n_boot, seed)
    return {"classes": int(len(d)), "images": int(len(per_image)), "mass": float(d.mass.mean()),
            "baseline": float(d.baseline.mean()), "mass minus baseline": float((d.mass - d.baseline).mean()),
            "ci95": ci}


@dataclasses.dataclass
class ModelStudy:
    """Everything measured on one model: per-(image, class) premise-1 rows, per-image variant (I, U), premise-3
    mass rows and refinement rows."""

    classes: pd.DataFrame
    variants: list[dict]
    mass: pd.DataFrame
    refinement: pd.DataFrame


def study_model(pairs, cfg: AlignConfig, threshold: float, elbo_idx=None, attention_idx=None, seed: int = 0,
                grid=ORACLE_GRID, n_global: int | None = None, scenes: dict | None = None) -> ModelStudy:
    """Run every measurement of this module over (sample, Measurement) pairs (``runner.measure_dataset``'s output);
    the class rows carry the oracle's S (``oracle_S``) beside the ELBO's."""
    cls, var, mass, ref = [], [], [], []
    for sample, m in pairs:
        scene = (scenes or {}).get(sample.id)
        oracle = oracle_scores(m, sample.label, sample.class_ids, cfg, threshold, attention_idx, grid)
        rows = class_rows(sample.id, m, sample.label, sample.class_ids, cfg, threshold, elbo_idx, attention_idx, scene)
        cls += [{**r, "oracle_S": float(o)} for r, o in zip(rows, oracle)]
        var.append(variant_iu(sample.id, m, sample.label, sample.class_ids, cfg, threshold, elbo_idx, attention_idx,
                              seed, grid, n_global, oracle))
        if m.self_attn is not None:
            lab = local_label(sample.label, sample.class_ids)
            mass += [{"image": sample.id, "class": m.classes[r["class_index"]], **r}
                     for r in self_attention_mass(m.self_attn, lab)]
        ref += refinement_rows(sample.id, m, sample.label, sample.class_ids, cfg, threshold, elbo_idx, attention_idx)
    return ModelStudy(pd.DataFrame(cls), var, pd.DataFrame(mass), pd.DataFrame(ref))
