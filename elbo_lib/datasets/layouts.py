"""Datasets in their usual on-disk layouts (given ``data_root``), a generic folder, and the toy world.

| name | layout under data_root | labels |
|---|---|---|
| voc | VOCdevkit/VOC2012/{JPEGImages,SegmentationClass,ImageSets/Segmentation/val.txt} | 0 bg, 1-20, 255 ignore |
| context | VOCdevkit/VOC2010/{JPEGImages,SegmentationClassContext,ImageSets/SegmentationContext/val.txt} | 0 bg, 1-59 |
| coco-object | coco_object/{images,annotations}/val2017/*.{jpg,png} | 0 bg, 1-80, 255 ignore |
| ade20k | ADEChallengeData2016/{images,annotations}/validation/*.{jpg,png} | 0 unlabelled (ignored), 1-150 |
| folder | images/*, masks/*.png (same stem), classes.txt, optional captions.json | 0 bg, k = line k |
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..toy.study import STUDIES, eval_split, in_target_colour, study_set
from ..toy.world import COLOURS, SHAPES
from .base import Sample, SegmentationDataset, present_ids, read_class_file, read_label, read_rgb

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def _need_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise FileNotFoundError(f"{what}: no directory {path}")
    return path


class _ListedDataset(SegmentationDataset):
    """Images and label PNGs paired by stem, in a fixed order."""

    def __init__(self, image_dir: Path, label_dir: Path, stems: list[str], image_ext: str, label_offset: int = 0):
        self.image_dir, self.label_dir, self._stems, self.image_ext = image_dir, label_dir, stems, image_ext
        self.label_offset = label_offset

    @property
    def ids(self) -> list[str]:
        return self._stems

    def load(self, i: int) -> Sample:
        stem = self._stems[i]
        img = read_rgb(self.image_dir / f"{stem}{self.image_ext}")
        lab = read_label(self.label_dir / f"{stem}.png", len(self.class_names), self.ignore_index, self.label_offset)
        if not self.has_background:
            lab = np.where(lab == 0, self.ignore_index, lab)
        if lab.shape != img.shape[:2]:
            raise ValueError(f"label map {self.label_dir / (stem + '.png')} is {lab.shape}, image is {img.shape[:2]}")
        return Sample(stem, img, lab, present_ids(lab, self.ignore_index))


def _stems_from_list(path: Path) -> list[str]:
    if not path.exists():
        raise FileNotFoundError(f"missing split list {path}")
    return [ln.strip() for ln in path.read_text().splitlines() if ln.strip()]


class _VOCStyle(_ListedDataset):
    """VOCdevkit layouts: JPEGImages, a label folder and an ImageSets split list."""

    year_dir = label_dir = list_dir = class_file = title = ""

    def __init__(self, data_root: str | Path, split: str = "val"):
        root = _need_dir(Path(data_root) / "VOCdevkit" / self.year_dir, self.title)
        self.class_names = read_class_file(self.class_file)
        super().__init__(root / "JPEGImages", root / self.label_dir,
                         _stems_from_list(root / "ImageSets" / self.list_dir / f"{split}.txt"), ".jpg")


class VOC2012(_VOCStyle):
    name, title, year_dir, label_dir, list_dir, class_file = (
        "voc", "PASCAL VOC 2012", "VOC2012", "SegmentationClass", "Segmentation", "voc")


class PascalContext(_VOCStyle):
    name, title, year_dir, label_dir, list_dir, class_file = (
        "context", "PASCAL Context", "VOC2010", "SegmentationClassContext", "SegmentationContext", "pascal_context")


class _GlobbedDataset(_ListedDataset):
    """<data_root>/<folder>/{images,annotations}/<split>/: every label PNG with its image."""

    folder: str
    class_file: str
    split: str
    image_ext = ".jpg"

    def __init__(self, data_root: str | Path, split: str | None = None):
        self.class_names = read_class_file(self.class_file)
        root = Path(data_root) / self.folder
        image_dir, label_dir = root / "images" / (split or self.split), root / "annotations" / (split or self.split)
        _need_dir(image_dir, self.name)
        _need_dir(label_dir, self.name)
        stems = sorted(p.stem for p in label_dir.glob("*.png"))
        if not stems:
            raise FileNotFoundError(f"{self.name}: no label PNGs in {label_dir}")
        super().__init__(image_dir, label_dir, stems, self.image_ext)


class COCOObject(_GlobbedDataset):
    name, folder, class_file, split = "coco-object", "coco_object", "coco_object", "val2017"


class ADE20K(_GlobbedDataset):
    name, folder, class_file, split = "ade20k", "ADEChallengeData2016", "ade20k", "validation"
    has_background = False


class FolderDataset(SegmentationDataset):
    """A user's own data: images/, masks/ (index PNGs, same stem), classes.txt, optional captions.json."""

    name = "folder"

    def __init__(self, root: str | Path):
        root = _need_dir(Path(root), "folder dataset")
        cls = root / "classes.txt"
        if not cls.exists():
            raise FileNotFoundError(f"folder dataset: missing {cls} (one class phrase per line; line k is label k)")
        self.class_names = [ln.strip() for ln in cls.read_text().splitlines() if ln.strip()]
        self.image_dir, self.mask_dir = _need_dir(root / "images", "folder dataset"), _need_dir(root / "masks", "folder dataset")
        self.images = {p.stem: p for p in sorted(self.image_dir.iterdir()) if p.suffix.lower() in IMAGE_EXTS}
        if not self.images:
            raise FileNotFoundError(f"folder dataset: no images in {self.image_dir}")
        cap = root / "captions.json"
        self.captions = json.loads(cap.read_text()) if cap.exists() else {}

    @property
    def ids(self) -> list[str]:
        return list(self.images)

    def load(self, i: int) -> Sample:
        stem = self.ids[i]
        img = read_rgb(self.images[stem])
        lab = read_label(self.mask_dir / f"{stem}.png", len(self.class_names), self.ignore_index)
        if lab.shape != img.shape[:2]:
            raise ValueError(f"mask {self.mask_dir / (stem + '.png')} is {lab.shape}, image is {img.shape[:2]}")
        return Sample(stem, img, lab, present_ids(lab, self.ignore_index), self.captions.get(stem))


TARGET_COLOUR_STUDY = "distractors-in-target-colour"  # the distractor study with the copies in the target's colour


class ToyDataset(SegmentationDataset):
    """A toy split (``toy-val``, ``toy-test``) or Fig. 1 study set (``toy-study-smaller`` ...), with the
    scene captions; global classes are all colour-shape phrases."""

    ignore_index = 255

    def __init__(self, name: str = "toy-test", n: int | None = None, cache_dir: Path | None = None):
        self.name = name
        self.study_label = TARGET_COLOUR_STUDY if name == f"toy-study-{TARGET_COLOUR_STUDY}" else None
        self.class_names = [f"{c} {s}" for s in SHAPES for c in COLOURS]
        if name == f"toy-study-{TARGET_COLOUR_STUDY}":
            self.items = in_target_colour(study_set("distractors", n or 40, cache_dir=cache_dir))
        elif name.startswith("toy-study-"):
            study = name[len("toy-study-"):]
            if study not in STUDIES:
                raise ValueError(f"unknown toy study {study!r}; choose from {list(STUDIES) + [TARGET_COLOUR_STUDY]}")
            self.items = study_set(study, n or 40, cache_dir=cache_dir)
        else:
            self.items = eval_split(name, n or 300, cache_dir=cache_dir)

    @property
    def ids(self) -> list[str]:
        return [it.id for it in self.items]

    def load(self, i: int) -> Sample:
        it = self.items[i]
        gid = {c: self.class_names.index(c) + 1 for c in it.classes}
        lab = np.zeros(it.image.shape[:2], dtype=np.int64)
        for c in it.classes:
            lab[it.scene.class_mask(c)] = gid[c]
        meta = {"study": self.study_label or it.study, "level": it.level, "knob": it.knob, "target": it.target}
        ids = [gid[c] for c in it.classes if (lab == gid[c]).any()]
        return Sample(it.id, it.image, lab, ids, it.caption, meta)  # the caption may name fully hidden objects too


DATASETS = {"voc": VOC2012, "context": PascalContext, "coco-object": COCOObject, "ade20k": ADE20K}


def get_dataset(name: str, data_root: str | Path | None = None, cache_dir: Path | None = None) -> SegmentationDataset:
    """A dataset by name: toy splits/studies, the four real datasets (need ``data_root``), or
    ``folder:<path>``."""
    if name.startswith("toy-"):
        return ToyDataset(name, cache_dir=cache_dir)
    if name.startswith("folder:"):
        return FolderDataset(name[len("folder:"):])
    if name in DATASETS:
        if data_root is None:
            raise ValueError(f"dataset {name!r} needs --data-root (the directory holding its usual layout)")
        return DATASETS[name](data_root)
    raise ValueError(f"unknown dataset {name!r}; choose from toy-val, toy-test, toy-study-<smaller|occluded|"
                     f"distractors|rare|{TARGET_COLOUR_STUDY}>, {', '.join(DATASETS)}, folder:<path>")
