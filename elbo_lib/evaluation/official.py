"""The authors' real-data scoring (the "official" protocol), one function per step of their
``evaluate_segmentation.py`` (VCG-team/elbo-t2ialign, CRF off):

1. ``load_gt_and_predict``: heatmap files ``{k}_{class}.png`` (8-bit, as their ``run_segmentation.py``
   writes them; k = line index of the image list) are mapped to class ids by a name search
   (:func:`resolve_class_id`), read as value / 255 and resized with PIL bilinear to the label size
   (:func:`read_heatmap`), and merged into the per-pixel maximum and its class (:func:`combine`);
2. ``apply_threshold``: a pixel whose maximum is below the threshold is background (0), else the argmax
   class; VOC's void (255) pixels are dropped; per image and class the predicted (P), labelled (T) and
   correct (TP) pixel counts, one "instance" per class predicted or labelled (:func:`image_counts`);
3. ``apply_metrics``: P, T, TP summed over the dataset, IoU = TP / (T + P - TP + 1e-10), mIoU the mean over
   the classes with an instance, background included (:class:`Counts`);
4. ``__main__``: the binary search for the threshold over 1..99 / 100, which stops at a local maximum
   (:func:`binary_search`); the whole curve and its maximum are reported too, labelled as such.

Labels are read as the authors read them by the datasets' ``labels="official"`` (see datasets.layouts).
``class_ids="own"`` (a project option) scores each heatmap as its own class instead of the name search,
which on ADE20K sends "stool" and "pot" to 66 "toilet" and "screen" to 59 "screen door".
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, UnidentifiedImageError
from tqdm.auto import tqdm

from ..aligner import AlignConfig
from ..datasets import DATASETS, get_dataset
from ..datasets.base import present_ids
from ..paths import atomic_write_json
from ..tokens import default_caption
from .metrics import miou

CLASS_IDS = ("name-search", "own")  # the authors' name search, or each heatmap scored as its own class
STEPS = tuple(range(1, 100))  # thresholds t / 100, their start = 1 and end = 99
IOU_EPS = 1e-10  # added to every union by their apply_metrics
HEATMAP_NAME = re.compile(r"(\d+)_(.+)\.png")


def official_prompts(class_names: list[str], class_ids: list[int]) -> tuple[list[str], str]:
    """``run_segmentation.py`` steps 1-2: the ELBO text of each class ("a photo of {class}") and the
    caption ("a photo of {classes joined by ', '}"), classes in ascending id; with the dataset's
    ``class_words="official"`` these are the texts the Aligner's official preset sends."""
    cfg = AlignConfig.official()
    words = [class_names[k - 1] for k in sorted(class_ids)]
    return [cfg.elbo_template.format(w) for w in words], default_caption(words, cfg.caption_template,
                                                                            cfg.caption_item)


def _nameable(word: str) -> bool:
    """Whether their file-name parser reads ``word`` back: non-empty, no outer spaces, no '_', '.', '/', '\\'."""
    return bool(word) and word == word.strip() and not any(ch in word for ch in "_./\\")


def heatmap_name(index: int, word: str) -> str:
    """``{index}_{word}.png``; a word their parser would misread (with '_', '.', '/', outer spaces) is an error."""
    if not isinstance(index, (int, np.integer)) or isinstance(index, bool) or index < 0:
        raise ValueError(f"a heatmap's image index must be a whole number >= 0, got {index!r}")
    if not _nameable(word):
        raise ValueError(f"class word {word!r} cannot name a heatmap file {{k}}_{{class}}.png: it must be non-empty, "
                         "without outer spaces, '_', '.', '/' or '\\'")
    return f"{int(index)}_{word}.png"


def write_heatmaps(folder: str | Path, index: int, words: list[str], heatmaps: np.ndarray) -> list[Path]:
    """Write one image's heatmaps (N, H, W) in [0, 1] as the authors' run script does: ``{index}_{word}.png``,
    8-bit grayscale, value * 255 rounded half to even (their cv2.imwrite of a float map)."""
    heatmaps = np.asarray(heatmaps, dtype=np.float64)
    if heatmaps.ndim != 3 or heatmaps.shape[0] != len(words):
        raise ValueError(f"heatmaps must be (N, H, W) with N = {len(words)} classes, got shape {heatmaps.shape}")
    if not np.isfinite(heatmaps).all() or heatmaps.min() < 0 or heatmaps.max() > 1:
        raise ValueError("heatmaps must be finite and in [0, 1]")
    names = [heatmap_name(index, w) for w in words]
    if len(set(names)) != len(names):
        raise ValueError(f"class words {words} repeat: one file per word")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, h in zip(names, heatmaps):
        Image.fromarray(np.rint(h * 255).astype(np.uint8)).save(folder / name)
        paths.append(folder / name)
    return paths


@dataclass(frozen=True)
class HeatmapFile:
    index: int   # image index k (line of the image list)
    word: str    # class word in the file name
    path: Path


def list_heatmaps(folder: str | Path, n_images: int) -> dict[int, list[HeatmapFile]]:
    """``load_gt_and_predict``, "convert img idx to the predicted cls names": the files ``{k}_{class}.png``
    of ``folder`` by image index, in file-name order. A file of another name, or an index past the image
    list, is an error (their script would crash on the first or skip the second)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"no heatmap directory {folder}")
    by_image: dict[int, list[HeatmapFile]] = {}
    files = sorted(folder.iterdir())
    if not files:
        raise ValueError(f"heatmap directory {folder} is empty (expected files {{k}}_{{class}}.png)")
    for f in files:
        m = HEATMAP_NAME.fullmatch(f.name)
        if not f.is_file() or m is None or not _nameable(m.group(2)) or str(int(m.group(1))) != m.group(1):
            raise ValueError(f"{f} is not a heatmap file {{k}}_{{class}}.png (k the image's line in the image list, "
                             "class its category key, no '_' or '.' in it)")
        k = int(m.group(1))
        if k >= n_images:
            raise ValueError(f"heatmap {f.name}: image index {k}, but the image list has {n_images} images "
                             f"(0..{n_images - 1})")
        by_image.setdefault(k, []).append(HeatmapFile(k, m.group(2), f))
    return by_image


def resolve_class_id(word: str, categories: list[tuple[str, list[str]]], class_ids: str = "name-search") -> int:
    """``load_gt_and_predict``, "search cls_idx": the class id a heatmap of ``word`` is scored as. The word
    must be a category key. "name-search" (theirs): the first category whose key equals the word or whose
    synonyms contain it; "own": the word's own category."""
    if class_ids not in CLASS_IDS:
        raise ValueError(f"class_ids must be one of {list(CLASS_IDS)}, got {class_ids!r}")
    keys = [k for k, _ in categories]
    if word not in keys:
        raise ValueError(f"{word!r} is not a category key of this dataset (the heatmap file names use the keys of "
                         f"data/classes/official.json, e.g. {', '.join(map(repr, keys[:4]))})")
    if class_ids == "own":
        return keys.index(word) + 1
    return next(i for i, (key, synonyms) in enumerate(categories, 1) if word == key or word in synonyms)


def read_heatmap(path: Path, size_hw: tuple[int, int]) -> np.ndarray:
    """``load_gt_and_predict``, "load predict": the 8-bit levels (H, W) of a heatmap PNG, resized with PIL
    bilinear to the label's (H, W) when it differs (value / 255 in float32 is the authors' heatmap value)."""
    try:
        with Image.open(path) as im:
            if im.mode != "L":
                raise ValueError(f"heatmap {path} is a {im.mode} image; heatmaps are 8-bit grayscale (mode L) PNGs")
            h, w = size_hw
            if im.size != (w, h):
                im = im.resize((w, h), Image.Resampling.BILINEAR)
            return np.asarray(im, dtype=np.uint8)
    except UnidentifiedImageError as e:
        raise ValueError(f"{path} is not an image PIL can read") from e


def combine(levels: dict[int, np.ndarray], shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """``load_gt_and_predict``, "merge all cls predict": per pixel the largest heatmap level (their
    ``predict_value``) and the class id holding it (their argmax over class channels with an all-zero
    background channel 0: ties go to the lowest id, pixels where every heatmap is 0 to 0)."""
    if not levels:
        return np.zeros(shape, np.uint8), np.zeros(shape, np.int64)
    ids = sorted(levels)
    stack = np.stack([levels[k] for k in ids])
    best = stack.max(0)
    arg = np.asarray(ids, dtype=np.int64)[stack.argmax(0)]
    arg[best == 0] = 0
    return best, arg


def level_cutoffs(steps=STEPS) -> np.ndarray:
    """``apply_threshold``, "background = predict_value < threshold": for each threshold t / 100 the number of
    8-bit levels v whose value v / 255 (float32) is below it (compared in float32, as their float32 maps
    against a Python float): a pixel is background when its level is below the cutoff."""
    values = np.arange(256, dtype=np.float32) / 255
    return np.array([int((values < np.float32(t / 100)).sum()) for t in steps], dtype=np.int64)


@dataclass
class ImageCounts:
    """One image's ``apply_threshold`` statistics at every threshold, over the classes ``ids`` predicted
    or labelled in it: P, TP, present (n_thresholds, len(ids)) and T (len(ids),)."""

    ids: np.ndarray
    P: np.ndarray
    T: np.ndarray
    TP: np.ndarray
    present: np.ndarray


def image_counts(best: np.ndarray, arg: np.ndarray, label: np.ndarray, ignore_index: int | None,
                 cutoffs: np.ndarray) -> ImageCounts:
    """``apply_threshold`` for one image at all thresholds at once: pixels labelled ``ignore_index`` are
    dropped (VOC's void: they set the prediction there to 255 and drop 255); a pixel is background when its
    level is below the threshold's cutoff, else its argmax class; per class P, T, TP pixel counts and whether
    it is an instance (predicted or labelled). One histogram over (level, predicted class, label) serves
    every threshold."""
    keep = np.ones(label.shape, bool) if ignore_index is None else label != ignore_index
    lv, a, g = best[keep].astype(np.int64), arg[keep], label[keep].astype(np.int64)
    ids = np.union1d(np.union1d(a, g), [0])  # ids[0] == 0: background
    u = len(ids)
    hist = np.bincount((lv * u + np.searchsorted(ids, a)) * u + np.searchsorted(ids, g), minlength=256 * u * u)
    cum = np.concatenate([np.zeros((1, u, u), np.int64), np.cumsum(hist.reshape(256, u, u), 0)])
    below = cum[cutoffs]                     # (n_thr, predicted, labelled): pixels under the threshold
    conf = cum[-1][None] - below             # above it: predicted as their argmax class
    conf[:, 0, :] += below.sum(1)            # under it: predicted background
    p, t, tp = conf.sum(2), cum[-1].sum(0), np.einsum("kii->ki", conf)
    return ImageCounts(ids, p, t, tp, (p > 0) | (t > 0)[None])


@dataclass
class Counts:
    """``apply_metrics``' per-class sums over the dataset, at every threshold (n_thresholds, n_classes):
    predicted P, labelled T, correct TP pixels and instances (their ``cls_cnt``)."""

    P: np.ndarray
    T: np.ndarray
    TP: np.ndarray
    instances: np.ndarray

    @classmethod
    def zeros(cls, n_thresholds: int, n_classes: int) -> "Counts":
        return cls(*(np.zeros((n_thresholds, n_classes), np.int64) for _ in range(4)))

    def add(self, c: ImageCounts) -> None:
        self.P[:, c.ids] += c.P
        self.T[:, c.ids] += c.T[None]
        self.TP[:, c.ids] += c.TP
        self.instances[:, c.ids] += c.present

    def union(self) -> np.ndarray:
        return self.T + self.P - self.TP

    def iou(self) -> np.ndarray:
        """Their per-class IoU = TP / (T + P - TP + 1e-10), (n_thresholds, n_classes)."""
        return self.TP / (self.union() + IOU_EPS)

    def miou_curve(self) -> np.ndarray:
        """Their key metric at every threshold: mIoU in percent over the classes with an instance (those with a
        non-zero union), background included; a class predicted but never labelled counts with IoU 0."""
        union = self.union()
        return np.array([miou(self.TP[k], union[k], eps=IOU_EPS) * 100 for k in range(len(union))])


def binary_search(curve: np.ndarray, steps=STEPS) -> tuple[int, list[list[int]]]:
    """``__main__``, "binary search to find the best threshold": start from [start, end]; compare the metric at
    mid = (l + r) // 2 and mid + 1, keep the right half when mid's is lower, else the left (ties go left), until
    l == r. Returns the step l (threshold l / 100) and the probes ([start, end], then each [mid, mid + 1]).
    On a curve with several local maxima it can stop at one that is not the largest."""
    steps = list(steps)
    value = dict(zip(steps, curve))
    lo, hi = steps[0], steps[-1]
    if steps != list(range(lo, hi + 1)):
        raise ValueError(f"the threshold steps must be consecutive whole numbers, got {steps}")
    probes = [[lo, hi]]
    while lo < hi:
        mid = (lo + hi) // 2
        probes.append([mid, mid + 1])
        if value[mid] < value[mid + 1]:
            lo = mid + 1
        else:
            hi = mid
    return lo, probes


def score_heatmaps(heatmaps: str | Path, dataset: str, data_root: str | Path, image_list: str | Path | None = None,
                   class_ids: str = "name-search", steps=STEPS) -> dict:
    """Score a folder of heatmaps in the authors' format with their protocol. Every heatmap must be of a class
    labelled in its image and every labelled class must have one (their run script writes exactly those).
    Returns a JSON-able dict: ``curve`` (mIoU in percent at each threshold), ``searched`` (their binary
    search: threshold, mIoU, probes), ``grid_maximum`` (the curve's maximum, not their result where the two
    differ), ``per_class`` at the searched threshold, and what was read."""
    if class_ids not in CLASS_IDS:
        raise ValueError(f"class_ids must be one of {list(CLASS_IDS)}, got {class_ids!r}")
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r} for official scoring; choose from {', '.join(DATASETS)}")
    ds = get_dataset(dataset, data_root, image_list=image_list, labels="official", class_words="official")
    steps = list(steps)
    files = list_heatmaps(heatmaps, len(ds))
    own = {w: resolve_class_id(w, ds.categories, "own") for w in {f.word for fs in files.values() for f in fs}}
    scored_as = {w: resolve_class_id(w, ds.categories, class_ids) for w in own}
    cutoffs = level_cutoffs(steps)
    counts = Counts.zeros(len(steps), len(ds.class_names) + 1)
    collisions = []
    for k in tqdm(range(len(ds)), desc=f"score {ds.name} (official)"):
        label = ds.label(k)
        labelled = present_ids(label, ds.ignore_index)
        fs = files.get(k, [])
        for f in fs:
            if own[f.word] not in labelled:
                raise ValueError(f"heatmap {f.path.name}: class {f.word!r} (id {own[f.word]}) is not labelled in image "
                                 f"{k} ({ds.ids[k]}), whose classes are {ds.phrases(labelled)}")
        missing = sorted(set(labelled) - {own[f.word] for f in fs})
        if missing:
            raise ValueError(f"image {k} ({ds.ids[k]}) has no heatmap for its labelled classes "
                             f"{ds.phrases(missing)} (expected files {k}_{{class}}.png)")
        levels: dict[int, np.ndarray] = {}
        for f in fs:  # a later file of the same id replaces the earlier (theirs: in directory listing order)
            cid = scored_as[f.word]
            if cid in levels:
                collisions.append({"image": k, "class_id": cid, "replaced_by": f.path.name})
            levels[cid] = read_heatmap(f.path, label.shape)
        best, arg = combine(levels, label.shape)
        counts.add(image_counts(best, arg, label, ds.ignore_index if ds.name == "voc" else None, cutoffs))
    remapped = {w: {"own": own[w], "scored_as": scored_as[w]} for w in sorted(own) if scored_as[w] != own[w]}
    return _result(ds, counts, steps, class_ids, remapped, collisions, heatmaps, image_list)


def _result(ds, counts: Counts, steps: list[int], class_ids: str, remapped: dict, collisions: list,
            heatmaps, image_list) -> dict:
    curve = counts.miou_curve()
    best, probes = binary_search(curve, steps)
    k = steps.index(best)
    top = float(curve.max())
    names = ["background"] + ds.class_names
    iou = counts.iou()[k] * 100
    per_class = [{"id": c, "name": names[c], "P": int(counts.P[k, c]), "T": int(counts.T[k, c]),
                  "TP": int(counts.TP[k, c]), "instances": int(counts.instances[k, c]), "IoU": float(iou[c])}
                 for c in range(len(names)) if counts.instances[k, c] > 0]
    return {"protocol": "official: the authors' evaluate_segmentation.py (binary threshold search, CRF off)",
            "dataset": ds.name, "heatmaps": str(heatmaps), "label_dir": str(ds.label_dir),
            "image_list": None if image_list is None else str(image_list), "n_images": len(ds), "class_ids": class_ids,
            "scored_as_other_class": remapped,
            "replaced_heatmaps": collisions,
            "thresholds": [t / 100 for t in steps], "curve": curve.tolist(),
            "searched": {"threshold": best / 100, "miou": float(curve[k]), "probes": probes},
            "grid_maximum": {"miou": top, "thresholds": [t / 100 for t, v in zip(steps, curve) if v == top],
                             "note": "the curve's maximum over the grid; the authors report the searched value"},
            "per_class": per_class}


def write_score(result: dict, out: str | Path) -> list[Path]:
    """official_score.json (everything), official_per_class.csv and official_curve.csv under ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = [atomic_write_json(out / "official_score.json", result)]
    pd.DataFrame(result["per_class"]).to_csv(out / "official_per_class.csv", index=False)
    pd.DataFrame({"threshold": result["thresholds"], "miou": result["curve"]}).to_csv(out / "official_curve.csv",
                                                                                      index=False)
    return paths + [out / "official_per_class.csv", out / "official_curve.csv"]


def summary_lines(result: dict) -> list[str]:
    """What ``python -m elbo_lib score`` prints."""
    s, g = result["searched"], result["grid_maximum"]
    lines = [f"{result['dataset']}: {result['n_images']} images, official protocol (class ids: {result['class_ids']})",
             f"mIoU {s['miou']:.4f} at threshold {s['threshold']:.2f} (the authors' binary search)",
             f"grid maximum {g['miou']:.4f} at {', '.join(f'{t:.2f}' for t in g['thresholds'])} (over 0.01..0.99)"]
    for w, v in result["scored_as_other_class"].items():
        lines.append(f"note: {w!r} (id {v['own']}) is scored as id {v['scored_as']} by the authors' name search")
    for c in result["replaced_heatmaps"]:
        lines.append(f"warning: image {c['image']}: {c['replaced_by']} replaced another heatmap scored as id "
                     f"{c['class_id']} (the authors' result depends on their directory listing order here)")
    lines.append(pd.DataFrame(result["per_class"]).to_markdown(index=False, floatfmt=".4f"))
    return lines
