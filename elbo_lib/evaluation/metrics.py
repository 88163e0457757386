"""Segmentation metrics of the referring protocol: per-threshold intersections and unions,
mIoU over classes including background, threshold search, bootstrap intervals."""
from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats


def confusion(pred: np.ndarray, label: np.ndarray, n: int, ignore_index: int = 255) -> np.ndarray:
    """(n, n) counts: rows = ground truth, columns = prediction; ignored pixels dropped."""
    keep = label != ignore_index
    gt, pr = label[keep].astype(np.int64), pred[keep].astype(np.int64)
    if gt.size and (gt.max() >= n or pr.max() >= n or gt.min() < 0 or pr.min() < 0):
        raise ValueError(f"labels must be in [0, {n - 1}] (or ignore {ignore_index})")
    return np.bincount(gt * n + pr, minlength=n * n).reshape(n, n)


def intersection_union(conf: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-class intersection (TP) and union (TP + FP + FN) from a confusion matrix."""
    tp = np.diag(conf)
    return tp, conf.sum(0) + conf.sum(1) - tp


def miou(inter: np.ndarray, union: np.ndarray, eps: float = 0.0) -> float:
    """Mean IoU over classes whose union is non-zero (classes absent from the data do not count);
    ``eps`` is added to each union (the authors' evaluation adds 1e-10)."""
    inter, union = np.asarray(inter, dtype=np.float64), np.asarray(union, dtype=np.float64)
    valid = union > 0
    if not valid.any():
        return float("nan")
    return float((inter[valid] / (union[valid] + eps)).mean())


def per_image_iu(heatmaps_nhw: np.ndarray, label: np.ndarray, class_ids: list[int], thresholds: np.ndarray,
                 n_global: int, ignore_index: int = 255) -> tuple[np.ndarray, np.ndarray]:
    """Intersections and unions (T, n_global + 1) of one image at every background threshold.

    heatmaps_nhw[i] belongs to global class class_ids[i]; a pixel is background when every heatmap
    is below the threshold, else it takes the class of the largest heatmap."""
    keep = label != ignore_index
    best = heatmaps_nhw.max(0)[keep]
    arg = np.asarray(class_ids, dtype=np.int64)[heatmaps_nhw.argmax(0)[keep]]
    gt = label[keep].astype(np.int64)
    n = n_global + 1
    inter = np.zeros((len(thresholds), n), dtype=np.int64)
    union = np.zeros((len(thresholds), n), dtype=np.int64)
    gt_count = np.bincount(gt, minlength=n)
    for k, t in enumerate(thresholds):
        pred = np.where(best >= t, arg, 0)
        tp = np.bincount(gt[pred == gt], minlength=n)
        inter[k] = tp
        union[k] = gt_count + np.bincount(pred, minlength=n) - tp
    return inter, union


def best_threshold(inter_tc: np.ndarray, union_tc: np.ndarray, thresholds: np.ndarray) -> tuple[float, int, float]:
    """The threshold with the highest mIoU: (threshold, index, mIoU); ties go to the lower threshold."""
    scores = np.array([miou(inter_tc[k], union_tc[k]) for k in range(len(thresholds))])
    k = int(np.nanargmax(scores))
    return float(thresholds[k]), k, float(scores[k])


def bootstrap_over(n: int, statistic, n_boot: int = 1000, seed: int = 0) -> tuple[list[float], np.ndarray]:
    """95% percentile interval of ``statistic(indices)`` over ``n`` items resampled with replacement
    (``scipy.stats.bootstrap`` on the item indices), and the bootstrap distribution. One item has no
    spread to resample: its interval is the point itself."""
    if n == 1:
        value = float(statistic(np.arange(1)))
        return [value, value], np.full(n_boot, value)
    res = stats.bootstrap((np.arange(n),), statistic, n_resamples=n_boot, method="percentile", vectorized=False,
                          confidence_level=0.95, random_state=np.random.default_rng(seed))
    ci = res.confidence_interval
    return [float(ci.low), float(ci.high)], res.bootstrap_distribution


def paired_drop(df: pd.DataFrame, column: str, n_boot: int = 1000, seed: int = 0) -> dict:
    """Mean per-sample drop of ``column`` from the easiest to the hardest ``level`` of a study (the same scene
    at both ends: rows' ``id`` is ``<sample>-<level>``), with a 95% bootstrap interval over samples."""
    lo, hi = df.level.min(), df.level.max()
    sample = df.id.str.rsplit("-", n=1).str[0]
    wide = df.assign(sample=sample).pivot_table(index="sample", columns="level", values=column)
    d = (wide[lo] - wide[hi]).dropna().to_numpy(dtype=float)
    if len(d) == 0:
        raise ValueError(f"no sample has both level {lo} and level {hi}")
    ci, _ = bootstrap_over(len(d), lambda i: d[i].mean(), n_boot, seed)
    return {"mean": float(d.mean()), "ci95": ci, "n": int(len(d))}


def bootstrap_miou(inter_ic: np.ndarray, union_ic: np.ndarray, n_boot: int = 1000, seed: int = 0,
                   inter_b: np.ndarray | None = None, union_b: np.ndarray | None = None) -> dict:
    """95% percentile interval over images (resampled with replacement) of mIoU, and of the paired
    difference mIoU(a) - mIoU(b) when a second method's per-image (I, U) are given (same resamples)."""
    n = inter_ic.shape[0]
    out = {"ci95": bootstrap_over(n, lambda i: miou(inter_ic[i].sum(0), union_ic[i].sum(0)), n_boot, seed)[0]}
    if inter_b is not None:
        ci, diffs = bootstrap_over(n, lambda i: miou(inter_ic[i].sum(0), union_ic[i].sum(0))
                                   - miou(inter_b[i].sum(0), union_b[i].sum(0)), n_boot, seed)
        out["diff_ci95"] = ci
        out["diff_p_le_0"] = float(np.mean(diffs <= 0))
    return out


def iou_at(pairs: pd.DataFrame, k: int) -> float:
    """Pooled IoU of (image, class) rows at threshold index ``k`` (columns ``i_k``, ``u_k``); NaN without union."""
    u = pairs[f"u_{k}"].sum()
    return float(pairs[f"i_{k}"].sum() / u) if u > 0 else float("nan")


def size_buckets(pairs: pd.DataFrame, k: int) -> list[dict]:
    """IoU of (image, class) rows by ground-truth-area decile (rows' ``area``), at threshold index ``k``."""
    edges = np.unique(np.percentile(pairs.area, np.linspace(0, 100, 11)))
    bucket = np.clip(np.searchsorted(edges, pairs.area, side="right") - 1, 0, len(edges) - 2)
    return [{"bucket": int(b), "area_min": float(edges[b]), "area_max": float(edges[b + 1]),
             "n": int((bucket == b).sum()), "iou": iou_at(pairs[bucket == b], k)}
            for b in range(len(edges) - 1) if (bucket == b).any()]
