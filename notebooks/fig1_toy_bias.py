# %% [markdown]
# # Fig. 1 — what weakens alignment: size, occlusion, crowding, rarity
# Each toy study set changes one factor of a target object from the easy to the hard end, everything else fixed.
# We report the target's IoU (held-out threshold from `toy-val`) before and after ELBO calibration, and its
# easy-minus-hard drop over the same scenes with a 95% bootstrap interval. A fifth, reported set repeats the
# distractor study with the copies drawn in the target's colour.

# %% tags=["parameters"]
model = "data/toy-sd"
n_samples = 8
seed = 0
device = None
n_boot = 100
out = "figures"

# %%
import elbo_lib.experiments as ex

ex.use_repo_root()
out = ex.output_dir(out)
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from elbo_lib.datasets.layouts import TARGET_COLOUR_STUDY
from elbo_lib.plotting import mask_rgb, overlay
from elbo_lib.toy.study import STUDIES, STUDY_LEVELS

cfg = ex.paper_config(model)  # Fig. 1 needs only the paper's timesteps
sets = list(STUDIES) + [TARGET_COLOUR_STUDY]
levels = {**STUDY_LEVELS, TARGET_COLOUR_STUDY: STUDY_LEVELS["distractors"]}
frames, drops = [], []
for study in sets:
    m = ex.run(ex.paper_variants(cfg), model, f"toy-study-{study}", limit=n_samples * len(levels[study]),
               seed=seed, n_boot=n_boot, device=device, heldout="toy-val", cfg=cfg)
    frames.append(ex.conditions_table(m))
    drops.append(ex.condition_drops_table(m))
curves = pd.concat(frames, ignore_index=True)
drops = pd.concat(drops, ignore_index=True)
ex.save_table(curves, "fig1_toy_bias", out)
ex.save_table(drops, "fig1_toy_bias_drops", out)

# %%
curve_table = curves.pivot_table(index=["study", "level"], columns="variant", values="target_iou")
print(curve_table.round(3).to_string())
print(drops.round(3).to_string(index=False))
print("paper (Fig. 1, qualitative): smaller, occluded, crowded and rare targets lose alignment")

# %% tags=["nbval-check-output"]
ex.check("fig1_toy_bias", globals(), curves=curve_table, drops=drops)

# %%
fig, axes = plt.subplots(1, len(sets), figsize=(3.8 * len(sets), 3.3))
for ax, study in zip(axes, sets):
    sns.lineplot(data=curves[curves.study == study], x="level", y="target_iou", hue="variant", marker="o", ax=ax)
    ax.set_xticks(range(len(levels[study])), [str(v) for v in levels[study]])
    ax.set(title=study.replace("-in-", "\nin ").replace("-", " "), xlabel="easy -> hard", ylabel="target IoU")
fig.tight_layout()
fig.savefig(f"{out}/fig1_toy_bias.png", dpi=120)

# %%
fig, axes = plt.subplots(len(STUDIES) * 2, 5, figsize=(10, 16))
for r, study in enumerate(STUDIES):
    ds, res = ex.results(model, f"toy-study-{study}", limit=len(STUDY_LEVELS[study]), seed=seed, cfg=cfg)
    for c, (sample, rr) in enumerate(res):
        t = rr.classes.index(sample.meta["target"])
        axes[2 * r, c].imshow(overlay(sample.image, rr.raw[t]))
        axes[2 * r, c].set_title(f"{study} {c}: raw", fontsize=8)
        axes[2 * r + 1, c].imshow(mask_rgb(rr.mask(0.4), len(rr.classes)))
        axes[2 * r + 1, c].set_title(f"mask, S={rr.scores[t]:.2f}", fontsize=8)
for ax in axes.ravel():
    ax.axis("off")
fig.tight_layout()
fig.savefig(f"{out}/fig1_toy_bias_examples.png", dpi=100)
