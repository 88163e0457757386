"""DiffSegmenter (Wang et al., TIP 2025), "Diffusion model is secretly a training-free open
vocabulary semantic segmenter".

Facts followed: cross-attention of the class tokens, weighted per resolution (the middle
resolutions most), averaged over timesteps, min-max normalised, refined with the self-attention
of the finest layers, thresholded. This is Algorithm 1 of ELBO-T2IAlign without the ELBO score,
so it is a named configuration of the same code and reuses the same cached measurement.
Deviations: DiffSegmenter's BLIP caption and its augmented class tokens are not used (the
referring setting gives the caption); the CRF post-processing is omitted for every method.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from ..ablations import paper_subsets
from ..aligner import finalize
from .base import Baseline, register


def heatmaps(m, cfg) -> np.ndarray:
    return finalize(m, dataclasses.replace(cfg, calibrate=False), *paper_subsets(cfg)).heatmaps


DIFFSEGMENTER = register(Baseline("DiffSegmenter", heatmaps, elbo=True, notes=__doc__.strip().splitlines()[0]))
