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
from elbo_lib.explore import SceneKnobs, ToyExplorer, widget_ranges
from elbo_lib.plotting import result_figure

explorer = ToyExplorer(load_pipeline(model, device=device), model)
R = widget_ranges()


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
w.interactive(show, target_radius=w.FloatSlider(value=11, min=R["target_radius"][0], max=R["target_radius"][1], step=R["target_radius"][2]),
              occlusion=w.FloatSlider(value=0, min=R["occlusion"][0], max=R["occlusion"][1], step=R["occlusion"][2]),
              distractors=w.IntSlider(value=0, min=R["distractors"][0], max=R["distractors"][1]),
              rare=w.Checkbox(value=False),
              gamma=w.FloatSlider(value=1 / 3, min=R["gamma"][0], max=R["gamma"][1], step=R["gamma"][2]),
              elbo_steps=w.SelectionSlider(options=R["elbo_steps"], value=20),
              elbo_strategy=w.Dropdown(options=R["elbo_strategy"], value="even"),
              attention_steps=w.SelectionSlider(options=R["attention_steps"], value=10),
              attention_t_max=w.Dropdown(options=R["attention_t_max"], value=0.2))
