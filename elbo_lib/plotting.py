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


BACKGROUND = "background"
BACKGROUND_RGB = (0, 0, 0)


def palette(n: int) -> np.ndarray:
    """(n + 1, 3) uint8 colours, the one palette of every mask picture: black for background, then one colour per
    class (tab10 up to 10 classes, tab20 up to 20, evenly spaced turbo colours beyond, so none repeats)."""
    import matplotlib
    if n <= 10:
        cols = [matplotlib.colormaps["tab10"](i) for i in range(n)]
    elif n <= 20:
        cols = [matplotlib.colormaps["tab20"](i) for i in range(n)]
    else:
        cols = [matplotlib.colormaps["turbo"](x) for x in np.linspace(0.05, 0.95, n)]
    rgb = [BACKGROUND_RGB] + [tuple(int(round(255 * c)) for c in col[:3]) for col in cols]
    return np.array(rgb, dtype=np.uint8)


def legend(classes: list[str]) -> list[dict]:
    """The key of a mask picture: one entry per mask value (0 background, i + 1 classes[i]) with its RGB colour."""
    cols = palette(len(classes))
    return [{"mask_value": k, "label": label, "rgb": [int(x) for x in cols[k]]}
            for k, label in enumerate([BACKGROUND, *classes])]


def mask_rgb(mask_hw: np.ndarray, n_classes: int) -> np.ndarray:
    """Label map (0 = background, i + 1 = class i) as colours."""
    mask_hw = np.asarray(mask_hw).astype(np.int64)
    if mask_hw.min() < 0 or mask_hw.max() > n_classes:
        raise ValueError(f"mask labels must lie in [0, {n_classes}], got [{mask_hw.min()}, {mask_hw.max()}]")
    return palette(n_classes)[mask_hw]


def mask_overlay(image_rgb: np.ndarray, mask_hw: np.ndarray, n_classes: int, alpha: float = 0.6) -> np.ndarray:
    """The mask's class colours blended over the image; background pixels show the image, dimmed."""
    img = image_rgb.astype(np.float64)
    blend = img * (1 - alpha) + mask_rgb(mask_hw, n_classes) * alpha
    return np.where(np.asarray(mask_hw)[..., None] > 0, blend, img * 0.5).round().astype(np.uint8)


def add_legend(ax, classes: list[str], fontsize: float = 7) -> None:
    """The mask key (class name -> colour, and background) below ``ax``."""
    from matplotlib.patches import Patch
    handles = [Patch(facecolor=np.array(e["rgb"]) / 255, edgecolor="grey", label=e["label"]) for e in legend(classes)]
    ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.02), fontsize=fontsize, frameon=False,
              ncol=1 if len(handles) <= 4 else 2, handlelength=1.2, borderaxespad=0.2)


HEATMAP_CMAP = "jet"
MAPS = (("raw", "raw cross-attention\n(before refinement)"),
        ("refined", "refined, uncalibrated\n(the official pipeline's output)"),
        ("calibrated", "calibrated"))


def result_figure(image_rgb: np.ndarray, result, threshold: float, source: str, title: str = ""):
    """One image's result: per class (columns) the raw cross-attention map before the self-attention refinement,
    the refined map (the official pipeline's uncalibrated output) and the calibrated map with its S and ELBO loss
    (rows), on one colour bar marked at the threshold; in the first column the image and the calibrated mask,
    plain and over the image, with their key. ``source`` says where the threshold came from."""
    import textwrap

    import matplotlib.pyplot as plt
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    if result.unrefined is None:
        raise ValueError("the result has no maps before refinement (unrefined); make it with aligner.finalize")
    n = len(result.classes)
    maps = {"raw": result.unrefined, "refined": result.raw, "calibrated": result.heatmaps}
    elbo = np.asarray(result.elbo).sum(1)
    grey = np.asarray(image_rgb, dtype=np.float64).mean(-1)
    fig, axes = plt.subplots(3, n + 1, figsize=(2.4 * (n + 1) + 1.0, 8.4), squeeze=False, layout="constrained")
    cut = f"threshold {threshold:.2f}: " + "\n".join(textwrap.wrap(source, 30, break_long_words=False,
                                                                   break_on_hyphens=False))
    mask = result.mask(threshold)
    axes[0, 0].imshow(image_rgb)
    axes[0, 0].set_title("input image", fontsize=8)
    axes[1, 0].imshow(mask_overlay(np.asarray(image_rgb), mask, n))
    axes[1, 0].set_title(f"mask over the image\n{cut}", fontsize=7)
    axes[2, 0].imshow(mask_rgb(mask, n))
    axes[2, 0].set_title(f"mask (calibrated maps)\n{cut}", fontsize=7)
    for ax in axes[1:, 0]:
        add_legend(ax, result.classes)
    for row, (key, label) in enumerate(MAPS):
        for i, c in enumerate(result.classes):
            ax = axes[row, i + 1]
            ax.imshow(grey, cmap="gray", vmin=0, vmax=255)
            ax.imshow(maps[key][i], cmap=HEATMAP_CMAP, vmin=0, vmax=1, alpha=0.6)
            what = (f"calibrated\nS = {result.scores[i]:.2f}, ELBO loss = {elbo[i]:.4g}" if key == "calibrated"
                    else label)
            ax.set_title(f"{c}: {what}", fontsize=7)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    bar = fig.colorbar(ScalarMappable(Normalize(0, 1), HEATMAP_CMAP), ax=axes[:, 1:], fraction=0.04, pad=0.02)
    bar.set_label(f"heatmap value (line: threshold {threshold:.2f})", fontsize=8)
    bar.ax.axhline(threshold, color="white", lw=2)
    bar.ax.axhline(threshold, color="black", lw=0.8)
    fig.suptitle(title or f"{result.caption} | threshold {threshold:.2f}: {source}", fontsize=9)
    return fig


def describe_figure(fig) -> dict:
    """What a figure shows, as JSON: its title and, per axes, the title, legend labels and y label (a colour
    bar's label), so a test or a reader can check the panels without reading pixels."""
    panels = []
    for ax in fig.axes:
        leg = ax.get_legend()
        panels.append({"title": ax.get_title(), "legend": [t.get_text() for t in leg.get_texts()] if leg else [],
                       "ylabel": ax.get_ylabel()})
    return {"title": fig.get_suptitle(), "panels": panels}


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
