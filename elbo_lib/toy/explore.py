"""The toy widget explorer (``notebooks/explore_toy``, served as a page by ``make explore``).

A scene is built from the knobs (target size, occlusion, distractor copies, unrelated or in the target's
colour, rare class); the model is measured once per scene on the superset timesteps (memoised), so gamma,
ELBO timestep count and strategy, and attention timesteps only re-run the cheap finalize step.
:class:`ToyExplorer` is the logic (testable without a browser), :class:`ExplorerApp` the page.
"""
from __future__ import annotations

import dataclasses
import html
import io
from dataclasses import dataclass

import ipywidgets as w
import numpy as np
from matplotlib import image as mpimg
from matplotlib.figure import Figure

from ..ablations import SUPERSET, attention_subset, elbo_subset, superset_config
from ..aligner import Aligner, AlignmentResult, Measurement, finalize
from ..plotting import mask_rgb, overlay
from .study import copies_around, occluder, place_apart
from .world import RARE_SHAPE, Scene, ToyObject, make_caption, render


@dataclass(frozen=True)
class SceneKnobs:
    target_radius: float = 11.0
    occlusion: float = 0.0
    distractors: int = 0
    distractor_colour: str = "unrelated"  # or "target's colour": the copied object and its copies drawn red
    rare: bool = False
    seed: int = 0

    def __post_init__(self):
        if not 3 <= self.target_radius <= 16:
            raise ValueError(f"target_radius must be in [3, 16] pixels, got {self.target_radius}")
        if not 0 <= self.occlusion <= 0.8:
            raise ValueError(f"occlusion must be in [0, 0.8], got {self.occlusion}")
        if not 0 <= self.distractors <= 8:
            raise ValueError(f"distractors must be in 0..8, got {self.distractors}")
        if self.distractor_colour not in DISTRACTOR_COLOURS:
            raise ValueError(f"distractor_colour must be one of {DISTRACTOR_COLOURS}, got {self.distractor_colour!r}")


DISTRACTOR_COLOURS = ("unrelated", "target's colour")


def build_scene(k: SceneKnobs, size: int = 64) -> Scene:
    """Target 'red circle' (or 'red heart' when rare) with a blue square and a green triangle (a red triangle
    when the distractors are in the target's colour: the triangle is the object they copy)."""
    rng = np.random.default_rng([k.seed, 5])
    (tx, ty), (ax, ay), (bx, by) = place_apart(rng, size, [14.0, 9.0, 9.0], [], gap=2.0)
    target = ToyObject("red", RARE_SHAPE if k.rare else "circle", tx, ty, float(k.target_radius))
    like = "red" if k.distractor_colour == "target's colour" else "green"
    a, b = ToyObject("blue", "square", ax, ay, 9.0), ToyObject(like, "triangle", bx, by, 9.0)
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

    def measured(self, knobs: SceneKnobs) -> bool:
        """Whether ``knobs``' scene is measured already (a view of it calls no model)."""
        return knobs in self._measured

    def measure(self, knobs: SceneKnobs, progress: bool = False) -> tuple[Scene, Measurement]:
        if knobs not in self._measured:
            scene = build_scene(knobs)
            m = self.aligner.measure(scene.image, scene.classes, make_caption(scene.classes), seed=knobs.seed,
                                     progress=progress)
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


# gamma's choices: a 0.05 grid and the paper's 1/3 itself. A float slider cannot hold 1/3 on a 0.05 grid: the
# browser's slider snaps it to 0.35 and sends that back, so the page would show another gamma than the library's.
GAMMAS = tuple(sorted({round(0.1 + 0.05 * k, 2) for k in range(19)} | {1 / 3}))

# The explorer's knobs, in the order of ``SceneKnobs`` then ``ToyExplorer.view``; the notebook's
# sliders are built from this table (``controls``), and the tests check it against both signatures.
CONTROLS = (
    Control("target_radius", 11.0, range=(3.0, 16.0, 0.5)),
    Control("occlusion", 0.0, range=(0.0, 0.8, 0.05)),
    Control("distractors", 0, range=(0, 8, 1)),
    Control("distractor_colour", "unrelated", choices=DISTRACTOR_COLOURS),
    Control("rare", False),
    Control("gamma", 1 / 3, choices=GAMMAS),
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
    out, style = {}, {"description_width": "130px"}  # the knob names in full
    for c in CONTROLS:
        if c.choices is not None:
            numeric = all(isinstance(v, (int, float)) for v in c.choices)
            options = [(f"{v:.3g}", v) for v in c.choices] if numeric else list(c.choices)
            out[c.name] = (w.SelectionSlider if numeric and len(c.choices) > 3 else w.Dropdown)(
                options=options, value=c.default, description=c.name, style=style)
        elif c.range is not None:
            lo, hi, step = c.range
            cls = w.IntSlider if isinstance(c.default, int) and not isinstance(c.default, bool) else w.FloatSlider
            out[c.name] = cls(value=c.default, min=lo, max=hi, step=step, description=c.name, style=style)
        else:
            out[c.name] = w.Checkbox(value=bool(c.default), description=c.name, style=style)
    return out


# knobs that change the scene (a new model measurement); the others only re-run finalize
SCENE_KNOBS = tuple(f.name for f in dataclasses.fields(SceneKnobs) if f.name != "seed")


def png(rgb: np.ndarray, scale: int = 3) -> bytes:
    """A uint8 (H, W, 3) image as PNG bytes, enlarged ``scale`` times (nearest neighbour: the toy pixels stay sharp)."""
    buf = io.BytesIO()
    mpimg.imsave(buf, np.kron(rgb, np.ones((scale, scale, 1), dtype=np.uint8)), format="png")
    return buf.getvalue()


def heatmap_panel(image: np.ndarray, res: AlignmentResult, threshold: float) -> bytes:
    """Raw (top) and calibrated (bottom) heatmaps per class over the scene, and the calibrated mask, as PNG."""
    n = len(res.classes)
    fig = Figure(figsize=(1.9 * (n + 1), 4.0))
    axes = fig.subplots(2, n + 1, squeeze=False)
    for row, (maps, label) in enumerate(((res.raw, "raw"), (res.heatmaps, "calibrated"))):
        for i, c in enumerate(res.classes):
            axes[row, i].imshow(overlay(image, maps[i]))
            axes[row, i].set_title(f"{label}: {c}", fontsize=8)
        axes[row, n].imshow(mask_rgb(res.mask(threshold, calibrated=row == 1), n))
        axes[row, n].set_title(f"{label} mask @ {threshold}", fontsize=8)
    for ax in axes.ravel():
        ax.axis("off")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    return buf.getvalue()


def scores_html(res: AlignmentResult) -> str:
    """Per class: S_i and the mean ELBO loss over the chosen timesteps, as an HTML table the browser test reads
    (each row ``data-class``; S in a ``td.score``, three decimals)."""
    rows = "".join(f'<tr data-class="{html.escape(c)}"><td>{html.escape(c)}</td><td class="score">{s:.3f}</td>'
                   f'<td class="elbo">{e:.4f}</td></tr>' for c, s, e in zip(res.classes, res.scores, res.elbo.mean(1)))
    return ('<table class="elbo-scores"><tr><th>class</th><th>S</th><th>mean ELBO loss</th></tr>'
            f"{rows}</table>")


class ExplorerApp:
    """The explorer page: the :data:`CONTROLS` widgets, the scene, raw and calibrated heatmaps with masks, and
    the per-class S and ELBO. Scene knobs re-measure (with a progress bar); the others re-calibrate the cached
    measurement. A knob combination the library refuses shows its message instead of a traceback."""

    def __init__(self, explorer: ToyExplorer, seed: int = 0, threshold: float = 0.4):
        self.explorer, self.seed, self.threshold = explorer, seed, threshold
        self.controls = controls()
        self.status = w.HTML().add_class("elbo-status")
        self.progress = w.Output()
        self.scene = w.Image(format="png").add_class("elbo-scene")
        self.heatmaps = w.Image(format="png").add_class("elbo-heatmaps")
        self.scores = w.HTML().add_class("elbo-scores-box")
        self.result: AlignmentResult | None = None
        for c in self.controls.values():
            c.observe(self._changed, names="value")
        knobs = w.VBox([w.HTML("<b>scene</b> (re-measures)")] + [self.controls[n] for n in SCENE_KNOBS]
                       + [w.HTML("<b>calibration</b> (no model call)")]
                       + [v for n, v in self.controls.items() if n not in SCENE_KNOBS])
        self.widget = w.HBox([knobs, w.VBox([self.status, self.progress, w.HBox([self.scene, self.scores]),
                                             self.heatmaps])])
        self.update()

    def knob_values(self) -> dict:
        return {n: c.value for n, c in self.controls.items()}

    def _changed(self, _change) -> None:
        self.update()

    def update(self) -> None:
        v = self.knob_values()
        try:
            knobs = SceneKnobs(**{n: v[n] for n in SCENE_KNOBS}, seed=self.seed)
            if not self.explorer.measured(knobs):
                self.status.value = "measuring the scene (one model pass over the superset timesteps)..."
                with self.progress:
                    self.explorer.measure(knobs, progress=True)
                self.progress.clear_output()
            scene, res = self.explorer.view(knobs, **{n: v[n] for n in v if n not in SCENE_KNOBS})
        except ValueError as e:  # a refused knob combination: say why, keep the last good picture
            self.status.value = f'<span class="elbo-error" style="color:#b00">cannot show this: {html.escape(str(e))}</span>'
            return
        self.result = res
        self.scene.value = png(scene.image)
        self.heatmaps.value = heatmap_panel(scene.image, res, self.threshold)
        self.scores.value = scores_html(res)
        self.status.value = (f'<span class="elbo-ok">{html.escape(res.caption)}: {self.explorer.model_calls} model '
                             f"measurement(s) so far</span>")
