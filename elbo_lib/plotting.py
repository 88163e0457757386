"""Pictures of heatmaps and masks (numpy in, uint8 RGB or matplotlib figures out)."""
from __future__ import annotations

import numpy as np


def heatmap_rgb(heat_hw: np.ndarray, cmap: str = "jet") -> np.ndarray:
    """A [0, 1] heatmap as an (H, W, 3) uint8 image."""
    import matplotlib
    rgba = matplotlib.colormaps[cmap](np.clip(heat_hw, 0, 1))
    return (rgba[..., :3] * 255).round().astype(np.uint8)


def overlay(image_rgb: np.ndarray, heat_hw: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Blend a heatmap over an image of the same size."""
    return (image_rgb.astype(np.float64) * (1 - alpha) + heatmap_rgb(heat_hw) * alpha).round().astype(np.uint8)


def palette(n: int) -> np.ndarray:
    """(n + 1, 3) uint8 colours: black for background, then tab20 colours."""
    import matplotlib
    cols = [(0, 0, 0)] + [tuple(int(255 * c) for c in matplotlib.colormaps["tab20"](i % 20)[:3]) for i in range(n)]
    return np.array(cols, dtype=np.uint8)


def mask_rgb(mask_hw: np.ndarray, n_classes: int) -> np.ndarray:
    """Label map (0 = background, i + 1 = class i) as colours."""
    mask_hw = np.asarray(mask_hw).astype(np.int64)
    if mask_hw.min() < 0 or mask_hw.max() > n_classes:
        raise ValueError(f"mask labels must lie in [0, {n_classes}], got [{mask_hw.min()}, {mask_hw.max()}]")
    return palette(n_classes)[mask_hw]


def result_figure(image_rgb: np.ndarray, result, threshold: float = 0.4, title: str = ""):
    """Image, raw and calibrated heatmaps per class, and both masks, in one matplotlib figure."""
    import matplotlib.pyplot as plt
    n = len(result.classes)
    fig, axes = plt.subplots(2, n + 2, figsize=(2.2 * (n + 2), 4.6), squeeze=False)
    for row, (maps, label, calibrated) in enumerate(((result.raw, "raw", False), (result.heatmaps, "calibrated", True))):
        axes[row, 0].imshow(image_rgb)
        axes[row, 0].set_title(label)
        for i, c in enumerate(result.classes):
            axes[row, i + 1].imshow(overlay(image_rgb, maps[i]))
            s = f" S={result.scores[i]:.2f}" if calibrated else ""
            axes[row, i + 1].set_title(f"{c}{s}", fontsize=8)
        axes[row, n + 1].imshow(mask_rgb(result.mask(threshold, calibrated), n))
        axes[row, n + 1].set_title(f"mask @ {threshold}", fontsize=8)
    for ax in axes.ravel():
        ax.axis("off")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def show_detections(ax, image_rgb: np.ndarray, detections, title: str = "", fontsize: int = 6) -> None:
    """An image with a box and a 'colour shape' label per toy-detector detection."""
    from matplotlib.patches import Rectangle
    ax.imshow(image_rgb)
    for d in detections:
        ys, xs = np.nonzero(d.mask)
        ax.add_patch(Rectangle((xs.min() - 0.5, ys.min() - 0.5), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1,
                               fill=False, lw=0.8, ec="white"))
        ax.text(xs.min(), ys.min() - 1, d.phrase, color="white", fontsize=fontsize, va="bottom",
                bbox=dict(fc="black", alpha=0.5, pad=0.5, lw=0))
    ax.set_title(title, fontsize=fontsize + 1)
    ax.axis("off")
