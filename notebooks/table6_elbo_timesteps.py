# %% [markdown]
# # Table VI — number of ELBO timesteps
# 1, 5, 20 (paper) and more "even" timesteps, drawn from one cached superset, with the denoiser time each costs.

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
from elbo_lib import load_pipeline
from elbo_lib.timing import measure_seconds

cfg = ex.superset_config(model)
counts = [1, 5, 10, 20, 50, 100]
m = ex.run([ex.variant(f"elbo={n}", cfg, elbo_idx=ex.elbo_subset(n)) for n in counts], model, dataset, limit=limit,
           seed=seed, n_boot=n_boot, device=device, data_root=data_root, image_lists=image_lists)
tab = ex.table(m)
ds, res = ex.results(model, dataset, limit=1, seed=seed, data_root=data_root, image_lists=image_lists)
sample = res[0][0]
secs = measure_seconds(load_pipeline(model, device=device),  # every denoiser call for one image, per count
                       {f"elbo={n}": ex.superset_config(model, elbo_steps=n, attention_steps=10, attention_t_max=0.2)
                        for n in counts}, sample.image, ds.phrases(sample.class_ids), sample.caption, seed)
tab["s_per_image"] = tab.variant.map(secs)
ex.save_table(tab, "table6_elbo_timesteps", out)

# %%
print(tab.drop(columns=["s_per_image"]).round(3).to_string(index=False))
print("paper: more ELBO timesteps is better, slowly (1 < 5 < 20)")

# %% tags=["nbval-check-output"]
ex.check("table6_elbo_timesteps", globals(), table=tab.drop(columns=["s_per_image"]))

# %%
print(tab[["variant", "s_per_image"]].round(3).to_string(index=False))
