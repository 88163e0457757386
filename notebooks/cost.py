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
import sys

import matplotlib.pyplot as plt
import seaborn as sns

sys.path.insert(0, str(ex.REPO_ROOT))
from benchmarks.bench_aligner import main as bench

args = ["--arch", arch, "--model", model, "--repeats", str(repeats), "--classes", *map(str, classes)]
if device:
    args += ["--device", device]
tab = bench(args)
ex.save_table(tab, "cost", out)
ex.save_table(tab.attrs["denoiser_ceiling"], "cost_denoiser_ceiling", out)  # what batching alone buys here

# %%
print("speed-up of the batched ELBO at", max(classes), "classes:",
      round(float(tab[(tab.elbo == "batched") & (tab.classes == max(classes))].speedup_vs_loop.item()), 1))
fig, ax = plt.subplots(figsize=(5, 3.5))
sns.lineplot(data=tab, x="classes", y="s_per_image", hue="elbo", marker="o", ax=ax)
ax.set(ylabel="seconds per image")
fig.tight_layout()
fig.savefig(f"{out}/cost.png", dpi=120)
