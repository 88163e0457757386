"""DAAM (Tang et al., ACL 2023), "What the DAAM: interpreting Stable Diffusion using cross attention",
as its package computes it (castorini/daam 0.2.0; pinned by ``tests/test_baseline_parity.py`` against the
package's own maps, ``tests/fixtures/parity/daam/``).

Steps (``daam/trace.py`` of the package, ``hook.py``, ``heatmap.py``, ``utils.py``):

- Layers: the cross-attention (``attn2``) of every transformer block in the UNet's down and up blocks;
  the mid block is not located (``UNetCrossAttentionLocator(locate_middle_block=False)``).
- Per (layer, head): the caption pass's attention probabilities over all text tokens, summed over the
  timesteps (``RawHeatMapCollection.update``). Each map has a spatial factor
  ``int(sqrt(latent_hw // queries))``; maps of factor 8 are skipped when captured (``factor != 8``), and
  ``compute_global_heat_map`` keeps its default factor set {0, 1, 2, 4, 8, 16, 32, 64}.
- Each (layer, head) time-summed map resized bicubically to the latent grid (``align_corners=False``) and
  clamped at 0; then a plain mean over all (layer, head) maps (``normalize=False``: no division over tokens).
- Word map: mean over the phrase's token positions, every occurrence in the caption
  (``compute_token_merge_indices``), i.e. ``token_occurrence="all"``.
- ``WordHeatMap.expand_as(image)``: bicubic to the image size, then ``(m - min) / (max - min + 1e-8)``.

The factor rule, where sizes differ: daam measures factors against ``latent_hw``, 64x64 for its 512 and
1024 px pipelines and 96x96 otherwise; here against the image's latent grid. The two agree on SD 1.x at
512 px (its 8x8 maps, the mid block's, have factor 8) and SD 2.x at 768 px, and the package's maps on the toy
model were made with ``latent_hw`` set to the toy's 16x16 grid (the fixture's README). On SDXL at 1024 px
daam's table says 64x64 for a 128x128 latent; no map has factor 8 there either way, so the same layers count,
but here their maps are resized to 128x128 (daam: 64x64) before the mean. daam resizes to a square grid and,
in ``expand_as``, to (width, height); here to (height, width), which is the same on square images.

Deviation forced by the zero-shot referring setting: DAAM reads attention while it generates the image; on
a given image we noise it at the attention timesteps shared by every method (the paper's 10 in (0, 0.2]) and
read the caption pass there; the threshold follows our protocol (oracle and held-out) instead of a fixed 0.4.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from ..aligner import Measurement
from ..attention import block_cross_attention, grid_hw
from ..elbo import attention_timesteps
from ..tokens import default_caption
from .base import PAPER_TIMESTEPS, Baseline, register

FACTORS = frozenset({0, 1, 2, 4, 8, 16, 32, 64})  # compute_global_heat_map's default factor set
SKIPPED_FACTOR = 8  # UNetCrossAttentionHooker: maps of factor 8 are never recorded
EPS = 1e-8          # expand_as's min-max: (m - min) / (max - min + 1e-8)


def is_daam_layer(name: str) -> bool:
    """daam's layers: the down and up blocks' cross-attention, not the mid block's."""
    found = block_cross_attention(name)
    return found is not None and found[0] in ("down", "up")


def spatial_factor(n_queries: int, latent_hw: tuple[int, int]) -> int:
    """daam's ``factor = int(math.sqrt(latent_hw // attention_probs.shape[1]))``, latent_hw the grid's pixel count."""
    return int(math.sqrt((latent_hw[0] * latent_hw[1]) // n_queries))


def contributing_layers(head_sums: dict[str, torch.Tensor], latent_hw: tuple[int, int]) -> dict[str, int]:
    """{layer: factor} of the captured daam layers whose maps count: factor in daam's set and not 8."""
    out = {}
    for name, a in head_sums.items():
        if not is_daam_layer(name):
            raise ValueError(f"{name} is not one of daam's layers (down- and up-block cross-attention)")
        f = spatial_factor(a.shape[1], latent_hw)
        if f in FACTORS and f != SKIPPED_FACTOR:
            out[name] = f
    return out


def token_maps(head_sums: dict[str, torch.Tensor], latent_hw: tuple[int, int]) -> torch.Tensor:
    """(T, h, w): per text token, the mean over every contributing (layer, head) of its time-summed map resized
    bicubically to the latent grid and clamped at 0. ``head_sums[layer]``: (heads, queries, T)."""
    layers = contributing_layers(head_sums, latent_hw)
    if not layers:
        raise ValueError(f"no daam layer has a map of a factor daam keeps; factors seen: "
                         f"{sorted({spatial_factor(a.shape[1], latent_hw) for a in head_sums.values()})}")
    maps = []
    for name in layers:
        a = head_sums[name].float()
        heads, nq, n_tok = a.shape
        hl, wl = grid_hw(latent_hw, nq)
        m = a.transpose(1, 2).reshape(heads * n_tok, 1, hl, wl)
        m = F.interpolate(m, size=tuple(latent_hw), mode="bicubic", align_corners=False).clamp_(min=0)
        maps.append(m.reshape(heads, n_tok, *latent_hw))
    return torch.cat(maps).mean(0)


def word_maps(head_sums: dict[str, torch.Tensor], latent_hw: tuple[int, int],
              positions: list[list[int]]) -> torch.Tensor:
    """(N, h, w): each phrase's token maps averaged over its token positions."""
    tok = token_maps(head_sums, latent_hw)
    return torch.stack([tok[p].mean(0) for p in positions])


def expand_as(maps_nhw: torch.Tensor, image_hw: tuple[int, int]) -> torch.Tensor:
    """daam's ``WordHeatMap.expand_as``: bicubic to the image size, then min-max with its 1e-8 (float32)."""
    im = F.interpolate(maps_nhw.float()[None], size=tuple(image_hw), mode="bicubic", align_corners=False)[0]
    lo = im.amin(dim=(1, 2), keepdim=True)
    hi = im.amax(dim=(1, 2), keepdim=True)
    return (im - lo) / (hi - lo + EPS)


def heatmaps(m: Measurement, cfg) -> np.ndarray:
    """(N, H, W) in [0, 1]: ``expand_as`` of the measurement's word maps (``m.cross``, one time-summed row)."""
    if m.cross.shape[0] != 1:
        raise ValueError(f"a DAAM measurement holds one time-summed row of word maps, got {m.cross.shape[0]}")
    return expand_as(m.cross[0], m.image_hw).double().numpy()


@torch.no_grad()
def measure(aligner, image, classes, caption, seed, cfg) -> Measurement:
    """Capture every daam layer's per-head cross-attention on the caption pass, summed over the attention
    timesteps, and aggregate it into word maps. The measurement's ``cross`` is (1, N, h, w): the word maps at the
    latent grid before ``expand_as`` (daam sums over time before its clamp, so no per-timestep rows exist)."""
    ad = aligner.adapter
    DAAM.check_runnable(ad)
    caption = caption or default_caption(classes, cfg.caption_template, cfg.caption_item)
    positions = aligner.class_tokens(caption, classes, cfg)
    x0, image_hw = aligner.encode(image, cfg)
    latent_hw = (x0.shape[-2] // ad.patch_size, x0.shape[-1] // ad.patch_size)
    t_att = torch.as_tensor(attention_timesteps(cfg.attention_steps, cfg.attention_t_max), dtype=torch.float64)
    sums: dict[str, torch.Tensor] = {}
    for store in aligner.attention_passes(x0, caption, t_att, seed, cfg, self_attn=False, per_head=True,
                                          layer_filter=is_daam_layer):
        for name, a in store.head_sums.items():
            sums[name] = a if name not in sums else sums[name] + a
    if not sums:
        raise ValueError(f"{type(ad.denoiser).__name__} has no down- or up-block cross-attention layer for DAAM")
    maps = word_maps(sums, latent_hw, positions)
    return Measurement(list(classes), caption, np.zeros(0), torch.zeros(len(classes), 0), t_att.numpy(),
                       maps[None].float().cpu(), None, image_hw)


DAAM = register(Baseline(
    "DAAM", heatmaps, measure=measure, method="daam", unet_only=True,
    measure_overrides=dict(self_attention=False, token_occurrence="all", **PAPER_TIMESTEPS),
    notes="daam 0.2.0's aggregation: down/up-block layers, bicubic per (layer, head), clamp, min-max + 1e-8"))

