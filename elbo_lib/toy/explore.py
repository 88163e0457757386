"""Logic behind the toy widget explorer (``notebooks/explore_toy``), testable without a browser.

A scene is built from the knobs (target size, occlusion, distractor copies, rare class); the model
is measured once per scene on the superset timesteps (memoised), so gamma, ELBO timestep count
and strategy, and attention timesteps only re-run the cheap finalize step.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import ipywidgets as w
import numpy as np

from ..ablations import SUPERSET, attention_subset, elbo_subset, superset_config
from ..aligner import Aligner, AlignmentResult, Measurement, finalize
from .study import copies_around, occluder, place_apart
from .world import RARE_SHAPE, Scene, ToyObject, make_caption, render


@dataclass(frozen=True)
class SceneKnobs:
    target_radius: float = 11.0
    occlusion: float = 0.0
    distractors: int = 0
    rare: bool = False
    seed: int = 0

    def __post_init__(self):
        if not 3 <= self.target_radius <= 16:
            raise ValueError(f"target_radius must be in [3, 16] pixels, got {self.target_radius}")
        if not 0 <= self.occlusion <= 0.8:
            raise ValueError(f"occlusion must be in [0, 0.8], got {self.occlusion}")
        if not 0 <= self.distractors <= 8:
            raise ValueError(f"distractors must be in 0..8, got {self.distractors}")


def build_scene(k: SceneKnobs, size: int = 64) -> Scene:
    """Target 'red circle' (or 'red heart' when rare) with a blue square and a green triangle."""
    rng = np.random.default_rng([k.seed, 5])
    (tx, ty), (ax, ay), (bx, by) = place_apart(rng, size, [14.0, 9.0, 9.0], [], gap=2.0)
    target = ToyObject("red", RARE_SHAPE if k.rare else "circle", tx, ty, float(k.target_radius))
    a, b = ToyObject("blue", "square", ax, ay, 9.0), ToyObject("green", "triangle", bx, by, 9.0)
    objs = [target, a, b]
    if k.occlusion > 0:
        objs = [target, b, occluder(target, a, k.occlusion, size)]
    if k.distractors:
        objs += copies_around(target, b, k.distractors, objs[1:], size, np.random.default_rng([k.seed, 6]))
    return render(objs, size, np.random.default_rng(k.seed))


class ToyExplorer:
    """``explorer.view(knobs, gamma=..., elbo_steps=..., elbo_strategy=..., attention_steps=...,
    attention_t_max=...)`` -> (scene, result); model calls happen once per distinct scene."""

    def __init__(self, pipe, model_dir: str = "data/toy-sd"):
        self.cfg = superset_config(model_dir)
        self.aligner = Aligner(pipe, self.cfg)
        self._measured: dict[SceneKnobs, tuple[Scene, Measurement]] = {}
        self.model_calls = 0

    def measure(self, knobs: SceneKnobs) -> tuple[Scene, Measurement]:
        if knobs not in self._measured:
            scene = build_scene(knobs)
            m = self.aligner.measure(scene.image, scene.classes, make_caption(scene.classes), seed=knobs.seed)
            self.model_calls += 1
            self._measured[knobs] = (scene, m)
        return self._measured[knobs]

    def view(self, knobs: SceneKnobs, gamma: float = 1 / 3, elbo_steps: int = 20, elbo_strategy: str = "even",
             attention_steps: int = 10, attention_t_max: float = 0.2) -> tuple[Scene, AlignmentResult]:
        scene, m = self.measure(knobs)
        cfg = dataclasses.replace(self.cfg, gamma=gamma)
        res = finalize(m, cfg, elbo_subset(elbo_steps, elbo_strategy), attention_subset(attention_steps, attention_t_max))
        return scene, res


@dataclass(frozen=True)
class Control:
    """One explorer knob: a float or int range (lo, hi, step), a list of choices, or a switch."""

    name: str
    default: object
    range: tuple | None = None
    choices: tuple | None = None


# The explorer's knobs, in the order of ``SceneKnobs`` then ``ToyExplorer.view``; the notebook's
# sliders are built from this table (``controls``), and the tests check it against both signatures.
CONTROLS = (
    Control("target_radius", 11.0, range=(3.0, 16.0, 0.5)),
    Control("occlusion", 0.0, range=(0.0, 0.8, 0.05)),
    Control("distractors", 0, range=(0, 8, 1)),
    Control("rare", False),
    Control("gamma", 1 / 3, range=(0.1, 1.0, 0.05)),
    Control("elbo_steps", 20, choices=(1, 2, 4, 5, 10, 20, 25, 50, 100)),
    Control("elbo_strategy", "even", choices=("even", "random", "small", "middle", "large")),
    Control("attention_steps", 10, choices=(1, 2, 5, 10)),
    Control("attention_t_max", 0.2, choices=(0.2, 0.4, 0.6)),
)


def widget_ranges() -> dict:
    """Each control's range or choices (and the superset they are cut from)."""
    return {**{c.name: (c.range or list(c.choices or (False, True))) for c in CONTROLS}, "superset": SUPERSET}


def controls() -> dict:
    """ipywidgets for every control, from :data:`CONTROLS` (for ``ipywidgets.interactive``)."""
    out = {}
    for c in CONTROLS:
        if c.choices is not None:
            numeric = all(isinstance(v, (int, float)) for v in c.choices)
            out[c.name] = (w.SelectionSlider if numeric and len(c.choices) > 3 else w.Dropdown)(
                options=list(c.choices), value=c.default, description=c.name)
        elif c.range is not None:
            lo, hi, step = c.range
            cls = w.IntSlider if isinstance(c.default, int) and not isinstance(c.default, bool) else w.FloatSlider
            out[c.name] = cls(value=c.default, min=lo, max=hi, step=step, description=c.name)
        else:
            out[c.name] = w.Checkbox(value=bool(c.default), description=c.name)
    return out
