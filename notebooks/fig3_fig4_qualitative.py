# %% [markdown]
# # Figs. 3 and 4 — heatmaps and masks on hard images, raw vs calibrated
# "Hard" = the toy-test images whose smallest object is smallest.

# %% tags=["parameters"]
model = "data/toy-sd"
dataset = "toy-test"
limit = 60
n_show = 4
threshold = 0.4
seed = 0
device = None
out = "figures"

# %%
import elbo_lib.experiments as ex

ex.use_repo_root()
import numpy as np

from elbo_lib.plotting import result_figure

ds, res = ex.results(model, dataset, limit=limit, seed=seed)
multi = [(s, r) for s, r in res if len(s.class_ids) >= 2]
hard = sorted(multi, key=lambda sr: min((sr[0].label == k).sum() for k in sr[0].class_ids))[:n_show]

# %% tags=["nbval-check-output"]
for s, r in hard:
    print(s.id, dict(zip(r.classes, np.round(r.scores, 3))))

# %%
for i, (s, r) in enumerate(hard):
    fig = result_figure(s.image, r, threshold, title=s.caption)
    fig.savefig(f"{out}/fig3_fig4_qualitative_{i}.png", dpi=100)
