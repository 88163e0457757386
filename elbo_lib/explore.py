"""Logic behind the toy widget explorer (``notebooks/explore_toy``), testable without a browser.

A scene is built from the knobs (target size, occlusion, distractor copies, rare class); the model
is measured once per scene on the superset timesteps (memoised), so gamma, ELBO timestep count
and strategy, and attention timesteps only re-run the cheap finalize step.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from .aligner import AlignConfig, Aligner, AlignmentResult, Measurement, finalize
from .experiments import SUPERSET, attention_subset, elbo_subset, superset_config
from .toy.study import _occluder, _place_apart, copies_around
from .toy.world import RARE_SHAPE, Scene, ToyObject, make_caption, render


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
    (tx, ty), (ax, ay), (bx, by) = _place_apart(rng, size, [14.0, 9.0, 9.0], [], gap=2.0)
    target = ToyObject("red", RARE_SHAPE if k.rare else "circle", tx, ty, float(k.target_radius))
    a, b = ToyObject("blue", "square", ax, ay, 9.0), ToyObject("green", "triangle", bx, by, 9.0)
    objs = [target, a, b]
    if k.occlusion > 0:
        objs = [target, b, _occluder(target, a, k.occlusion, size)]
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


def widget_ranges() -> dict:
    """Slider ranges for the notebook (kept here so they are tested)."""
    return {"target_radius": (3.0, 16.0, 0.5), "occlusion": (0.0, 0.8, 0.05), "distractors": (0, 8, 1),
            "gamma": (0.1, 1.0, 0.05), "elbo_steps": [1, 2, 4, 5, 10, 20, 25, 50, 100],
            "elbo_strategy": ["even", "random", "small", "middle", "large"], "attention_steps": [1, 2, 5, 10],
            "attention_t_max": [0.2, 0.4, 0.6], "superset": SUPERSET}
