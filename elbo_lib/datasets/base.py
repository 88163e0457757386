"""One interface for segmentation datasets: image, class phrases present, caption or None,
label map over the dataset's global classes (0 = background), ignore index."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..paths import REPO_ROOT

CLASS_DIR = REPO_ROOT / "data" / "classes"


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


def read_label(path: Path, n_classes: int, ignore_index: int, offset: int = 0) -> np.ndarray:
    """An index-PNG label map; ids must be in [0, n_classes] or ignore_index (after ``offset``)."""
    if not path.exists():
        raise FileNotFoundError(f"missing label file {path}")
    try:
        with Image.open(path) as im:
            lab = np.asarray(im).astype(np.int64)
    except Exception as e:
        raise ValueError(f"cannot read label map {path}: {e}") from e
    if lab.ndim != 2:
        raise ValueError(f"label map {path} must be a single-channel index image, got shape {lab.shape}")
    lab = lab + offset
    bad = np.setdiff1d(np.unique(lab), np.r_[np.arange(0, n_classes + 1), ignore_index])
    if bad.size:
        raise ValueError(f"label map {path} has ids {bad.tolist()} outside the {n_classes} classes "
                         f"(allowed 0..{n_classes} and ignore {ignore_index})")
    return lab


def present_ids(label: np.ndarray, ignore_index: int) -> list[int]:
    return [int(k) for k in np.unique(label) if k != 0 and k != ignore_index]
