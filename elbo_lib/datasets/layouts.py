"""Datasets in their usual on-disk layouts (given ``data_root``), a generic folder, and the toy world.

Where the four real datasets are looked for under ``data_root`` (the authors' layout first; the first
folder present is used and ``label_dir`` records which), and the default image list:

- voc: VOCdevkit/VOC2012/JPEGImages, labels {name}.png in SegmentationClassAug or SegmentationClass;
  list ImageSets/Segmentation/val.txt
- context: VOCdevkit/VOC2010/JPEGImages, labels SegmentationClassContext/{name}.png;
  list ImageSets/SegmentationContext/val.txt
- coco-object: coco_stuff164k/{images,annotations}/val2017 with labels {name}_labelTrainIds.png, or
  coco_object/{images,annotations}/val2017 with labels {name}.png already converted to objects 0..80; every label file
- ade20k: ade/ADEChallengeData2016 or ADEChallengeData2016, {images,annotations}/validation; every label file
- folder: images/*, masks/*.png (same stem), classes.txt, optional captions.json; every image

``image_list`` (one name a line, as the authors' val_id.txt) replaces the default list and fixes the
image order. Label ids after reading, by ``labels=`` ("project"; "official": the authors' evaluate_segmentation.py):

- voc: raw 0 background, 1..20, 255 void; both readings ignore 255
- context: raw 0 background, 1..59; project ignores 255, official refuses it (the authors would not ignore it)
- coco-object from coco_stuff164k: raw 0..79 objects, 80..181 stuff, 255 unlabelled. Project: objects 1..80,
  stuff 0, 255 ignored. Official: uint8 raw + 1 (255 wraps to 0), then ids > 80 -> 0 (stuff and unlabelled
  are background). From coco_object: 0 background, 1..80, 255 ignored; no official reading (needs the trainIds)
- ade20k: raw 0 unlabelled, 1..150; project ignores 0, official scores it as background

Class words (``class_words=``): "official", the authors' category keys (data/classes/official.json, the
words of their prompts), or "project", the project's names (data/classes/<file>.txt with synonyms.json).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..toy.study import STUDIES, eval_split, in_target_colour, study_set
from ..toy.world import COLOURS, SHAPES
from .base import (CLASS_WORDS, Sample, SegmentationDataset, label_table, official_categories, present_ids,
                   read_class_file, read_image_list, read_label, read_rgb)

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
LABEL_READINGS = ("project", "official")  # whose label convention: the project's or the authors' evaluation


def _need_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise FileNotFoundError(f"{what}: no directory {path}")
    return path


def _first_dir(root: Path, candidates: tuple[str, ...], what: str) -> Path:
    """The first of ``candidates`` (paths under ``root``) that is a directory; none is an error naming them all."""
    for c in candidates:
        if (root / c).is_dir():
            return root / c
    raise FileNotFoundError(f"{what}: none of {', '.join(str(root / c) for c in candidates)} is a directory")


def _choice(name: str, value: str, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {list(allowed)}, got {value!r}")
    return value


class _ListedDataset(SegmentationDataset):
    """Images and label PNGs paired by name, in a fixed order; ``lut`` maps raw label values (see read_label)."""

    def __init__(self, image_dir: Path, label_dir: Path, stems: list[str], image_ext: str,
                 label_suffix: str = ".png", lut: np.ndarray | None = None):
        self.image_dir, self.label_dir, self._stems, self.image_ext = image_dir, label_dir, stems, image_ext
        self.label_suffix, self.lut = label_suffix, lut

    @property
    def ids(self) -> list[str]:
        return self._stems

    def image_path(self, i: int) -> Path:
        return self.image_dir / f"{self._stems[i]}{self.image_ext}"

    def label_path(self, i: int) -> Path:
        return self.label_dir / f"{self._stems[i]}{self.label_suffix}"

    def label(self, i: int) -> np.ndarray:
        """The label map of image ``i`` alone (no image decoding)."""
        return read_label(self.label_path(i), len(self.class_names), self.ignore_index, self.lut)

    def load(self, i: int) -> Sample:
        img = read_rgb(self.image_path(i))
        lab = self.label(i)
        if lab.shape != img.shape[:2]:
            raise ValueError(f"label map {self.label_path(i)} is {lab.shape}, image is {img.shape[:2]}")
        return Sample(self._stems[i], img, lab, present_ids(lab, self.ignore_index))


def _stems_from_list(path: Path, title: str) -> list[str]:
    if not path.exists():
        raise FileNotFoundError(f"{title}: no split list {path}; give an image list instead (--image-list, "
                                "one name a line, e.g. the authors' metadata/<dataset>/val_id.txt)")
    return read_image_list(path)


def _stems_from_labels(label_dir: Path, suffix: str, title: str) -> list[str]:
    stems = sorted(p.name[:-len(suffix)] for p in label_dir.glob(f"*{suffix}"))
    if not stems:
        raise FileNotFoundError(f"{title}: no label files *{suffix} in {label_dir}")
    return stems


class _RealDataset(_ListedDataset):
    """One of the four benchmark datasets: ``class_words`` "official" (the authors' keys) or "project";
    ``labels`` "project" or "official" (how label files are read, see the module table); ``image_list``
    a file of image names (default: the full validation split)."""

    title = class_file = ""
    image_ext = ".jpg"

    def __init__(self, data_root: str | Path, split: str | None = None, image_list: str | Path | None = None,
                 labels: str = "project", class_words: str = "official"):
        self.labels = _choice("labels", labels, LABEL_READINGS)
        self.class_words = _choice("class_words", class_words, CLASS_WORDS)
        self.categories = official_categories(self.name)
        self.class_names = ([k for k, _ in self.categories] if class_words == "official"
                            else read_class_file(self.class_file))
        image_dir, label_dir, suffix, lut, default_stems = self._layout(Path(data_root), split)
        stems = read_image_list(image_list) if image_list is not None else default_stems()
        super().__init__(_need_dir(image_dir, self.title), _need_dir(label_dir, self.title), stems, self.image_ext,
                         suffix, lut)

    def _layout(self, root: Path, split: str | None):
        """(image dir, label dir, label file suffix, raw-value table, a callable giving the default names)."""
        raise NotImplementedError


def _identity(n: int, ignore: int | None = 255) -> np.ndarray:
    return label_table({**{k: k for k in range(n + 1)}, **({} if ignore is None else {ignore: ignore})})


class _VOCStyle(_RealDataset):
    """VOCdevkit layouts: JPEGImages, a label folder and an ImageSets split list."""

    year_dir = list_dir = ""
    label_dirs: tuple[str, ...] = ()

    def _layout(self, root: Path, split: str | None):
        base = _need_dir(root / "VOCdevkit" / self.year_dir, self.title)
        label_dir = _first_dir(base, self.label_dirs, self.title)
        split_list = base / "ImageSets" / self.list_dir / f"{split or 'val'}.txt"
        return (base / "JPEGImages", label_dir, ".png", self._lut(),
                lambda: _stems_from_list(split_list, self.title))

    def _lut(self) -> np.ndarray:
        return _identity(len(self.class_names))


class VOC2012(_VOCStyle):
    name, title, year_dir, list_dir, class_file = "voc", "PASCAL VOC 2012", "VOC2012", "Segmentation", "voc"
    label_dirs = ("SegmentationClassAug", "SegmentationClass")


class PascalContext(_VOCStyle):
    name, title, year_dir, list_dir, class_file = (
        "context", "PASCAL Context", "VOC2010", "SegmentationContext", "pascal_context")
    label_dirs = ("SegmentationClassContext",)

    def _lut(self) -> np.ndarray:  # the authors' evaluation does not ignore 255: refuse it rather than count it
        return _identity(len(self.class_names), None if self.labels == "official" else 255)


class COCOObject(_RealDataset):
    """COCO objects: the authors' coco_stuff164k trainIds files, or labels already converted to 0..80."""

    name, title, class_file = "coco-object", "COCO-Object", "coco_object"

    def _layout(self, root: Path, split: str | None):
        base = _first_dir(root, ("coco_stuff164k", "coco_object"), self.title)
        image_dir, label_dir = base / "images" / (split or "val2017"), base / "annotations" / (split or "val2017")
        if base.name == "coco_stuff164k":
            suffix = "_labelTrainIds.png"
            raw = [*range(182), 255]
            if self.labels == "official":  # uint8 gt + 1 (255 wraps to 0), then ids > 80 -> 0
                lut = label_table({r: (r + 1) % 256 if (r + 1) % 256 <= 80 else 0 for r in raw})
            else:  # objects 1..80, stuff background, unlabelled ignored
                lut = label_table({r: r + 1 if r < 80 else (255 if r == 255 else 0) for r in raw})
        else:
            if self.labels == "official":
                raise ValueError(f"{self.title}: the official label reading needs the authors' files "
                                 "coco_stuff164k/annotations/val2017/*_labelTrainIds.png; "
                                 f"{base} holds converted labels")
            suffix, lut = ".png", _identity(80)
        _need_dir(label_dir, self.title)
        return image_dir, label_dir, suffix, lut, lambda: _stems_from_labels(label_dir, suffix, self.title)


class ADE20K(_RealDataset):
    name, title, class_file = "ade20k", "ADE20K", "ade20k"

    def _layout(self, root: Path, split: str | None):
        base = _first_dir(root, ("ade/ADEChallengeData2016", "ADEChallengeData2016"), self.title)
        image_dir, label_dir = base / "images" / (split or "validation"), base / "annotations" / (split or "validation")
        self.has_background = self.labels == "official"  # project: 0 (unlabelled) ignored; official: background
        lut = label_table({0: 0 if self.has_background else 255, **{k: k for k in range(1, 151)}})
        _need_dir(label_dir, self.title)
        return image_dir, label_dir, ".png", lut, lambda: _stems_from_labels(label_dir, ".png", self.title)


class FolderDataset(SegmentationDataset):
    """A user's own data: images/, masks/ (index PNGs, same stem), classes.txt, optional captions.json."""

    name = "folder"

    def __init__(self, root: str | Path):
        root = _need_dir(Path(root), "folder dataset")
        cls = root / "classes.txt"
        if not cls.exists():
            raise FileNotFoundError(f"folder dataset: missing {cls} (one class phrase per line; line k is label k)")
        self.class_names = [ln.strip() for ln in cls.read_text().splitlines() if ln.strip()]
        self.image_dir = _need_dir(root / "images", "folder dataset")
        self.mask_dir = _need_dir(root / "masks", "folder dataset")
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

    @classmethod
    def pooled(cls, names: list[str], n: int | None = None, cache_dir: Path | None = None) -> "ToyDataset":
        """The toy splits ``names`` (first ``n`` images of each) as one dataset named ``a+b+...``: one held-out
        evaluation over all their images (its threshold split stays toy-val)."""
        if len(names) < 2 or len(set(names)) < len(names) or "toy-val" in names:
            raise ValueError(f"pool two or more distinct toy splits other than toy-val (the threshold split), "
                             f"got {names}")
        parts = [cls(nm, n, cache_dir) for nm in names]
        if any(p.study_label or nm.startswith("toy-study-") for p, nm in zip(parts, names)):
            raise ValueError(f"pool evaluation splits (toy-test, toy-fresh-<k>), not study sets: {names}")
        pool = parts[0]
        pool.name = "+".join(names)
        pool.items = [it for p in parts for it in p.items]
        return pool

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
AUTHORS_NAMES = {"voc": "voc", "context": "context", "coco-object": "coco", "ade20k": "ade20k"}  # their metadata/<name>


def authors_image_list(metadata_dir: str | Path | None, name: str) -> Path | None:
    """The authors' image list of a real dataset in a copy of their ``metadata`` folder (VCG-team/elbo-t2ialign):
    ``<metadata_dir>/<their name>/val_id.txt`` (coco-object: ``coco``). None for ``metadata_dir`` None or a toy
    or folder dataset; a missing file is an error naming it."""
    if metadata_dir is None or name not in DATASETS:
        return None
    path = Path(metadata_dir) / AUTHORS_NAMES[name] / "val_id.txt"
    if not path.is_file():
        raise FileNotFoundError(f"no image list {path} for {name} (image lists: a folder laid out as the authors' "
                                f"metadata/, {'/'.join(AUTHORS_NAMES.values())} each holding val_id.txt)")
    return path


def get_dataset(name: str, data_root: str | Path | None = None, cache_dir: Path | None = None,
                image_list: str | Path | None = None, labels: str | None = None,
                class_words: str | None = None) -> SegmentationDataset:
    """A dataset by name: toy splits/studies, the four real datasets (need ``data_root``; ``image_list``,
    ``labels`` and ``class_words`` as in the module table, None for the defaults), or ``folder:<path>``."""
    if name in DATASETS:
        if data_root is None:
            raise ValueError(f"dataset {name!r} needs --data-root (the directory holding its usual layout)")
        kw = {k: v for k, v in (("labels", labels), ("class_words", class_words)) if v is not None}
        return DATASETS[name](data_root, image_list=image_list, **kw)
    given = [opt for opt, v in (("an image list", image_list), ("labels", labels), ("class_words", class_words))
             if v is not None]
    if given and (name.startswith("toy-") or name.startswith("folder:")):
        raise ValueError(f"{' and '.join(given)} apply to {', '.join(DATASETS)} only, not to {name!r}")
    if name.startswith("toy-"):
        return ToyDataset(name, cache_dir=cache_dir)
    if name.startswith("folder:"):
        return FolderDataset(name[len("folder:"):])
    raise ValueError(f"unknown dataset {name!r}; choose from toy-val, toy-test, toy-fresh-<k>, toy-study-<smaller|occluded|"
                     f"distractors|rare|{TARGET_COLOUR_STUDY}>, {', '.join(DATASETS)}, folder:<path>")
