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
from .metrics import bootstrap_miou, miou, size_buckets

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


def quantize(heatmaps: np.ndarray, n_classes: int | None = None) -> np.ndarray:
    """Heatmaps (N, H, W) in [0, 1] as the 8-bit levels the authors' run script saves: value * 255 rounded half
    to even (their cv2.imwrite of a float map), uint8. Anything else (a map outside [0, 1], NaN) is an error."""
    heatmaps = np.asarray(heatmaps, dtype=np.float64)
    if heatmaps.ndim != 3 or (n_classes is not None and heatmaps.shape[0] != n_classes):
        want = "N" if n_classes is None else f"N = {n_classes} classes"
        raise ValueError(f"heatmaps must be (N, H, W) with {want}, got shape {heatmaps.shape}")
    if heatmaps.size and (not np.isfinite(heatmaps).all() or heatmaps.min() < 0 or heatmaps.max() > 1):
        raise ValueError("heatmaps must be finite and in [0, 1] to be saved as 8-bit levels")
    return np.rint(heatmaps * 255).astype(np.uint8)


def write_heatmaps(folder: str | Path, index: int, words: list[str], heatmaps: np.ndarray) -> list[Path]:
    """Write one image's heatmaps (N, H, W) in [0, 1] as the authors' run script does: ``{index}_{word}.png``,
    8-bit grayscale (:func:`quantize`)."""
    levels = quantize(heatmaps, len(words))
    names = [heatmap_name(index, w) for w in words]
    if len(set(names)) != len(names):
        raise ValueError(f"class words {words} repeat: one file per word")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, lv in zip(names, levels):
        Image.fromarray(lv).save(folder / name)
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


def _to_size(im: Image.Image, size_hw: tuple[int, int]) -> np.ndarray:
    """An 8-bit grayscale image's levels at (H, W): resized with PIL bilinear where its size differs."""
    h, w = size_hw
    if im.size != (w, h):
        im = im.resize((w, h), Image.Resampling.BILINEAR)
    return np.asarray(im, dtype=np.uint8)


def read_heatmap(path: Path, size_hw: tuple[int, int]) -> np.ndarray:
    """``load_gt_and_predict``, "load predict": the 8-bit levels (H, W) of a heatmap PNG, resized with PIL
    bilinear to the label's (H, W) when it differs (value / 255 in float32 is the authors' heatmap value)."""
    try:
        with Image.open(path) as im:
            if im.mode != "L":
                raise ValueError(f"heatmap {path} is a {im.mode} image; heatmaps are 8-bit grayscale (mode L) PNGs")
            return _to_size(im, size_hw)
    except UnidentifiedImageError as e:
        raise ValueError(f"{path} is not an image PIL can read") from e


def merge_by_id(entries: list[tuple[str, int, np.ndarray]]) -> tuple[dict[int, np.ndarray], list[tuple[int, str]]]:
    """One image's heatmaps ``(file name, scored class id, levels)`` in file-name order, by scored id: where two
    get the same id (ADE20K "stool" and "pot" by the name search) the later file replaces the earlier, as in
    their directory listing. Returns the levels by id and the (id, file name) of each replacing file."""
    levels: dict[int, np.ndarray] = {}
    replaced = []
    for name, cid, lv in entries:
        if cid in levels:
            replaced.append((cid, name))
        levels[cid] = lv
    return levels, replaced


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


# how each column of a real-data table is scored
OFFICIAL = "official (authors' evaluation)"  # their scoring, threshold by their search on the scored images (oracle)
CROSS_FITTED = "cross-fitted held-out"      # their scoring, threshold searched on the other half of the images
PROJECT = "project"                          # the project's own protocol (threshold grid, a held-out fraction)


def ignore_index_of(ds) -> int | None:
    """The label value the authors' evaluation drops: VOC's void (255); their other datasets drop nothing."""
    return ds.ignore_index if ds.name == "voc" else None


def heatmap_counts(heatmaps: np.ndarray | None, class_ids: list[int], label: np.ndarray, ds, cutoffs: np.ndarray,
                   class_ids_mode: str = "name-search") -> tuple[ImageCounts, list[tuple[int, str]]]:
    """One image scored as the authors score its heatmap files, from its heatmaps (N, H, W) in [0, 1] of the
    dataset classes ``class_ids``: 8-bit levels (:func:`quantize`), resized to the label's size where it differs,
    named by the classes' category keys and merged in file-name order (:func:`merge_by_id`), then
    :func:`combine` and :func:`image_counts` at every threshold. An image without labelled classes (no heatmap:
    their run script writes none) is all background. Returns the counts and the replaced files."""
    if len(class_ids):
        levels = quantize(heatmaps, len(class_ids))
        entries = [(heatmap_name(0, ds.categories[c - 1][0]), resolve_class_id(ds.categories[c - 1][0], ds.categories,
                                                                               class_ids_mode),
                    _to_size(Image.fromarray(lv), label.shape)) for c, lv in zip(class_ids, levels)]
        entries.sort(key=lambda e: e[0])
    else:
        entries = []
    merged, replaced = merge_by_id(entries)
    best, arg = combine(merged, label.shape)
    return image_counts(best, arg, label, ignore_index_of(ds), cutoffs), replaced


@dataclass
class OfficialScored:
    """One method's official counts per image at every threshold (:class:`ImageCounts`), in image-list order,
    over ``n_classes`` ids (background included)."""

    images: list[str]
    counts: list[ImageCounts]
    n_classes: int

    def total(self, idx=None) -> Counts:
        """The dataset sums (their ``apply_metrics``) over all images or the images ``idx``."""
        out = Counts.zeros(self.counts[0].P.shape[0], self.n_classes)
        for i in range(len(self.counts)) if idx is None else idx:
            out.add(self.counts[i])
        return out

    def at(self, k: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(TP, union, T) per image and class (n_images, n_classes), image i at threshold index ``k[i]``."""
        tp, union, t = (np.zeros((len(self.counts), self.n_classes), np.int64) for _ in range(3))
        for i, (c, ki) in enumerate(zip(self.counts, k)):
            tp[i, c.ids], t[i, c.ids] = c.TP[ki], c.T
            union[i, c.ids] = c.T + c.P[ki] - c.TP[ki]
        return tp, union, t


@dataclass
class OfficialImage:
    """One image's official counts by variant name, with what the name search did there: the image's labelled
    class ids and the heatmap files replaced by a later one of the same scored id (the first variant's)."""

    id: str
    class_ids: list[int]
    counts: dict[str, ImageCounts]
    replaced: list[tuple[int, str]]


def score_official_image(sample, m, ds, variants, cutoffs: np.ndarray,
                         class_ids_mode: str = "name-search") -> OfficialImage:
    """One (sample, measurement) scored for every variant as :func:`score_measurements` does (a measurement of
    None: an image without labelled classes). Scaled-out runs score each process's images with this and combine
    the results with :func:`collect_official`."""
    counts, replaced = {}, []
    for j, v in enumerate(variants):
        heat = v.heatmaps_of(m) if m is not None else None
        counts[v.name], rep = heatmap_counts(heat, sample.class_ids, sample.label, ds, cutoffs, class_ids_mode)
        if j == 0:
            replaced = rep
    return OfficialImage(sample.id, list(sample.class_ids), counts, replaced)


def collect_official(images: list[OfficialImage], ds, variants, class_ids_mode: str = "name-search"
                     ) -> tuple[dict[str, OfficialScored], dict]:
    """The per-image results of every image of the list, in list order (image k at position k), as
    :func:`score_measurements` returns them."""
    n_classes = len(ds.class_names) + 1
    acc = {v.name: OfficialScored([], [], n_classes) for v in variants}
    collisions, seen = [], set()
    for k, im in enumerate(images):
        seen.update(im.class_ids)
        for v in variants:
            acc[v.name].images.append(im.id)
            acc[v.name].counts.append(im.counts[v.name])
        collisions += [{"image": k, "id": im.id, "class_id": cid, "replaced_by": name.split("_", 1)[1][:-4]}
                       for cid, name in im.replaced]
    keys = [key for key, _ in ds.categories]
    remapped = {keys[c - 1]: {"own": c, "scored_as": resolve_class_id(keys[c - 1], ds.categories, class_ids_mode)}
                for c in sorted(seen)}
    return acc, {"scored_as_other_class": {w: v for w, v in remapped.items() if v["own"] != v["scored_as"]},
                 "replaced_heatmaps": collisions}


def check_official_labels(ds) -> None:
    if getattr(ds, "labels", None) != "official":
        raise ValueError(f"the official protocol reads labels as the authors do: load {ds.name!r} with "
                         "labels='official' (get_dataset(..., labels='official'))")


def score_measurements(pairs, ds, variants, class_ids_mode: str = "name-search",
                       steps=STEPS) -> tuple[dict[str, OfficialScored], dict]:
    """The official counts of each variant on every (sample, measurement) of ``pairs`` (a measurement of None: an
    image without labelled classes), consumed one image at a time (measurements are not kept). Labels must be
    read as the authors read them (``labels="official"``). Returns the scores by variant name and what the name
    search did, as :func:`score_heatmaps` reports it: the classes scored as another id, the heatmaps replaced."""
    check_official_labels(ds)
    cutoffs = level_cutoffs(steps)
    images = [score_official_image(sample, m, ds, variants, cutoffs, class_ids_mode) for sample, m in pairs]
    return collect_official(images, ds, variants, class_ids_mode)


def halves(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The cross-fitting split: ``n`` image indices in two halves (sorted; the first has n // 2), drawn by ``seed``."""
    if n < 2:
        raise ValueError(f"cross-fitting needs at least 2 images, got {n}; for the oracle column alone pass "
                         "heldout=None (--heldout none)")
    perm = np.random.default_rng([seed, 2506]).permutation(n)
    return np.sort(perm[: n // 2]), np.sort(perm[n // 2:])


def searched_index(counts: Counts, steps=STEPS) -> tuple[int, np.ndarray, list[list[int]]]:
    """Their binary search on ``counts``: (index into ``steps``, the mIoU curve in percent, the probes)."""
    steps = list(steps)
    curve = counts.miou_curve()
    best, probes = binary_search(curve, steps)
    return steps.index(best), curve, probes


def summarize_official(scored: dict[str, OfficialScored], class_names: list[str], heldout: bool = True,
                       n_boot: int = 1000, seed: int = 0, steps=STEPS) -> dict:
    """The paper's columns on real data, mIoU as a fraction: ``oracle``, their scoring with the threshold of their
    binary search on all scored images (the authors' protocol); ``grid_maximum``, the curve's maximum (labelled,
    not their result); with ``heldout``, the cross-fitted column: the images split in two halves by ``seed``
    (:func:`halves`), the threshold searched on one half scores the other and vice versa, and the P/T/TP counts of
    both scored halves pooled into one mIoU. Intervals: 95% bootstrap over images (thresholds fixed), paired with
    'uncalibrated' for the differences."""
    steps = list(steps)
    thresholds = [t / 100 for t in steps]
    first = next(iter(scored.values()))
    n = len(first.images)
    if n == 0:
        raise ValueError("no image was scored")
    split = halves(n, seed) if heldout else None
    names = ["background"] + list(class_names)
    chosen, out = {}, {"thresholds": thresholds, "variants": {}, "n_images": n,
                       "protocol": {"oracle": OFFICIAL, "heldout": CROSS_FITTED if heldout else None}}
    for name, sc in scored.items():
        k_or, curve, probes = searched_index(sc.total(), steps)
        top = float(curve.max())
        entry = {"oracle": {"threshold": thresholds[k_or], "protocol": OFFICIAL, "probes": probes},
                 "grid_maximum": {"miou": top / 100, "thresholds": [t for t, v in zip(thresholds, curve) if v == top],
                                  "note": "the curve's maximum over 0.01..0.99; the authors report the searched value"},
                 "curve": (curve / 100).tolist()}
        ks = {"oracle": np.full(n, k_or)}
        if split is not None:
            a, b = split
            ka, kb = searched_index(sc.total(a), steps)[0], searched_index(sc.total(b), steps)[0]
            ks["heldout"] = np.empty(n, np.int64)
            ks["heldout"][b], ks["heldout"][a] = ka, kb
            entry["heldout"] = {"threshold": [thresholds[ka], thresholds[kb]], "protocol": CROSS_FITTED,
                                "note": "threshold[0] searched on half A scores half B, threshold[1] the reverse"}
        chosen[name] = {which: sc.at(k) for which, k in ks.items()}
        out["variants"][name] = entry
    base = chosen.get("uncalibrated")
    for name, entry in out["variants"].items():
        for which, (tp, union, _) in chosen[name].items():
            entry[which]["miou"] = miou(tp.sum(0), union.sum(0), eps=IOU_EPS)
            paired = base is not None and name != "uncalibrated"
            bt, bu = (base[which][0], base[which][1]) if paired else (None, None)
            entry[which].update(bootstrap_miou(tp, union, n_boot, seed, bt, bu))
            if paired:
                entry[which]["minus_uncalibrated"] = entry[which]["miou"] - miou(bt.sum(0), bu.sum(0), eps=IOU_EPS)
        rep = "heldout" if "heldout" in chosen[name] else "oracle"
        tp, union, t = chosen[name][rep]
        itp, iun = tp.sum(0), union.sum(0)
        entry["per_class_iou"] = {names[c]: float(itp[c] / (iun[c] + IOU_EPS)) for c in range(len(names)) if iun[c] > 0}
        img, cls = np.nonzero(t[:, 1:])
        pairs = pd.DataFrame({"image": img, "class_id": cls + 1, "area": t[img, cls + 1], "i_0": tp[img, cls + 1],
                              "u_0": union[img, cls + 1]})
        entry["size_buckets"] = size_buckets(pairs, 0) if len(pairs) else []
        entry["reported_threshold"] = rep
    return out


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
        levels, replaced = merge_by_id([(f.path.name, scored_as[f.word], read_heatmap(f.path, label.shape))
                                        for f in fs])
        collisions += [{"image": k, "class_id": cid, "replaced_by": name} for cid, name in replaced]
        best, arg = combine(levels, label.shape)
        counts.add(image_counts(best, arg, label, ignore_index_of(ds), cutoffs))
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
