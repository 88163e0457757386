"""The toy world: procedural scenes of coloured shapes with captions and exact visible masks.

A scene is a list of objects drawn in order (later objects occlude earlier ones) on a lightly
textured grey background. Every knob that biases the *training* distribution is an explicit
field of :class:`WorldConfig` and is saved next to the trained model.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field

import numpy as np

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 225),
    "yellow": (235, 210, 40),
    "purple": (150, 50, 200),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross", "diamond", "heart")
RARE_SHAPE = "heart"
BACKGROUND_GREY = 128
FILLER_WORDS: tuple[str, ...] = ("a", "and", "photo", "of", ",")


def check_colour(colour: str) -> str:
    if colour not in COLOURS:
        raise ValueError(f"unknown colour {colour!r}; allowed colours: {sorted(COLOURS)}")
    return colour


def check_shape(shape: str) -> str:
    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}; allowed shapes: {list(SHAPES)}")
    return shape


def shape_mask(shape: str, cx: float, cy: float, r: float, size: int) -> np.ndarray:
    """Boolean (size, size) mask of ``shape`` centred at (cx, cy) with bounding half-width r."""
    check_shape(shape)
    if not r > 0:
        raise ValueError(f"object radius must be > 0, got {r}")
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) + 0.5
    u, v = (xx - cx) / r, (yy - cy) / r  # unit box coordinates, v grows downwards
    if shape == "circle":
        m = u**2 + v**2 <= 1.0
    elif shape == "square":
        m = (np.abs(u) <= 0.85) & (np.abs(v) <= 0.85)
    elif shape == "triangle":  # apex up, base at v = 0.8
        m = (v <= 0.8) & (v >= -1.0) & (np.abs(u) <= (v + 1.0) / 1.8 * 0.95)
    elif shape == "diamond":
        m = np.abs(u) + np.abs(v) <= 1.0
    elif shape == "cross":
        m = ((np.abs(u) <= 0.33) & (np.abs(v) <= 1.0)) | ((np.abs(v) <= 0.33) & (np.abs(u) <= 1.0))
    elif shape == "star":  # five-pointed star: polar radius modulated
        ang = np.arctan2(u, -v)
        rho = np.sqrt(u**2 + v**2)
        k = np.cos(np.pi / 5) / np.cos((ang % (2 * np.pi / 5)) - np.pi / 5)
        inner = 0.45
        # interpolate between inner and outer radius along each spike
        frac = np.abs(((ang % (2 * np.pi / 5)) / (2 * np.pi / 5)) - 0.5) * 2  # 1 at tips, 0 between
        m = rho <= (inner + (1.0 - inner) * frac**1.5) * np.minimum(k, 1.2)
    elif shape == "heart":
        x, y = u * 1.15, -(v * 1.15) + 0.15
        m = (x**2 + y**2 - 1) ** 3 - x**2 * y**3 <= 0
    return m


@dataclass(frozen=True)
class ToyObject:
    colour: str
    shape: str
    cx: float
    cy: float
    r: float

    @property
    def phrase(self) -> str:
        return f"{self.colour} {self.shape}"


@dataclass
class Scene:
    """A rendered scene: image (H, W, 3) uint8, instance map (H, W) int (0 = background,
    k + 1 = objects[k]), and the object list in drawing order."""

    image: np.ndarray
    instances: np.ndarray
    objects: list[ToyObject]

    @property
    def classes(self) -> list[str]:
        """Unique class phrases in order of first appearance."""
        seen: list[str] = []
        for o in self.objects:
            if o.phrase not in seen:
                seen.append(o.phrase)
        return seen

    def class_mask(self, phrase: str) -> np.ndarray:
        ids = [k + 1 for k, o in enumerate(self.objects) if o.phrase == phrase]
        return np.isin(self.instances, ids)

    def label_map(self, classes: list[str] | None = None) -> np.ndarray:
        """(H, W) ints: 0 background, i + 1 for classes[i] (default: self.classes)."""
        classes = self.classes if classes is None else classes
        out = np.zeros(self.instances.shape, dtype=np.int64)
        for i, c in enumerate(classes):
            out[self.class_mask(c)] = i + 1
        return out

    def visible_area(self, k: int) -> int:
        return int((self.instances == k + 1).sum())

    def caption(self, nouns_only: bool = False) -> str:
        return make_caption(self.classes, nouns_only=nouns_only)


def make_caption(phrases: list[str], nouns_only: bool = False, prefix: str = "") -> str:
    """'a red circle and a blue star' / 'a red circle, a blue star and a green cross'."""
    if not phrases:
        return prefix.strip()
    words = [p.split()[-1] if nouns_only else p for p in phrases]
    items = [f"a {w}" for w in words]
    body = items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]
    return (prefix + body).strip()


def render(objects: list[ToyObject], size: int, rng: np.random.Generator, texture: float = 6.0) -> Scene:
    """Draw objects in order on a textured grey background; masks are the visible pixels."""
    img = np.full((size, size, 3), float(BACKGROUND_GREY))
    if texture > 0:
        img += rng.normal(0.0, texture, size=(size, size, 1))
    inst = np.zeros((size, size), dtype=np.int64)
    for k, o in enumerate(objects):
        m = shape_mask(o.shape, o.cx, o.cy, o.r, size)
        img[m] = COLOURS[check_colour(o.colour)]
        inst[m] = k + 1
    return Scene(np.clip(np.round(img), 0, 255).astype(np.uint8), inst, list(objects))


def _zipf_probs(n: int, exponent: float) -> np.ndarray:
    p = 1.0 / np.arange(1, n + 1) ** exponent
    return p / p.sum()


@dataclass(frozen=True)
class WorldConfig:
    """Knobs of the training distribution (all recorded with the model)."""

    image_size: int = 64
    n_objects: tuple[float, ...] = (0.2, 0.35, 0.25, 0.12, 0.08)  # P(1..5 objects)
    shape_zipf: float = 0.6          # Zipf exponent over the common shapes (long tail)
    rare_frequency: float = 0.008    # P(a scene contains the rare shape)
    radius: tuple[float, float] = (6.0, 15.0)  # object half-width range, pixels
    max_occlusion: float = 0.4       # largest hidden fraction allowed per object
    texture: float = 0.0             # std of the background texture (0: plain; texture noise in the latents
                                     # drowns the low-t regime where attention is read)
    colour_drop: float = 0.1         # P(an object's colour is omitted from the caption)
    photo_prefix: float = 0.3        # P(caption starts with "a photo of")
    caption_dropout: float = 0.1     # P(empty caption), for classifier-free guidance
    common_shapes: tuple[str, ...] = field(default=tuple(s for s in SHAPES if s != RARE_SHAPE))

    def __post_init__(self):
        def prob(name, v):
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"{name} must be a probability in [0, 1], got {v}")
        for name in ("rare_frequency", "max_occlusion", "colour_drop", "photo_prefix", "caption_dropout"):
            prob(name, getattr(self, name))
        if self.image_size < 16:
            raise ValueError(f"image_size must be >= 16, got {self.image_size}")
        if len(self.n_objects) < 1 or len(self.n_objects) > 5 or any(p < 0 for p in self.n_objects):
            raise ValueError(f"n_objects must list 1..5 non-negative probabilities for 1..5 objects, got {self.n_objects}")
        if abs(sum(self.n_objects) - 1.0) > 1e-6:
            raise ValueError(f"n_objects probabilities must sum to 1, got {sum(self.n_objects)}")
        lo, hi = self.radius
        if not (0 < lo <= hi):
            raise ValueError(f"radius must be (min, max) with 0 < min <= max, got {self.radius}")
        if hi > self.image_size / 2:
            raise ValueError(f"radius max {hi} does not fit an image of {self.image_size} px (max {self.image_size / 2})")
        if self.shape_zipf < 0:
            raise ValueError(f"shape_zipf must be >= 0, got {self.shape_zipf}")
        for s in self.common_shapes:
            check_shape(s)
        if RARE_SHAPE in self.common_shapes:
            raise ValueError(f"the rare shape {RARE_SHAPE!r} cannot be a common shape")
        if self.texture < 0:
            raise ValueError(f"texture must be >= 0, got {self.texture}")

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2)

    @classmethod
    def from_dict(cls, d: dict) -> "WorldConfig":
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


def place_objects(specs: list[tuple[str, str, float]], cfg: WorldConfig, rng: np.random.Generator,
                  max_tries: int = 200) -> list[ToyObject]:
    """Place (colour, shape, radius) specs so that no object is hidden beyond cfg.max_occlusion."""
    size = cfg.image_size
    placed: list[ToyObject] = []
    for colour, shape, r in specs:
        if r <= 0:
            raise ValueError(f"object radius must be > 0, got {r}")
        if 2 * r > size:
            raise ValueError(f"object radius {r} does not fit an image of {size} px")
        for _ in range(max_tries):
            cx, cy = rng.uniform(r, size - r, size=2)
            cand = placed + [ToyObject(colour, shape, float(cx), float(cy), float(r))]
            if _occlusion_ok(cand, size, cfg.max_occlusion):
                placed = cand
                break
        else:
            raise ValueError(
                f"could not place {len(specs)} objects of radius up to {max(s[2] for s in specs):.1f} in a "
                f"{size}px image with max_occlusion={cfg.max_occlusion}; use fewer or smaller objects")
    return placed


def _occlusion_ok(objects: list[ToyObject], size: int, max_occlusion: float) -> bool:
    masks = [shape_mask(o.shape, o.cx, o.cy, o.r, size) for o in objects]
    covered = np.zeros((size, size), dtype=bool)
    for m in reversed(masks):  # walk from the top-most object down
        area = m.sum()
        if area == 0 or (m & covered).sum() / area > max_occlusion:
            return False
        covered |= m
    return True


def sample_scene(cfg: WorldConfig, rng: np.random.Generator) -> Scene:
    """One training-distribution scene (distinct classes within a scene)."""
    n = int(rng.choice(len(cfg.n_objects), p=np.asarray(cfg.n_objects))) + 1
    shapes = list(cfg.common_shapes)
    p_shape = _zipf_probs(len(shapes), cfg.shape_zipf)
    # P(scene has the rare shape) = rare_frequency: include it at most once
    with_rare = rng.random() < cfg.rare_frequency
    chosen: list[tuple[str, str]] = []
    if with_rare:
        chosen.append((str(rng.choice(list(COLOURS))), RARE_SHAPE))
    while len(chosen) < n:
        c = (str(rng.choice(list(COLOURS))), str(shapes[rng.choice(len(shapes), p=p_shape)]))
        if c not in chosen:
            chosen.append(c)
    order = rng.permutation(len(chosen))
    lo, hi = cfg.radius
    specs = [(chosen[i][0], chosen[i][1], float(rng.uniform(lo, hi))) for i in order]
    try:
        objs = place_objects(specs, cfg, rng)
    except ValueError:  # crowded draw: shrink uniformly and retry once, deterministic given rng
        specs = [(c, s, max(lo, r * 0.7)) for c, s, r in specs]
        objs = place_objects(specs, cfg, rng, max_tries=1000)
    return render(objs, cfg.image_size, rng, cfg.texture)


def training_caption(classes: list[str], cfg: WorldConfig, rng: np.random.Generator) -> str:
    """Caption of a scene's classes with the training-time augmentations (colour drop, prefix, dropout)."""
    if rng.random() < cfg.caption_dropout:
        return ""
    phrases = [p if rng.random() >= cfg.colour_drop else p.split()[-1] for p in classes]
    order = rng.permutation(len(phrases))
    prefix = "a photo of " if rng.random() < cfg.photo_prefix else ""
    return make_caption([phrases[i] for i in order], prefix=prefix)


def vocabulary() -> list[str]:
    """Every word the toy captions use."""
    return list(FILLER_WORDS) + list(COLOURS) + list(SHAPES)


def untrained_words(phrases: list[str]) -> list[str]:
    """The words of ``phrases`` that no toy caption uses (the toy model never saw them), in order."""
    known = set(vocabulary())
    seen: list[str] = []
    for w in (w for p in phrases for w in p.lower().split()):
        if w not in known and w not in seen:
            seen.append(w)
    return seen


def parse_phrase(phrase: str) -> tuple[str | None, str]:
    """'red circle' -> ('red', 'circle'); 'circle' -> (None, 'circle'); unknown words -> ValueError."""
    words = phrase.strip().lower().split()
    if len(words) == 1:
        return None, check_shape(words[0])
    if len(words) == 2:
        return check_colour(words[0]), check_shape(words[1])
    raise ValueError(f"a toy class phrase is '[colour] shape', got {phrase!r}; colours {sorted(COLOURS)}, shapes {list(SHAPES)}")


def parse_prompt(prompt: str) -> list[tuple[str | None, str]]:
    """Objects named in a toy caption ('a red circle and a blue star'); unknown words -> ValueError."""
    words = prompt.lower().replace(",", " , ").split()
    known = set(vocabulary())
    for w in words:
        if w not in known:
            raise ValueError(f"unknown word {w!r} in prompt {prompt!r}; allowed colours {sorted(COLOURS)}, "
                             f"shapes {list(SHAPES)}, other words {list(FILLER_WORDS)}")
    out, colour = [], None
    for w in words:
        if w in COLOURS:
            colour = w
        elif w in SHAPES:
            out.append((colour, w))
            colour = None
    return out
