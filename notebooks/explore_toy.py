# %% [markdown]
# # Explore the toy world
# Move the sliders: target size, occlusion, distractor copies, rare class; gamma, ELBO timestep count and
# strategy, attention timesteps. The model runs once per scene; everything else is instant.

# %% tags=["parameters"]
model = "data/toy-sd"
seed = 0
device = None
out = "figures"

# %%
import elbo_lib.experiments as ex

ex.use_repo_root()
out = ex.output_dir(out)
import ipywidgets as w
import matplotlib.pyplot as plt
import numpy as np

from elbo_lib import load_pipeline
from elbo_lib.toy.explore import SceneKnobs, ToyExplorer, controls
from elbo_lib.plotting import result_figure

explorer = ToyExplorer(load_pipeline(model, device=device), model)


def show(target_radius=11.0, occlusion=0.0, distractors=0, rare=False, gamma=1 / 3, elbo_steps=20,
         elbo_strategy="even", attention_steps=10, attention_t_max=0.2):
    scene, res = explorer.view(SceneKnobs(target_radius, occlusion, distractors, rare, seed), gamma, elbo_steps,
                               elbo_strategy, attention_steps, attention_t_max)
    fig = result_figure(scene.image, res, 0.4, title=", ".join(f"{c}: S={s:.2f}" for c, s in zip(res.classes, res.scores)))
    plt.show()
    return res


# %% tags=["nbval-check-output"]
res = show(target_radius=6.0)
print(dict(zip(res.classes, np.round(res.scores, 3))))

# %%
w.interactive(show, **controls())
