# %% [markdown]
# # Table VII — where the 10 ELBO timesteps are sampled
# Small [0, 0.2], Middle [0.4, 0.6], Large [0.7, 0.9], Random, Even (paper: Random best, Even close, larger t better).

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
cfg = ex.superset_config(model)
strategies = ["small", "middle", "large", "random", "even"]
m = ex.run([ex.variant(s, cfg, elbo_idx=ex.elbo_subset(10, s, seed)) for s in strategies], model, dataset,
           limit=limit, seed=seed, n_boot=n_boot, device=device, data_root=data_root, image_lists=image_lists)
tab = ex.table(m)
ex.save_table(tab, "table7_elbo_sampling", out)

# %%
print(tab.round(3).to_string(index=False))
print("paper: Random best, Even close; Large > Middle > Small")

# %% tags=["nbval-check-output"]
ex.check("table7_elbo_sampling", globals(), table=tab)
