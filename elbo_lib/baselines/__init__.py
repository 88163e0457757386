"""Table II baselines on the same harness (same model, images, noise and threshold protocol).

Each baseline is a :class:`Baseline`: the measurement it needs (AlignConfig overrides and a
measure function; shared with ELBO-T2IAlign's cache where the settings coincide) and a function
from that measurement to per-class heatmaps in [0, 1].
"""
from __future__ import annotations

from .base import BASELINES, Baseline, NotRunnable, get_baseline
from . import daam, diffseg, diffsegmenter, ovam  # noqa: F401  (register)

__all__ = ["BASELINES", "Baseline", "NotRunnable", "get_baseline"]
