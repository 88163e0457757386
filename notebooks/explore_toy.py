# %% [markdown]
# # Explore the toy world
# Move the sliders: target size, occlusion, distractor copies (unrelated, or in the target's colour), rare
# class; gamma, ELBO timestep count and strategy, attention timesteps. Scene knobs run the model once per
# scene (a progress bar shows it); the calibration knobs only re-run Alg. 1's cheap final steps.
# As a standalone page: `make explore` (Voila).

# %% tags=["parameters"]
model = "data/toy-sd"
seed = 0
device = None
out = "figures"

# %%
import elbo_lib.experiments as ex

ex.use_repo_root()
out = ex.output_dir(out)
import numpy as np
from IPython.display import display

from elbo_lib import load_pipeline
from elbo_lib.toy.explore import ExplorerApp, ToyExplorer

pipe = load_pipeline(model, device=device)
app = ExplorerApp(ToyExplorer(pipe, model), seed=seed)
display(app.widget)

# %%
# the page's update path on a second, undisplayed app (its own measurements, so the page's count stays its
# own): a small target, then gamma = 1 (no calibration: the heatmaps equal the raw maps). Not run on the Voila
# page, which shows only the app.
if not ex.served_as_page():
    check = ExplorerApp(ToyExplorer(pipe, model), seed=seed)
    check.controls["target_radius"].value = 6.0
    small_target = dict(zip(check.result.classes, check.result.scores.tolist()))
    check.controls["gamma"].value = 1.0
    raw_at_gamma_1 = bool(np.array_equal(check.result.heatmaps, check.result.raw))

# %% tags=["nbval-check-output"]
if not ex.served_as_page():
    ex.check("explore_toy", globals(), small_target_scores=small_target, gamma_1_leaves_maps_raw=raw_at_gamma_1)
