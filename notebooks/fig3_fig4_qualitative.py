# %% [markdown]
# # Figs. 3 and 4 — heatmaps and masks on hard images: every method side by side
# "Hard" = the toy-test images whose smallest object is smallest. Rows: images; columns: methods
# (heatmap of the smallest class, then the mask at one background threshold for every method).

# %% tags=["parameters"]
model = "data/toy-sd"
dataset = "toy-test"
data_root = None
image_lists = None  # real data: a folder laid out as the authors' metadata/ (their image lists)
limit = 60
n_show = 4
threshold = 0.7  # the held-out background threshold of the paper's rows in Table II
seed = 0
device = None
out = "figures"

# %%
import elbo_lib.experiments as ex

ex.use_repo_root()
out = ex.output_dir(out)
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from elbo_lib.calibrate import masks_from_heatmaps
from elbo_lib.plotting import mask_rgb, overlay

maps = ex.method_heatmaps(model, dataset, limit=limit, seed=seed, data_root=data_root,
                         image_lists=image_lists)
samples = [s for s, _ in maps["ELBO-T2IAlign"]]
order, smallest = ex.hardest_images(samples, n_show)

# %%
peaks = {}  # per hard image: its smallest class's area and each method's peak heatmap value on that class
for i in order:
    s = samples[i]
    k = s.class_ids.index(smallest[i])
    peaks[s.id] = {"area_px": int((s.label == smallest[i]).sum()), **{m: float(v[i][1][k].max()) for m, v in maps.items()}}
print(pd.DataFrame(peaks).T.round(3).to_string())

# %% tags=["nbval-check-output"]
ex.check("fig3_fig4_qualitative", globals(), peaks=peaks)

# %%
import torch

methods = list(maps)
fig, axes = plt.subplots(2 * len(order), len(methods) + 1, figsize=(2.0 * (len(methods) + 1), 4.2 * len(order)))
for r, i in enumerate(order):
    s = samples[i]
    k = s.class_ids.index(smallest[i])
    axes[2 * r, 0].imshow(s.image)
    axes[2 * r, 0].set_title(s.id, fontsize=7)
    axes[2 * r + 1, 0].imshow(mask_rgb((np.where(s.label == 255, 0, s.label) > 0).astype(int), 1))
    axes[2 * r + 1, 0].set_title("ground truth (fg)", fontsize=7)
    for c, m in enumerate(methods):
        h = maps[m][i][1]
        axes[2 * r, c + 1].imshow(overlay(s.image, h[k]))
        axes[2 * r, c + 1].set_title(m, fontsize=7)
        axes[2 * r + 1, c + 1].imshow(mask_rgb(masks_from_heatmaps(torch.from_numpy(h), threshold).numpy(), len(s.class_ids)))
for ax in axes.ravel():
    ax.axis("off")
fig.tight_layout()
fig.savefig(f"{out}/fig3_fig4_qualitative.png", dpi=100)
