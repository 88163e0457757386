"""One interface for segmentation datasets: image, class phrases present, caption or None,
label map over the dataset's global classes (0 = background), ignore index; the class words
(the authors' category keys or the project's names) and the label-file readers."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..paths import REPO_ROOT

CLASS_DIR = REPO_ROOT / "data" / "classes"
OFFICIAL_CLASS_FILE = CLASS_DIR / "official.json"
CLASS_WORDS = ("official", "project")  # the authors' category keys (their prompts) or the project's class names


@dataclass
class Sample:
    id: str
    image: np.ndarray          # (H, W, 3) uint8
    label: np.ndarray          # (H, W) ints: 0 background, k for class_names[k - 1], ignore_index ignored
    class_ids: list[int]       # global ids (>= 1) present in the label map, in evaluation order
    caption: str | None = None
    meta: dict | None = None


class SegmentationDataset:
    """Base class: ``class_names`` (global, without background), ``ignore_index``, ``ids`` and ``load``."""

    name: str = "dataset"
    ignore_index: int = 255
    class_names: list[str] = []
    has_background: bool = True  # False where label 0 means "unlabelled" (ADE20K): 0 is then ignored

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def ids(self) -> list[str]:
        raise NotImplementedError

    def load(self, i: int) -> Sample:
        raise NotImplementedError

    def phrases(self, class_ids: list[int]) -> list[str]:
        return [self.class_names[k - 1] for k in class_ids]

    def __iter__(self):
        for i in range(len(self)):
            yield self.load(i)


def read_class_file(name: str, synonyms: bool = True) -> list[str]:
    """Class names shipped in data/classes/<name>.txt, with data/classes/synonyms.json applied."""
    path = CLASS_DIR / f"{name}.txt"
    if not path.exists():
        raise FileNotFoundError(f"no class list {path}")
    names = [ln.strip() for ln in path.read_text().splitlines() if ln.strip()]
    if synonyms:
        syn = json.loads((CLASS_DIR / "synonyms.json").read_text())
        names = [syn.get(n, n) for n in names]
    return names


def official_categories(dataset: str) -> list[tuple[str, list[str]]]:
    """The authors' categories of ``dataset`` (voc, context, coco-object, ade20k) in class-id order:
    (key, synonyms) from their metadata/<dataset>/info.yaml, shipped in data/classes/official.json.
    The key is the class word of their prompts and heatmap file names."""
    table = json.loads(OFFICIAL_CLASS_FILE.read_text())["datasets"]
    if dataset not in table:
        raise ValueError(f"no official categories for dataset {dataset!r}; "
                         f"{OFFICIAL_CLASS_FILE.name} has {sorted(table)}")
    return [(c["key"], list(c["synonyms"])) for c in table[dataset]["categories"]]


def read_image_list(path: str | Path) -> list[str]:
    """Image names, one a line (as the authors' val_id.txt); the line index is the image index ``k``
    of their heatmap files. Blank lines inside the list and repeated names are errors."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no image list file {path} (one image name a line)")
    lines = path.read_text().splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    names = [ln.strip() for ln in lines]
    if not names:
        raise ValueError(f"image list {path} is empty")
    if "" in names:
        raise ValueError(f"image list {path}: line {names.index('') + 1} is blank (one image name a line)")
    seen: set[str] = set()
    for i, n in enumerate(names):
        if n in seen:
            raise ValueError(f"image list {path}: {n!r} repeats at line {i + 1}")
        seen.add(n)
    return names


def read_rgb(path: str | Path) -> np.ndarray:
    """(H, W, 3) uint8 from an image file; a missing, non-image or truncated file is an error saying which."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no image file at {path}")
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except UnidentifiedImageError as e:
        raise ValueError(f"{path} is not an image PIL can read (PNG, JPEG, ...)") from e
    except Exception as e:  # PIL raises OSError and others for corrupt files
        raise ValueError(f"{path} is corrupt or truncated: {e}") from e


def label_table(pairs: dict[int, int]) -> np.ndarray:
    """A raw-value lookup for :func:`read_label`: 256 entries, ``pairs`` {raw: label id}, -1 (not allowed) elsewhere."""
    lut = np.full(256, -1, dtype=np.int64)
    for raw, val in pairs.items():
        lut[raw] = val
    return lut


def _spans(values: np.ndarray) -> str:
    """'0..20, 255' for the sorted values [0, 1, ..., 20, 255]."""
    values = [int(v) for v in values]
    spans, start = [], 0
    for i in range(1, len(values) + 1):
        if i == len(values) or values[i] != values[i - 1] + 1:
            lo, hi = values[start], values[i - 1]
            spans.append(str(lo) if lo == hi else f"{lo}..{hi}")
            start = i
    return ", ".join(spans)


def read_label(path: Path, n_classes: int, ignore_index: int, lut: np.ndarray | None = None) -> np.ndarray:
    """An index-PNG label map; ids must be in [0, n_classes] or ignore_index. ``lut`` (from :func:`label_table`)
    first maps the raw 8-bit values of a dataset's own convention (a raw value it does not allow is an error)."""
    if not path.exists():
        raise FileNotFoundError(f"missing label file {path}")
    try:
        with Image.open(path) as im:
            raw = np.asarray(im)
    except Exception as e:
        raise ValueError(f"cannot read label map {path}: {e}") from e
    if raw.ndim != 2:
        raise ValueError(f"label map {path} must be a single-channel index image, got shape {raw.shape}")
    if lut is not None:
        if raw.dtype != np.uint8:
            raise ValueError(f"label map {path} must be an 8-bit index image, got {raw.dtype} values")
        lab = lut[raw]
        if (lab < 0).any():
            raise ValueError(f"label map {path} has values {np.unique(raw[lab < 0]).tolist()} outside this "
                             f"dataset's convention (allowed {_spans(np.flatnonzero(lut >= 0))})")
    else:
        lab = raw.astype(np.int64)
    bad = np.setdiff1d(np.unique(lab), np.r_[np.arange(0, n_classes + 1), ignore_index])
    if bad.size:
        raise ValueError(f"label map {path} has ids {bad.tolist()} outside the {n_classes} classes "
                         f"(allowed 0..{n_classes} and ignore {ignore_index})")
    return lab


def present_ids(label: np.ndarray, ignore_index: int) -> list[int]:
    return [int(k) for k in np.unique(label) if k != 0 and k != ignore_index]
