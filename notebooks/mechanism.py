# %% [markdown]
# # Why ELBO calibration helps in the toy world, and how much it could
# The method (Alg. 1, Eqs. 4-5) rests on three premises, each measured here on the toy models' cached
# measurements (no extra denoiser call; `elbo_lib/mechanism.py`, docs/mechanism.md):
#
# 1. **S finds the weak classes**: a class's summed ELBO loss (Eq. 4) is higher, and its S (Eq. 5) lower, when its
#    uncalibrated heatmap segments it worse. Predicted: a positive within-image rank correlation of S with the
#    class IoU (negative for the ELBO loss).
# 2. **The power 1/S moves pixels the right way**: mIoU of no calibration, the ELBO's S, S shuffled among each
#    image's classes, each image's mean S for every class (the root alone), and per-class exponents chosen with the
#    ground truth from a small grid (an upper bound for any per-class calibration of this form).
# 3. **The self-attention refinement spreads a class over its own object**: the fraction of a query's
#    self-attention row on its own object, against the uniform baseline (the object's area fraction), and the class
#    IoU with and without the refinement by object size.
#
# Every variant is scored at one background threshold per model: the held-out threshold recorded on `toy-val` for
# the official configuration (`<model>/thresholds.json`), or `threshold` when given.

# %% tags=["parameters"]
models = ["data/toy-sd", "data/toy-sd-v", "data/toy-sd3"]
dataset = "toy-test"
limit = 30
seed = 0
threshold = None
n_boot = 100
device = None
out = "figures"

# %%
import elbo_lib.experiments as ex

ex.use_repo_root()
out = ex.output_dir(out)
import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns

from elbo_lib import mechanism as mc
from elbo_lib.datasets import get_dataset
from elbo_lib.evaluation import thresholds as recorded_thresholds
from elbo_lib.evaluation.runner import measure_dataset

if isinstance(models, str):  # one model named on the command line (papermill -p models data/toy-sd)
    models = [models]
ds = get_dataset(dataset)
scenes = {it.id: it.scene for it in getattr(ds, "items", [])}  # the toy scenes give each class's occlusion
studies, used_threshold = {}, {}
for model in models:
    # the toy default is measured on the superset (Tables II, VI-IX share it), the others with the paper's config
    cfg = ex.superset_config(model) if model == ex.TOY_MODELS[0] else ex.paper_config(model)
    elbo_idx, att_idx = ex.paper_subsets(cfg)
    t = threshold if threshold is not None else recorded_thresholds.read(model).get("official", {}).get("threshold")
    if t is None:
        raise ValueError(f"{model} has no recorded official threshold (thresholds.json); pass threshold=")
    used_threshold[model] = t
    pairs = measure_dataset(model, ds, cfg, seed, limit, device=device, desc=f"{model} {dataset}")
    studies[model] = mc.study_model(pairs, cfg, t, elbo_idx, att_idx, seed, n_global=len(ds.class_names),
                                    scenes=scenes)

# %% [markdown]
# ## 1. Does S find the weak classes?
# Within-image Spearman correlation (ranks centred per image, pooled; 95% interval over images) of the class's S
# and summed ELBO loss with its uncalibrated IoU, its pointing hit, its area and its occlusion; and of the S the
# ground-truth oracle of section 2 gives each class with its IoU and with the ELBO's S (which classes *should* get
# the power 1/S > 1, and does the ELBO pick them?). Last, the split-half reliability of the ELBO's class order: the
# summed loss over alternate halves of the ELBO timesteps (`elbo_loss_a`, `elbo_loss_b`, independent noise),
# correlated within images. High reliability with no link to IoU means the ELBO orders the classes by something
# stable that is not alignment; low reliability means the order is estimation noise.

# %%
corr_rows = []
for model, st in studies.items():
    c = st.classes.assign(hit=st.classes.hit.astype(float))
    for x, y in (("S", "iou"), ("elbo_loss", "iou"), ("S", "hit"), ("S", "area"), ("S", "occlusion"),
                 ("iou", "area"), ("oracle_S", "iou"), ("S", "oracle_S"), ("elbo_loss_a", "elbo_loss_b")):
        try:
            r = mc.within_image_spearman(c, x, y, n_boot=n_boot, seed=seed)
        except ValueError:  # too few multi-class images at this limit
            continue
        corr_rows.append({"model": model, "x": x, "y": y, "rho": r["rho"],
                          "ci95": f"[{r['ci95'][0]:+.3f}, {r['ci95'][1]:+.3f}]", "images": r["images"],
                          "classes": r["pairs"]})
corr = pd.DataFrame(corr_rows)
classes = pd.concat([st.classes.assign(model=m) for m, st in studies.items()], ignore_index=True)
classes.to_csv(f"{out}/mechanism_classes.csv", index=False)
ex.save_table(corr, "mechanism_correlation", out)
print(corr.round(3).to_string(index=False))

# %%
multi = classes[classes.n_classes > 1]
g = sns.relplot(data=multi, x="S", y="iou", hue="hit", col="model", height=3, aspect=1.1, alpha=0.6, s=18)
g.set_axis_labels("S (Eq. 5)", "uncalibrated class IoU")
g.savefig(f"{out}/mechanism_s_vs_iou.png", dpi=120)
plt.show()

# %% [markdown]
# ## 2. What could any per-class calibration gain?
# mIoU over images (classes pooled as the harness scores) with 95% intervals, and the paired difference from no
# calibration on the same image resamples. The oracle picks, per image, each class's S from
# `mc.ORACLE_GRID` to maximise that image's mIoU with the ground truth: an upper bound, not a method.

# %%
headroom = pd.concat([mc.miou_table(st.variants, "none", n_boot, seed).assign(model=m, threshold=used_threshold[m])
                      for m, st in studies.items()], ignore_index=True)
headroom = headroom[["model", "threshold", "variant", "images", "mIoU", "ci95", "minus none", "diff_ci95"]]
ex.save_table(headroom, "mechanism", out)
print(headroom.round(3).to_string(index=False))

# %%
fig, ax = plt.subplots(figsize=(7, 3))
sns.barplot(data=headroom[headroom.variant != "none"], y="variant", x="minus none", hue="model", ax=ax)
ax.axvline(0, color="k", lw=0.8)
ax.set_xlabel("mIoU minus no calibration")
fig.tight_layout()
fig.savefig(f"{out}/mechanism_headroom.png", dpi=120)
plt.show()

# %% [markdown]
# ## 3. Does the self-attention refinement keep a class on its own object?

# %%
mass_rows = []
for model, st in studies.items():
    if len(st.mass):
        s = mc.mass_summary(st.mass, n_boot, seed)
        mass_rows.append({"model": model, "classes": s["classes"], "own-object mass": s["mass"],
                          "uniform baseline": s["baseline"], "mass minus baseline": s["mass minus baseline"],
                          "ci95": f"[{s['ci95'][0]:+.3f}, {s['ci95'][1]:+.3f}]"})
mass = pd.DataFrame(mass_rows)
ex.save_table(mass, "mechanism_self_attention", out)
print(mass.round(3).to_string(index=False))

refinement = pd.concat([mc.size_bucket_table(st.refinement, 3, n_boot, seed).assign(model=m)
                        for m, st in studies.items()], ignore_index=True)
ex.save_table(refinement, "mechanism_refinement", out)
print(refinement.round(3).to_string(index=False))

# %%
g = sns.catplot(data=refinement, x="bucket", y="refined minus not", hue="maps", col="model", kind="bar", height=3)
g.set_axis_labels("object size tercile (0 = smallest)", "class IoU, refined minus not")
g.savefig(f"{out}/mechanism_refinement.png", dpi=120)
plt.show()

# %% [markdown]
# ## Verdict (printed from the numbers above)

# %%
def _ci_excludes_zero(ci: str) -> str:
    lo, hi = (float(x) for x in ci.strip("[]").split(","))
    return "above 0" if lo > 0 else "below 0" if hi < 0 else "includes 0"


for model in models:
    h = headroom[headroom.model == model].set_index("variant")
    c = corr[(corr.model == model) & (corr.x == "S") & (corr.y == "iou")]
    line = f"{model} ({int(h.images.iloc[0])} images, threshold {used_threshold[model]}): "
    if len(c):
        line += (f"S vs class IoU rho {c.rho.iloc[0]:+.2f} {c.ci95.iloc[0]} ({_ci_excludes_zero(c.ci95.iloc[0])}); ")
    line += "; ".join(f"{v} {h.loc[v, 'minus none']:+.3f} {h.loc[v, 'diff_ci95']} ({_ci_excludes_zero(h.loc[v, 'diff_ci95'])})"
                      for v in mc.VARIANTS[1:])
    m_ = mass[mass.model == model]
    if len(m_):
        line += (f"; self-attention on own object {m_['own-object mass'].iloc[0]:.3f} vs uniform "
                 f"{m_['uniform baseline'].iloc[0]:.3f}")
    print(line)

# %% tags=["nbval-check-output"]
ex.check("mechanism", globals(), headroom=headroom, correlation=corr, self_attention=mass, refinement=refinement)
