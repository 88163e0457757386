# %% [markdown]
# # Cost (Sec. IV-C) — time per image against the number of classes, batched ELBO vs the per-class loop
# Paper: ~4 s per image with 10 classes on an RTX 4090 (SD 1.5), ~7 GB (SD1/2) and ~13 GB (SDXL) of GPU memory.
# On a GPU, set `arch = "sd15-random"` to time SD 1.5's architecture with random weights.

# %% tags=["parameters"]
model = "data/toy-sd"
arch = "toy"
classes = [2, 5, 10]
repeats = 1
seed = 0
device = None
out = "figures"

# %%
import elbo_lib.experiments as ex

ex.use_repo_root()
out = ex.output_dir(out)
import matplotlib.pyplot as plt
import seaborn as sns

from elbo_lib import load_pipeline
from elbo_lib.models import default_device_dtype
from elbo_lib.models.random_init import sd15_random_pipeline
from elbo_lib.timing import aligner_speed
from elbo_lib.toy.world import COLOURS, SHAPES

dev, dtype = default_device_dtype(device)
pipe = load_pipeline(model, device=dev, dtype=dtype) if arch == "toy" else sd15_random_pipeline().to(dev, dtype)
tab, ceiling = aligner_speed(pipe, [f"{c} {s}" for s in SHAPES for c in COLOURS], classes, repeats=repeats)
ex.save_table(tab, "cost", out)
ex.save_table(ceiling, "cost_denoiser_ceiling", out)  # what batching alone buys here

# %%
print("speed-up of the batched ELBO at", max(classes), "classes:",
      round(float(tab[(tab.elbo == "batched") & (tab.classes == max(classes))].speedup_vs_loop.item()), 1))
fig, ax = plt.subplots(figsize=(5, 3.5))
sns.lineplot(data=tab, x="classes", y="s_per_image", hue="elbo", marker="o", ax=ax)
ax.set(ylabel="seconds per image")
fig.tight_layout()
fig.savefig(f"{out}/cost.png", dpi=120)
