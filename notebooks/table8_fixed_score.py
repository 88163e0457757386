# %% [markdown]
# # Table VIII — ELBO-driven S against a constant S (the root alone)

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
fixed = [1 / 3, 1 / 2, 2 / 3]
variants = [ex.variant(f"fixed S={s:.2f}", cfg, fixed_score=s) for s in fixed] + [ex.variant("ELBO S (paper)", cfg)]
m = ex.run(variants, model, dataset, limit=limit, seed=seed, n_boot=n_boot, device=device, data_root=data_root,
           image_lists=image_lists)
tab = ex.table(m)
ex.save_table(tab, "table8_fixed_score", out)

# %%
print(tab.round(3).to_string(index=False))
print("paper: a constant S is worse than the ELBO-driven S")

# %% tags=["nbval-check-output"]
ex.check("table8_fixed_score", globals(), table=tab)
