"""Tiny dataset trees in each supported on-disk layout, generated from toy scenes (no downloads)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from elbo_lib.toy.world import WorldConfig, sample_scene


def _scenes(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    return [sample_scene(WorldConfig(n_objects=(0, 0.5, 0.5, 0, 0)), rng) for _ in range(n)]


def _label(scene, ids: list[int], ignore_border: bool) -> np.ndarray:
    lab = np.zeros(scene.instances.shape, dtype=np.uint8)
    for k in range(len(scene.objects)):
        lab[scene.instances == k + 1] = ids[k % len(ids)]
    if ignore_border:
        lab[0, :] = 255
    return lab


def make_tree(root: Path, layout: str, n: int = 4) -> Path:
    scenes = _scenes(n)
    if layout == "voc":
        base = root / "VOCdevkit" / "VOC2012"
        img_dir, lab_dir, lst = base / "JPEGImages", base / "SegmentationClass", base / "ImageSets" / "Segmentation" / "val.txt"
        ids, ext = [8, 12, 15], ".jpg"
    elif layout == "context":
        base = root / "VOCdevkit" / "VOC2010"
        img_dir, lab_dir = base / "JPEGImages", base / "SegmentationClassContext"
        lst = base / "ImageSets" / "SegmentationContext" / "val.txt"
        ids, ext = [15, 47, 53], ".jpg"
    elif layout == "coco-object":
        img_dir, lab_dir, lst = root / "coco_object" / "images" / "val2017", root / "coco_object" / "annotations" / "val2017", None
        ids, ext = [1, 16, 17], ".jpg"
    elif layout == "ade20k":
        base = root / "ADEChallengeData2016"
        img_dir, lab_dir, lst = base / "images" / "validation", base / "annotations" / "validation", None
        ids, ext = [3, 5, 13], ".jpg"
    elif layout == "folder":
        img_dir, lab_dir, lst = root / "images", root / "masks", None
        ids, ext = [1, 2, 3], ".png"
        root.mkdir(parents=True, exist_ok=True)
        (root / "classes.txt").write_text("red thing\nblue thing\ngreen thing\n")
        (root / "captions.json").write_text(json.dumps({"img_0000": "a photo of a red thing and a blue thing and a green thing"}))
    else:
        raise ValueError(layout)
    img_dir.mkdir(parents=True, exist_ok=True)
    lab_dir.mkdir(parents=True, exist_ok=True)
    stems = []
    for i, s in enumerate(scenes):
        stem = f"img_{i:04d}"
        stems.append(stem)
        Image.fromarray(s.image).save(img_dir / f"{stem}{ext}", quality=95)
        Image.fromarray(_label(s, ids, ignore_border=layout in ("voc", "coco-object"))).save(lab_dir / f"{stem}.png")
    if lst is not None:
        lst.parent.mkdir(parents=True, exist_ok=True)
        lst.write_text("\n".join(stems) + "\n")
    return root
