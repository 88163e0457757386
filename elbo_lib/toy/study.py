"""Fixed evaluation splits and the four controlled study sets of Fig. 1.

Study sets hold a target object and vary one factor from the easy to the hard end with
everything else fixed per sample (same positions, colours and companions):
``smaller`` (target radius), ``occluded`` (fraction of the target hidden by a companion drawn on
top), ``distractors`` (small copies of a companion's class packed around the target, nearest free
spots first) and ``rare`` (the target's shape swapped for progressively rarer training shapes, ending at
the rare class).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from ..paths import CACHE_DIR, atomic_write
from .world import COLOURS, RARE_SHAPE, Scene, ToyObject, WorldConfig, make_caption, render, sample_scene, shape_mask

SPLITS = {"toy-val": 1, "toy-test": 2}
FRESH = "toy-fresh-"  # toy-fresh-<k>, k >= 1: further splits like toy-test, each drawn with its own seed
STUDIES = ("smaller", "occluded", "distractors", "rare")


@dataclass
class ToyItem:
    """One evaluation image: scene, its caption, the classes to segment, and study metadata."""

    id: str
    scene: Scene
    caption: str
    classes: list[str]
    study: str = ""
    level: int = -1
    knob: float = float("nan")
    target: str = ""

    @property
    def image(self) -> np.ndarray:
        return self.scene.image

    def label_map(self) -> np.ndarray:
        return self.scene.label_map(self.classes)


def _key(**kw) -> str:
    return hashlib.sha1(json.dumps(kw, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _save_items(path: Path, items: list[ToyItem]) -> None:
    meta = [{"id": it.id, "caption": it.caption, "classes": it.classes, "study": it.study, "level": it.level,
             "knob": it.knob, "target": it.target, "objects": [asdict(o) for o in it.scene.objects]} for it in items]
    atomic_write(path, lambda tmp: np.savez_compressed(
        tmp, images=np.stack([it.scene.image for it in items]),
        instances=np.stack([it.scene.instances for it in items]).astype(np.uint8), meta=np.array(json.dumps(meta))))


def _load_items(path: Path) -> list[ToyItem]:
    d = np.load(path)
    meta = json.loads(str(d["meta"]))
    return [ToyItem(m["id"], Scene(d["images"][i], d["instances"][i].astype(np.int64),
                                   [ToyObject(**o) for o in m["objects"]]),
                    m["caption"], m["classes"], m["study"], m["level"], m["knob"], m["target"])
            for i, m in enumerate(meta)]


def _cached(name: str, build, cache_dir: Path | None, **key) -> list[ToyItem]:
    cache_dir = Path(cache_dir or CACHE_DIR) / "toy-data"
    path = cache_dir / f"{name}-{_key(name=name, **key)}.npz"
    if path.exists():
        return _load_items(path)
    items = build()
    _save_items(path, items)
    return items


def split_seed(name: str) -> list[int]:
    """The generator seed of a toy split: toy-val's and toy-test's fixed ones, or toy-fresh-<k>'s (k >= 1), a
    sequence no other split or training run uses, so the fresh splits are independent draws."""
    if name in SPLITS:
        return [SPLITS[name], 1000]
    k = name[len(FRESH):]
    if name.startswith(FRESH) and k.isdigit() and int(k) >= 1:
        return [int(k), 2000]
    raise ValueError(f"unknown toy split {name!r}; choose from {list(SPLITS)} or {FRESH}<k> (k >= 1)")


def eval_split(name: str = "toy-test", n: int = 300, world: WorldConfig = WorldConfig(),
               cache_dir: Path | None = None) -> list[ToyItem]:
    """``toy-val`` / ``toy-test`` / ``toy-fresh-<k>``: scenes from the training distribution with their own seeds."""
    seed = split_seed(name)
    if n < 1:
        raise ValueError(f"split size must be >= 1, got {n}")

    def build():
        rng = np.random.default_rng(seed)
        out = []
        for i in range(n):
            s = sample_scene(world, rng)
            out.append(ToyItem(f"{name}-{i:04d}", s, s.caption(), s.classes))
        return out
    return _cached(name, build, cache_dir, n=n, world=asdict(world))


def _companions(rng, target_colour: str, target_shape: str, shapes: list[str], k: int = 2) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    while len(out) < k:
        c = (str(rng.choice(list(COLOURS))), str(rng.choice(shapes)))
        if c != (target_colour, target_shape) and c not in out and c[0] != target_colour:
            out.append(c)
    return out


def place_apart(rng, size: int, radii: list[float], fixed: list[tuple[float, float, float]], gap: float = 1.0,
                 tries: int = 500) -> list[tuple[float, float]]:
    """Centres for ``radii`` that keep every object's bounding circle clear of the others."""
    placed = list(fixed)
    out = []
    for r in radii:
        for _ in range(tries):
            x, y = rng.uniform(r, size - r, size=2)
            if all(np.hypot(x - px, y - py) >= r + pr + gap for px, py, pr in placed):
                placed.append((x, y, r)); out.append((float(x), float(y)))
                break
        else:
            raise ValueError(f"could not place {len(radii)} objects clear of each other in {size}px")
    return out


STUDY_LEVELS = {
    "smaller": [14.0, 11.0, 8.0, 6.0, 4.5],
    "occluded": [0.0, 0.2, 0.4, 0.6, 0.75],
    "distractors": [0, 1, 2, 4, 6],
    "rare": ["circle", "triangle", "diamond", RARE_SHAPE],
}


# bumped when a study's construction changes, so cached sets made by older code are not reused
STUDY_DESIGN = {"smaller": 1, "occluded": 1, "distractors": 2, "rare": 1}  # distractors 2: copies around the target


def study_set(study: str, n_per_level: int = 40, world: WorldConfig = WorldConfig(), seed: int = 0,
              cache_dir: Path | None = None) -> list[ToyItem]:
    """One of the four Fig. 1 study sets (see module docstring); levels go from easy to hard."""
    if study not in STUDIES:
        raise ValueError(f"unknown study {study!r}; choose from {list(STUDIES)}")
    if n_per_level < 1:
        raise ValueError(f"n_per_level must be >= 1, got {n_per_level}")

    def build():
        return [it for i in range(n_per_level) for it in _study_sample(study, i, world, seed)]
    return _cached(f"study-{study}", build, cache_dir, n=n_per_level, seed=seed, world=asdict(world),
                   levels=STUDY_LEVELS[study], design=STUDY_DESIGN[study])


def _study_sample(study: str, i: int, world: WorldConfig, seed: int) -> list[ToyItem]:
    rng = np.random.default_rng([seed, STUDIES.index(study), i])
    size = world.image_size
    common = [s for s in world.common_shapes]
    t_colour = str(rng.choice(list(COLOURS)))
    t_shape = "circle" if study == "rare" else str(rng.choice(common))
    comps = _companions(rng, t_colour, t_shape, common, k=2)
    r_t, r_c = 11.0, 9.0
    (tx, ty), (ax, ay), (bx, by) = place_apart(rng, size, [14.0, r_c, r_c], [], gap=2.0)
    tex_seed = int(rng.integers(2**31))
    items = []
    for lvl, knob in enumerate(STUDY_LEVELS[study]):
        target = ToyObject(t_colour, t_shape, tx, ty, r_t)
        a = ToyObject(comps[0][0], comps[0][1], ax, ay, r_c)
        b = ToyObject(comps[1][0], comps[1][1], bx, by, r_c)
        objs = [target, a, b]
        if study == "smaller":
            objs[0] = ToyObject(t_colour, t_shape, tx, ty, float(knob))
        elif study == "rare":
            objs[0] = ToyObject(t_colour, str(knob), tx, ty, r_t)
        elif study == "occluded" and knob > 0:
            objs = [target, b, occluder(target, a, float(knob), size)]
        elif study == "distractors" and knob > 0:
            objs = objs + copies_around(target, a, int(knob), [a, b], size, np.random.default_rng([seed, 99, i]))
        scene = render(objs, size, np.random.default_rng(tex_seed), world.texture)
        hidden = 1.0 - scene.visible_area(0) / shape_mask(objs[0].shape, objs[0].cx, objs[0].cy, objs[0].r, size).sum()
        classes = scene.classes
        tgt = objs[0].phrase
        classes = [tgt] + [c for c in classes if c != tgt]
        knob_value = float(hidden) if study == "occluded" else float(lvl) if study == "rare" else float(knob)
        items.append(ToyItem(f"{study}-{i:03d}-{lvl}", scene, make_caption(classes), classes, study, lvl,
                             knob_value, tgt))
    return items


def in_target_colour(items: list[ToyItem], world: WorldConfig = WorldConfig()) -> list[ToyItem]:
    """The ``distractors`` study with the copied background object and its copies drawn in the target's colour
    (same shapes, positions and sizes; the caption stays fixed across a sample's levels). Samples where the
    recoloured object would have the target's own class are dropped. Not one of the four Fig. 1 studies: it
    tells whether crowding weakens the target's map through a shared attribute (its colour word)."""
    out = []
    for it in items:
        if it.study != "distractors":
            raise ValueError(f"in_target_colour takes items of the 'distractors' study, got {it.study!r} ({it.id})")
        target, like = it.scene.objects[0], it.scene.objects[1]
        if like.shape == target.shape:
            continue
        objs = [replace(o, colour=target.colour) if o.phrase == like.phrase else o for o in it.scene.objects]
        seed = int.from_bytes(hashlib.sha256(it.id.encode()).digest()[:4], "little")
        scene = render(objs, world.image_size, np.random.default_rng(seed), world.texture)
        classes = [target.phrase] + [c for c in scene.classes if c != target.phrase]
        out.append(ToyItem(it.id, scene, make_caption(classes), classes, it.study, it.level, it.knob, it.target))
    return out


def copies_around(target: ToyObject, like: ToyObject, n: int, others: list[ToyObject], size: int,
                  rng: np.random.Generator, radii: tuple[float, ...] = (6.0, 5.0, 4.0), gap: float = 1.0,
                  candidates: int = 4000) -> list[ToyObject]:
    """``n`` small copies of ``like`` surrounding ``target``: among ``candidates`` uniformly drawn centres, the
    nearest to the target that keep every bounding circle ``gap`` px clear of the target, ``others`` and the
    copies already placed. Copies shrink (radius 6 -> 5 -> 4 px) only when ``n`` do not fit; the first
    copies are the same for every ``n`` at a given radius, so the levels of a study sample are nested."""
    if n < 0:
        raise ValueError(f"number of copies must be >= 0, got {n}")
    u = rng.random((candidates, 2))  # the same candidates, rescaled, at every radius and every n
    for r in radii:
        c = r + (size - 2 * r) * u
        c = c[np.argsort(np.hypot(c[:, 0] - target.cx, c[:, 1] - target.cy), kind="stable")]
        placed = [(o.cx, o.cy, o.r) for o in [target, *others]]
        out: list[ToyObject] = []
        for x, y in c:
            if len(out) == n:
                break
            if all(np.hypot(x - px, y - py) >= r + pr + gap for px, py, pr in placed):
                placed.append((x, y, r)); out.append(ToyObject(like.colour, like.shape, float(x), float(y), r))
        if len(out) == n:
            return out
    raise ValueError(f"could not place {n} copies of radius >= {min(radii)} px around the target in {size}px")


def occluder(target: ToyObject, other: ToyObject, fraction: float, size: int) -> ToyObject:
    """``other`` moved so that it hides about ``fraction`` of the target (drawn on top)."""
    tm = shape_mask(target.shape, target.cx, target.cy, target.r, size)
    area = tm.sum()
    best, best_err = None, 9.0
    r = max(other.r, 1.25 * target.r)
    for ang in np.linspace(0, 2 * np.pi, 16, endpoint=False):
        for d in np.linspace(0, 2 * (target.r + r), 40):
            cx, cy = target.cx + d * np.cos(ang), target.cy + d * np.sin(ang)
            if not (r <= cx <= size - r and r <= cy <= size - r):
                continue
            om = shape_mask(other.shape, cx, cy, r, size)
            err = abs((tm & om).sum() / area - fraction)
            if err < best_err:
                best, best_err = ToyObject(other.colour, other.shape, float(cx), float(cy), float(r)), err
        if best_err < 0.03:
            break
    if best is None:
        raise ValueError(f"could not hide {fraction:.0%} of the target")
    return best
