"""Toy prompt sets for the generation side of the paper: compositional prompts in the spirit of
Attend-and-Excite ("a {colour} {shape} and a {colour} {shape}") and prompt-to-prompt edits.

Every prompt names distinct colours and distinct shapes, so the detector's verdict on each object is
unambiguous. The toy captions have no size words (the world's training captions never name a size), so a
prompt cannot ask for a small object: small objects enter the editing study as edits of objects the model
happened to draw small (reported by the edited object's area), and the generation study has the rare class
and three-object prompts instead.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..editing import Edit
from .world import COLOURS, RARE_SHAPE, WorldConfig, make_caption

KINDS = {"two objects": 2, "three objects": 3, "rare class": 2}
DEFAULT_MIX = {"two objects": 0.5, "three objects": 0.3, "rare class": 0.2}


@dataclass(frozen=True)
class CompositionPrompt:
    prompt: str
    objects: tuple[tuple[str, str], ...]  # (colour, shape) in prompt order
    kind: str

    @property
    def phrases(self) -> list[str]:
        """The prompt's noun phrases as spaCy's noun chunks give them (determiner included)."""
        return [f"a {c} {s}" for c, s in self.objects]

    @property
    def classes(self) -> list[str]:
        return [f"{c} {s}" for c, s in self.objects]


def _objects(rng: np.random.Generator, n: int, shapes: list[str], must: str | None = None) -> tuple:
    colours = [str(c) for c in rng.choice(list(COLOURS), n, replace=False)]
    pool = [s for s in shapes if s != must]
    picked = [str(s) for s in rng.choice(pool, n - (must is not None), replace=False)]
    if must is not None:
        picked.insert(int(rng.integers(0, n)), must)
    return tuple(zip(colours, picked))


def composition_prompts(n: int, seed: int = 0, mix: dict[str, float] | None = None,
                        world: WorldConfig = WorldConfig()) -> list[CompositionPrompt]:
    """``n`` distinct prompts, kinds in proportion ``mix`` (two objects, three objects, rare class: one of two
    objects is the rare shape), objects drawn without repeated colours or shapes."""
    mix = mix or DEFAULT_MIX
    bad = set(mix) - set(KINDS)
    if bad or not mix or any(v < 0 for v in mix.values()) or sum(mix.values()) <= 0:
        raise ValueError(f"mix maps kinds {list(KINDS)} to non-negative shares, got {mix}")
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    total = sum(mix.values())
    counts = {k: int(round(n * v / total)) for k, v in mix.items()}
    counts[max(counts, key=counts.get)] += n - sum(counts.values())
    rng = np.random.default_rng([seed, 5151])
    shapes = list(world.common_shapes)
    out, seen = [], set()
    for kind, count in counts.items():
        made, tries = 0, 0
        while made < count:
            tries += 1
            if tries > 100 * count + 100:
                raise ValueError(f"cannot draw {count} distinct {kind!r} prompts")
            objs = _objects(rng, KINDS[kind], shapes, RARE_SHAPE if kind == "rare class" else None)
            prompt = make_caption([f"{c} {s}" for c, s in objs])
            if prompt in seen:
                continue
            seen.add(prompt)
            out.append(CompositionPrompt(prompt, objs, kind))
            made += 1
    return out


@dataclass(frozen=True)
class ToyEdit:
    edit: Edit
    objects: tuple[tuple[str, str], ...]  # the source's objects
    index: int                            # which object is edited
    new: tuple[str, str]                  # its (colour, shape) after the edit
    kind: str                             # "colour swap" or "shape swap"


def toy_edits(n: int, seed: int = 0, world: WorldConfig = WorldConfig()) -> list[ToyEdit]:
    """``n`` edits of two- and three-object source prompts (half each), alternating colour swaps and shape
    swaps of a random object into a colour / shape the prompt does not use; each with its own seed."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    rng = np.random.default_rng([seed, 6161])
    shapes = list(world.common_shapes)
    out = []
    for k in range(n):
        objs = _objects(rng, 2 + k % 2, shapes)
        i = int(rng.integers(0, len(objs)))
        c, s = objs[i]
        if (k // 2) % 2 == 0:
            kind = "colour swap"
            new = (str(rng.choice([x for x in COLOURS if x not in {o[0] for o in objs}])), s)
        else:
            kind = "shape swap"
            new = (c, str(rng.choice([x for x in shapes if x not in {o[1] for o in objs}])))
        target = [f"{a} {b}" for a, b in objs]
        target[i] = f"{new[0]} {new[1]}"
        e = Edit(make_caption([f"{a} {b}" for a, b in objs]), make_caption(target),
                 tuple(f"{a} {b}" for a, b in objs), seed=int(seed * 100003 + k))
        out.append(ToyEdit(e, objs, i, new, kind))
    return out
