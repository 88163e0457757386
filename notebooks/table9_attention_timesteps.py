# %% [markdown]
# # Table IX — attention collection timesteps (count and range)
# Uncalibrated and calibrated mIoU for attention maps collected at 1, 5, 10 timesteps in (0, 0.2] and 10 timesteps
# in later ranges (paper: small t is best).

# %% tags=["parameters"]
model = "data/toy-sd"
dataset = "toy-test"
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
import pandas as pd

cfg = ex.superset_config(model)
settings = {"1 in (0,0.2]": ex.attention_subset(1, 0.2), "5 in (0,0.2]": ex.attention_subset(5, 0.2),
            "10 in (0,0.2] (paper)": ex.attention_subset(10, 0.2), "10 in (0,0.4]": ex.attention_subset(10, 0.4),
            "10 in (0.2,0.4]": ex.attention_subset(10, 0.4, 0.2), "10 in (0.4,0.6]": ex.attention_subset(10, 0.6, 0.4)}
variants = []
for name, idx in settings.items():
    variants += [ex.variant(f"{name} uncal", cfg, attention_idx=idx, calibrate=False),
                 ex.variant(f"{name} cal", cfg, attention_idx=idx)]
m = ex.run(variants, model, dataset, limit=limit, seed=seed, n_boot=n_boot, device=device, data_root=data_root,
           image_lists=image_lists)
tab = ex.table(m)
tab = tab[tab.variant != "uncalibrated"].reset_index(drop=True)
ex.save_table(tab, "table9_attention_timesteps", out)

# %%
print(tab[["variant", "oracle_mIoU", "heldout_mIoU"]].round(3).to_string(index=False))
print("paper: attention from small t (<= 0.2) is best")

# %% tags=["nbval-check-output"]
ex.check("table9_attention_timesteps", globals(), table=tab)
