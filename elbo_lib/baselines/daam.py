"""DAAM (Tang et al., ACL 2023), "What the DAAM: interpreting Stable Diffusion using cross attention".

Facts followed: a word's heat map is the cross-attention of its tokens summed over every layer
(all resolutions, equal weight), every head and every timestep, each map upsampled to the image
size; multi-token words sum their tokens (we average, which min-max normalisation makes equal);
maps are normalised to [0, 1] and thresholded (the DAAM paper uses 0.4).
Deviations forced by the zero-shot referring setting: DAAM reads attention during generation; on a
given image we noise it at the attention timesteps (the paper's 10 in (0, 0.2], shared with
every method), and the threshold follows our protocol (oracle and held-out) instead of a fixed 0.4.
"""
from __future__ import annotations

import numpy as np
import torch

from ..calibrate import renormalize, upsample
from .base import PAPER_TIMESTEPS, Baseline, register


def summed_maps(m) -> torch.Tensor:
    """(N, h, w): the class maps summed over the attention timesteps (heads and layers were summed —
    as an equal-weight mean — when captured)."""
    return m.cross.double().sum(0)


def heatmaps(m, cfg) -> np.ndarray:
    return renormalize(upsample(summed_maps(m), m.image_hw)).numpy()


DAAM = register(Baseline("DAAM", heatmaps, measure_overrides=dict(layer_weights="uniform", self_attention=False, **PAPER_TIMESTEPS),
                         notes=__doc__.strip().splitlines()[0]))
