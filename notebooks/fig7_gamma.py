# %% [markdown]
# # Fig. 7 — mIoU against 1/gamma
# gamma = 1 is no calibration (dotted line); the paper finds the best near 1/gamma = 2-3.

# %% tags=["parameters"]
model = "data/toy-sd"
datasets = ["toy-test"]
data_root = None
image_lists = None  # real data: a folder laid out as the authors' metadata/ (their image lists)
limit = 60
seed = 0
device = None
n_boot = 100
out = "figures"

# %%
import elbo_lib.experiments as ex

ex.use_repo_root()
out = ex.output_dir(out)
import matplotlib.pyplot as plt
import pandas as pd

cfg = ex.superset_config(model)
inv = [1, 1.5, 2, 3, 4, 5, 6, 8]
variants = [ex.variant(f"1/gamma={g:g}", cfg, gamma=1 / g) for g in inv]
rows = []
for d in datasets:
    m = ex.run(variants, model, d, limit=limit, seed=seed, n_boot=n_boot, device=device, data_root=data_root,
               image_lists=image_lists)
    for g in inv:
        e = m["variants"][f"1/gamma={g:g}"]
        rows.append({"dataset": d, "inv_gamma": g, "oracle_mIoU": e["oracle"]["miou"], "heldout_mIoU": e["heldout"]["miou"]})
tab = pd.DataFrame(rows)
ex.save_table(tab, "fig7_gamma", out)

# %%
print(tab.round(3).to_string(index=False))
print("paper: best near 1/gamma = 2-3; 1/gamma = 1 is the uncalibrated baseline")

# %% tags=["nbval-check-output"]
ex.check("fig7_gamma", globals(), table=tab)

# %%
fig, ax = plt.subplots(figsize=(5, 3.5))
for d, g in tab.groupby("dataset"):
    ax.plot(g.inv_gamma, g.heldout_mIoU, "o-", label=f"{d} held-out")
    ax.plot(g.inv_gamma, g.oracle_mIoU, "s--", label=f"{d} oracle")
    ax.axhline(g[g.inv_gamma == 1].heldout_mIoU.item(), ls=":", c="grey")
ax.set(xlabel="1 / gamma", ylabel="mIoU")
ax.legend(fontsize=8)
fig.tight_layout()
fig.savefig(f"{out}/fig7_gamma.png", dpi=120)
