"""The paper's ablations as variants of one measurement.

A :class:`Variant` turns a measurement into heatmaps without any denoiser call. Notebooks measure
once with :data:`SUPERSET` (100 even ELBO timesteps, 30 attention timesteps up to t = 0.6, the
self-attention averaged over the paper's 10) and pick subsets, so one cold pass serves Tables II,
VI-IX and Fig. 7:
- the paper's 20 "even" ELBO timesteps (1, 51, ..., 951) are every 5th superset timestep;
- the paper's 10 attention timesteps (t = 0.02 ... 0.2) are the first 10.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

import numpy as np

from .aligner import AlignConfig, Measurement, finalize
from .elbo import STRATEGIES, attention_timesteps, elbo_timesteps, reweight
from .models import dir_hints

SUPERSET = dict(elbo_steps=100, elbo_strategy="even", attention_steps=30, attention_t_max=0.6,
                self_attention_t_max=0.2)
SUPERSET_ELBO_T = elbo_timesteps(100, "even")
SUPERSET_ATT_T = attention_timesteps(30, 0.6)


def paper_config(model: str | os.PathLike = "data/toy-sd", preset: str = "official", **overrides) -> AlignConfig:
    """The configuration for a model: a preset (the official one by default) plus the prompt templates the
    model directory recommends (the toy model's training.json), then ``overrides``."""
    return AlignConfig.preset(preset, **{**dir_hints(model), **overrides})


def superset_config(model: str | os.PathLike = "data/toy-sd", **overrides) -> AlignConfig:
    return paper_config(model, **{**SUPERSET, **overrides})


def is_superset(cfg: AlignConfig) -> bool:
    return all(getattr(cfg, k) == v for k, v in SUPERSET.items())


def elbo_subset(n: int = 20, strategy: str = "even", seed: int = 0) -> tuple[int, ...]:
    """Indices into the superset ELBO timesteps for ``n`` timesteps of a Table VII strategy."""
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown timestep strategy {strategy!r}; choose from {list(STRATEGIES)}")
    if strategy == "even":
        if 100 % n:
            raise ValueError(f"'even' subsets of the 100-step superset need n dividing 100, got {n}")
        return tuple(range(0, 100, 100 // n)) if n > 1 else (50,)
    if strategy == "random":
        return tuple(sorted(np.random.default_rng([seed, 11]).choice(100, n, replace=False).tolist()))
    lo, hi = STRATEGIES[strategy]
    inside = [k for k, t in enumerate(SUPERSET_ELBO_T) if lo <= t < hi]
    if n > len(inside):  # more would repeat timesteps, silently weighting them twice
        raise ValueError(f"only {len(inside)} superset ELBO timesteps lie in [{lo}, {hi}) ('{strategy}'); "
                         f"ask for at most {len(inside)}, got {n}")
    pick = np.linspace(0, len(inside) - 1, n).round().astype(int)
    return tuple(inside[i] for i in pick)


def attention_subset(count: int = 10, t_max: float = 0.2, t_min: float = 0.0) -> tuple[int, ...]:
    """Indices of ``count`` superset attention timesteps spread over (t_min, t_max]."""
    inside = [k for k, t in enumerate(SUPERSET_ATT_T) if t_min < t <= t_max + 1e-9]
    if count > len(inside):
        raise ValueError(f"only {len(inside)} superset attention timesteps lie in ({t_min}, {t_max}]")
    if len(inside) % count == 0:  # evenly spaced, ending at the range's end (0.04, 0.08, ... for 5 of 10)
        step = len(inside) // count
        return tuple(inside[i] for i in range(step - 1, len(inside), step))
    pick = np.linspace(len(inside) - 1, 0, count).round().astype(int)
    return tuple(inside[i] for i in sorted(set(pick.tolist())))


PAPER_ELBO = elbo_subset(20, "even")
PAPER_ATT = attention_subset(10, 0.2)


def paper_subsets(cfg: AlignConfig) -> tuple[tuple[int, ...] | None, tuple[int, ...] | None]:
    """(ELBO, attention) timestep indices of the paper's setting within a measurement made with ``cfg``."""
    return (PAPER_ELBO, PAPER_ATT) if is_superset(cfg) else (None, None)


@dataclass(frozen=True)
class Variant:
    """A way to turn a measurement into heatmaps, without any denoiser call."""

    name: str
    config: AlignConfig
    elbo_idx: tuple[int, ...] | None = None
    attention_idx: tuple[int, ...] | None = None
    heatmaps: object = None  # optional (Measurement, AlignConfig) -> (N, H, W) replacing finalize (baselines)

    def heatmaps_of(self, m: Measurement) -> np.ndarray:
        if self.heatmaps is not None:
            return self.heatmaps(m, self.config)
        return finalize(m, self.config, self.elbo_idx, self.attention_idx).heatmaps


def variant(name: str, cfg: AlignConfig, elbo_idx=PAPER_ELBO, attention_idx=PAPER_ATT, **overrides) -> Variant:
    """A finalize setting; on a superset measurement the default subsets are the paper's timesteps, on a
    measurement made with the paper's config they are all of its timesteps."""
    if not is_superset(cfg):
        if elbo_idx is not PAPER_ELBO or attention_idx is not PAPER_ATT:
            raise ValueError("timestep subsets need a superset measurement (ablations.superset_config)")
        return Variant(name, dataclasses.replace(cfg, **overrides))
    return Variant(name, dataclasses.replace(cfg, **overrides), tuple(elbo_idx), tuple(attention_idx))


def paper_variants(cfg: AlignConfig, gammas=()) -> list[Variant]:
    """'uncalibrated' and 'calibrated' (plus one variant per extra gamma) at the paper's timesteps."""
    out = [variant("uncalibrated", cfg, calibrate=False), variant("calibrated", cfg, calibrate=True)]
    return out + [variant(f"gamma={g:.4g}", cfg, calibrate=True, gamma=float(g)) for g in gammas]


def weighting_variant(name: str, cfg: AlignConfig, adapter, weighting: str, **overrides) -> Variant:
    """The calibrated variant with the measurement's ELBO losses re-expressed under another ``weighting``
    (:func:`elbo.reweight`, exact), at the paper's timesteps: e.g. SD 3's eps-space row beside the authors'
    plain velocity MSE, from one measurement."""
    base = variant(name, cfg, **overrides)
    ad = adapter.configured(cfg.flow_shift, cfg.edm_native)

    def heatmaps(m: Measurement, c: AlignConfig) -> np.ndarray:
        m = dataclasses.replace(m, elbo=reweight(m.elbo, ad, m.elbo_t, cfg.weighting, weighting))
        return finalize(m, c, base.elbo_idx, base.attention_idx).heatmaps

    return dataclasses.replace(base, config=dataclasses.replace(base.config, weighting=weighting), heatmaps=heatmaps)
