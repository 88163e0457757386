import dataclasses
import inspect

import numpy as np
import pytest

from elbo_lib.ablations import (PAPER_ATT, PAPER_ELBO, SUPERSET_ATT_T, SUPERSET_ELBO_T, attention_subset,
                                elbo_subset)
from elbo_lib.aligner import AlignConfig
from elbo_lib.elbo import attention_timesteps, elbo_timesteps
from elbo_lib.toy.explore import (CONTROLS, ExplorerApp, SceneKnobs, ToyExplorer, build_scene, controls,
                                  widget_ranges)


def test_superset_contains_paper_timesteps():
    np.testing.assert_allclose(SUPERSET_ELBO_T[list(PAPER_ELBO)], elbo_timesteps(20, "even"))
    np.testing.assert_allclose(SUPERSET_ATT_T[list(PAPER_ATT)], attention_timesteps(10, 0.2))
    for s, (lo, hi) in {"small": (0, 0.2), "middle": (0.4, 0.6), "large": (0.7, 0.9)}.items():
        ts = SUPERSET_ELBO_T[list(elbo_subset(10, s))]
        assert len(set(ts)) == 10 and ts.min() >= lo and ts.max() < hi
    np.testing.assert_allclose(SUPERSET_ATT_T[list(attention_subset(5, 0.2))], [0.04, 0.08, 0.12, 0.16, 0.2])
    with pytest.raises(ValueError, match="dividing 100"):
        elbo_subset(7, "even")
    with pytest.raises(ValueError, match="only"):
        attention_subset(20, 0.2)


def test_scene_knobs():
    base = build_scene(SceneKnobs())
    small = build_scene(SceneKnobs(target_radius=5))
    assert small.visible_area(0) < base.visible_area(0) / 3
    occ = build_scene(SceneKnobs(occlusion=0.5))
    assert occ.visible_area(0) < 0.65 * base.visible_area(0)
    crowd = build_scene(SceneKnobs(distractors=4))
    assert len(crowd.objects) == 7 and crowd.classes == base.classes
    assert build_scene(SceneKnobs(rare=True)).objects[0].shape == "heart"
    same = build_scene(SceneKnobs(distractors=4, distractor_colour="target's colour"))
    assert {o.colour for o in same.objects if o.shape == "triangle"} == {"red"} and "red triangle" in same.classes
    for bad in (dict(target_radius=1), dict(occlusion=0.95), dict(distractors=12), dict(distractor_colour="blue")):
        with pytest.raises(ValueError):
            SceneKnobs(**bad)


def test_explorer_caches_model_calls(pipes, monkeypatch):
    import elbo_lib.toy.explore as ex
    monkeypatch.setattr(ex, "superset_config", lambda d: AlignConfig(elbo_steps=100, attention_steps=30,
                                                                     attention_t_max=0.6, caption_item="a {}",
                                                                     batch_size=128))
    e = ToyExplorer(pipes["sd1"])
    k = SceneKnobs(target_radius=8)
    s1, r1 = e.view(k, gamma=1 / 3)
    s2, r2 = e.view(k, gamma=1.0, elbo_steps=5, elbo_strategy="even", attention_steps=5)
    assert e.model_calls == 1
    np.testing.assert_array_equal(r2.heatmaps, r2.raw)  # gamma = 1: no calibration
    assert r1.elbo.shape[1] == 20 and r2.elbo.shape[1] == 5
    e.view(SceneKnobs(target_radius=6))
    assert e.model_calls == 2
    assert set(widget_ranges()) >= {"gamma", "elbo_steps", "elbo_strategy", "attention_steps", "target_radius"}


def _small_superset(monkeypatch):
    import elbo_lib.toy.explore as ex
    monkeypatch.setattr(ex, "superset_config", lambda d: AlignConfig(elbo_steps=100, attention_steps=30,
                                                                     attention_t_max=0.6, caption_item="a {}",
                                                                     batch_size=128))


def test_explorer_app_remeasures_only_for_scene_knobs_and_shows_refusals(pipes, monkeypatch):
    _small_superset(monkeypatch)
    app = ExplorerApp(ToyExplorer(pipes["sd1"]))
    assert app.explorer.model_calls == 1 and app.result is not None and app.scores.value.count("data-class") == 3
    pictures = app.heatmaps.value
    app.controls["gamma"].value = 0.8
    assert app.explorer.model_calls == 1 and app.heatmaps.value != pictures
    assert f"{app.result.scores.min():.3f}" in app.scores.value and app.result.scores.min() >= 0.8 - 1e-6
    app.controls["distractor_colour"].value = "target's colour"
    assert app.explorer.model_calls == 2 and "red triangle" in app.result.classes
    app.controls["elbo_strategy"].value = "small"  # 20 'small' timesteps: fine
    good = app.result
    app.controls["elbo_steps"].value = 50  # only 20 superset timesteps lie in 'small': refused, with the reason
    assert "elbo-error" in app.status.value and "at most 20" in app.status.value
    assert app.result is good


def test_controls_table_matches_the_explorer():
    """One table drives the sliders: its knobs are SceneKnobs' then view()'s, with their defaults."""
    names = [c.name for c in CONTROLS]
    view = inspect.signature(ToyExplorer.view).parameters
    scene = [f.name for f in dataclasses.fields(SceneKnobs) if f.name != "seed"]
    assert names == scene + [p for p in view if p not in ("self", "knobs")]
    defaults = {**{f.name: f.default for f in dataclasses.fields(SceneKnobs)},
                **{p: v.default for p, v in view.items() if v.default is not inspect.Parameter.empty}}
    assert all(c.default == defaults[c.name] for c in CONTROLS)
    ws = controls()
    assert list(ws) == names and all(ws[c.name].value == c.default for c in CONTROLS)


def test_every_default_is_a_value_its_slider_can_hold():
    """The browser's slider snaps a value off its grid (1/3 on a 0.05 grid became 0.35) and sends it back, so
    the page would compute at another setting than the library's defaults."""
    for c in CONTROLS:
        if c.range is not None:
            lo, hi, step = c.range
            assert lo <= c.default <= hi and abs((c.default - lo) / step - round((c.default - lo) / step)) < 1e-9, c
        elif c.choices is not None:
            assert c.default in c.choices, c
    assert dict(controls()["gamma"].options)["0.333"] == 1 / 3  # the paper's gamma itself, labelled
