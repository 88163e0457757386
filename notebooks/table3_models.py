# %% [markdown]
# # Table III — before / after calibration across models
# Any list of pipeline directories or hub ids (SD1.x, SD2.x incl. v-prediction, SDXL, SD3) on a GPU; the toy model here.

# %% tags=["parameters"]
models = ["data/toy-sd"]
dataset = "toy-test"
data_root = None
limit = 60
seed = 0
device = None
n_boot = 100
out = "figures"

# %%
import elbo_lib.experiments as ex

ex.use_repo_root()
out = ex.output_dir(out)
import pandas as pd

from elbo_lib import load_pipeline
from elbo_lib.models import adapter_for

rows = []
for model in models:
    cfg = ex.superset_config(model)
    m = ex.run(ex.paper_variants(cfg), model, dataset, limit=limit, seed=seed, n_boot=n_boot, device=device, data_root=data_root)
    t = ex.table(m)
    ad = adapter_for(load_pipeline(model, device=device))
    t.insert(0, "objective", ad.objective)
    t.insert(0, "model", str(model))
    rows.append(t)
tab = pd.concat(rows, ignore_index=True)
ex.save_table(tab, "table3_models", out)

# %% tags=["nbval-check-output"]
print(tab[["model", "objective", "variant", "oracle_mIoU", "heldout_mIoU"]].round(3).to_string(index=False))
print("paper: calibration helps every model and objective (eps, v, flow)")
