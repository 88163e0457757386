# %% [markdown]
# # Effect size — how much ELBO calibration helps in the toy world, to +/-0.01
# Table II / III's calibration gains on `toy-test` (200 images) have intervals about +/-0.012 wide, and a fresh
# draw from the same toy distribution moved the estimate by +0.02: one split cannot decide "helps" or "does not
# help". Here each toy model's official configuration (the paper's rows; `paper_config`) is evaluated on three or
# more further splits drawn with their own seeds (`toy-fresh-<k>`, never used before: not for training, thresholds
# or any other table), each scored alone and then pooled. `make effect-size` gives `data/toy-sd` nine splits: its
# constant-S arm varies most between splits (+/-0.017 on three). The threshold is held out on `toy-val` as everywhere (its
# first `n_per_split` images; the pool's on min(pooled images, 300), the same 300 at full size).
# Rows: held-out mIoU minus the uncalibrated maps', paired over images, 95% bootstrap interval; for the ELBO's S
# (Table II / III) and for a constant S = 1/3 (Table VIII's best fixed row).
# `make reproduce` leaves this notebook out (about 30 minutes on 2 CPU cores at full size; figures/README.md
# gives its last run's time): run it with `make effect-size`.

# %% tags=["parameters"]
models = ["data/toy-sd", "data/toy-sd-v", "data/toy-sd3"]
splits = ["toy-fresh-1", "toy-fresh-2", "toy-fresh-3"]  # or {model: [splits]}, more where an arm is noisier
n_per_split = 10
seed = 0
device = None
n_boot = 200
out = "figures"

# %%
import elbo_lib.experiments as ex

ex.use_repo_root()
out = ex.output_dir(out)
import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns

from elbo_lib.datasets import ToyDataset

POOLED = "pooled"
if isinstance(models, str):  # one model named on the command line
    models = [models]
model_splits = splits if isinstance(splits, dict) else {m: list(splits) for m in models}
ARMS = {"ELBO S (paper)": {}, "constant S=1/3 (Table VIII)": {"fixed_score": 1 / 3}}
rows = []
for model in models:
    cfg = ex.paper_config(model)
    variants = [ex.variant(name, cfg, **kw) for name, kw in ARMS.items()]
    for split in model_splits[model] + [POOLED]:
        ds = ToyDataset.pooled(model_splits[model], n_per_split) if split == POOLED else ToyDataset(split, n_per_split)
        # the threshold split: toy-val's first `limit` images (all 300 at full size, for the pool too)
        m = ex.run(variants, model, ds, cfg=cfg, limit=len(ds), seed=seed, n_boot=n_boot, device=device)
        base = m["variants"]["uncalibrated"]["heldout"]["miou"]
        for name in ARMS:
            h = m["variants"][name]["heldout"]
            lo, hi = h["diff_ci95"]
            rows.append({"model": model, "split": split, "images": m["n_images"], "arm": name,
                         "uncalibrated": base, "mIoU": h["miou"], "minus uncalibrated": h["minus_uncalibrated"],
                         "ci_lo": lo, "ci_hi": hi, "half_width": (hi - lo) / 2})
tab = pd.DataFrame(rows)
ex.save_table(tab, "effect_size", out)

# %% [markdown]
# Spread over the splits: the per-split estimates' mean, standard deviation and range, next to the pooled
# estimate and its interval; `decided` says whether the pooled interval excludes zero.

# %%
per = tab[tab.split != POOLED].groupby(["model", "arm"])["minus uncalibrated"]
pooled = tab[tab.split == POOLED].set_index(["model", "arm"])
summary = pd.DataFrame({"splits": per.size(), "split mean": per.mean(), "split sd": per.std(ddof=1),
                        "split min": per.min(), "split max": per.max(),
                        "pooled images": pooled["images"], "pooled": pooled["minus uncalibrated"],
                        "pooled ci95": [f"[{a:+.3f}, {b:+.3f}]" for a, b in zip(pooled.ci_lo, pooled.ci_hi)],
                        "half-width": pooled.half_width,
                        "decided": ["helps" if a > 0 else "hurts" if b < 0 else "undecided"
                                    for a, b in zip(pooled.ci_lo, pooled.ci_hi)]}).reset_index()
ex.save_table(summary, "effect_size_summary", out)
print(tab.round(3).to_string(index=False))
print(summary.round(3).to_string(index=False))

# %% tags=["nbval-check-output"]
ex.check("effect_size", globals(), table=tab)

# %%
fig, axes = plt.subplots(1, len(models), figsize=(4.2 * len(models), 1.2 + 0.35 * max(map(len, model_splits.values()))),
                         sharex=True, squeeze=False)
for ax, (model, g) in zip(axes[0], tab.groupby("model", sort=False)):
    order = model_splits[model] + [POOLED]
    for k, (arm, a) in enumerate(g.groupby("arm", sort=False)):
        a = a.set_index("split").loc[order]
        y = [i + 0.15 * (k - 0.5) for i in range(len(order))]
        ax.errorbar(a["minus uncalibrated"], y, xerr=[a["minus uncalibrated"] - a.ci_lo, a.ci_hi - a["minus uncalibrated"]],
                    fmt="o", capsize=3, color=sns.color_palette()[k], label=arm)
    ax.axvline(0, color="grey", lw=0.8, ls=":")
    ax.set_yticks(range(len(order)), [f"{s} ({n})" for s, n in zip(order, g.set_index("split").loc[order].images.iloc[::2])])
    ax.invert_yaxis()
    ax.set_title(model, fontsize=9)
    ax.set_xlabel("held-out mIoU minus uncalibrated")
axes[0][0].legend(fontsize=7, loc="lower right")
fig.tight_layout()
fig.savefig(f"{out}/effect_size.png", dpi=120)
