"""A deterministic detector of toy objects in an image: colour segmentation, connected
components, and shape classification by template IoU against the renderer's own shapes."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from .world import BACKGROUND_GREY, COLOURS, SHAPES, shape_mask


@dataclass(frozen=True)
class Detection:
    colour: str
    shape: str
    area: int
    iou: float  # template fit of the best shape
    cx: float
    cy: float
    mask: np.ndarray | None = field(default=None, compare=False, repr=False)  # (H, W) bool pixels of the component

    @property
    def phrase(self) -> str:
        return f"{self.colour} {self.shape}"


def colour_labels(image: np.ndarray, max_distance: float = 90.0) -> np.ndarray:
    """(H, W) ints: -1 background / unknown, k for the k-th palette colour (nearest, within max_distance
    and nearer than the background grey)."""
    img = image.astype(np.float64)
    palette = np.array(list(COLOURS.values()), dtype=np.float64)
    d = np.linalg.norm(img[:, :, None, :] - palette[None, None], axis=-1)  # (H, W, K)
    d_bg = np.linalg.norm(img - BACKGROUND_GREY, axis=-1)
    k = d.argmin(-1)
    best = d.min(-1)
    return np.where((best < max_distance) & (best < d_bg), k, -1)


def classify_shape(mask: np.ndarray, shapes: tuple[str, ...] = SHAPES) -> tuple[str, float, float, float]:
    """Best-fitting shape of a binary component: (shape, IoU, cx, cy), by a small search over centre
    offsets and radii around the component's bounding box."""
    ys, xs = np.nonzero(mask)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    pad = 3
    crop = mask[max(0, y0 - pad):y1 + pad, max(0, x0 - pad):x1 + pad]
    oy, ox = max(0, y0 - pad), max(0, x0 - pad)
    size = max(crop.shape)
    canvas = np.zeros((size, size), dtype=bool)
    canvas[:crop.shape[0], :crop.shape[1]] = crop
    bcx, bcy = (x0 + x1) / 2 - ox, (y0 + y1) / 2 - oy
    half = max(x1 - x0, y1 - y0) / 2
    best = ("", -1.0, 0.0, 0.0)
    for shape in shapes:
        for scale in (0.95, 1.05, 1.15, 1.25):
            r = half * scale
            for dy in (-0.1 * r, 0.0, 0.1 * r):
                tmpl = shape_mask(shape, bcx, bcy + dy, r, size)
                inter = (tmpl & canvas).sum()
                iou = inter / max(1, (tmpl | canvas).sum())
                if iou > best[1]:
                    best = (shape, float(iou), bcx + ox, bcy + dy + oy)
    return best


def detect(image: np.ndarray, min_area: int = 10) -> list[Detection]:
    """All coloured objects in ``image`` (H, W, 3) uint8, largest first."""
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) image, got shape {image.shape}")
    labels = colour_labels(image)
    out = []
    names = list(COLOURS)
    for k, name in enumerate(names):
        comp, n = ndimage.label(labels == k)
        for c in range(1, n + 1):
            m = comp == c
            area = int(m.sum())
            if area < min_area:
                continue
            shape, iou, cx, cy = classify_shape(m)
            out.append(Detection(name, shape, area, iou, cx, cy, m))
    return sorted(out, key=lambda d: -d.area)


MIN_IOU = 0.5  # template fit below which a component is not called a shape


def find(dets: list[Detection], colour: str | None, shape: str | None, min_iou: float = MIN_IOU) -> Detection | None:
    """The largest detection of ``shape`` (any shape when None) in ``colour`` (any colour when None)."""
    for d in dets:  # largest first
        if d.iou >= min_iou and (shape is None or d.shape == shape) and (colour is None or d.colour == colour):
            return d
    return None


def present(image: np.ndarray, objects: list[tuple[str | None, str]], min_iou: float = MIN_IOU) -> bool:
    """True when every (colour or None, shape) in ``objects`` is detected with template IoU >= min_iou."""
    dets = detect(image)
    return all(find(dets, c, s, min_iou) is not None for c, s in objects)
