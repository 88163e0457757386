"""OVAM (Marcos-Manchón et al., CVPR 2024), "Open-Vocabulary Attention Maps with Token Optimization for
Semantic Segmentation in Diffusion Models", as its code computes it (vpulab/ovam, commit 12afd87; pinned by
``tests/test_baseline_parity.py`` against its own maps, ``tests/fixtures/parity/ovam/``).

The queries Q of the located cross-attention layers are stored during the denoising pass; a map for an
arbitrary *attribution prompt* is then softmax(scale Q K_a^T), K_a the layer's keys of that prompt's embedding,
so a class need not be in the caption. Steps (paths in vpulab/ovam):

- Layers (``stable_diffusion/locator.py``, ``locate_middle_block=False``): the ``attn2`` of every transformer
  block of the up blocks and of the down blocks but the last (its names are ``range(1, len(down_blocks))``,
  zipped with the blocks; on SD 1.x/2.x the last down block has no cross-attention); no mid block.
- Queries (``stable_diffusion/block_hooker.py``, defaults ``store_unconditional_hidden_states=True``,
  ``store_conditional_hidden_states=False``): batch item 0 of a guidance pipeline's [unconditional, conditional]
  call, i.e. the **unconditional** branch's (the pipeline's text for an empty negative prompt). Those queries
  depend on nothing but the noised latent: the caption does not enter OVAM's maps.
- Attribution prompt (``utils/text_encoding.py``): tokenised without padding, start and end tokens kept
  (the callable's ``remove_special_tokens=False``), through the text encoder. A causal CLIP encoder gives the
  same vectors for a prompt's own tokens with or without the padding after them, so the adapter's (padded)
  encoding cut to the prompt's token count is that embedding (``attribution_embedding``).
- Per layer, timestep and head (``stable_diffusion/daam_block.py``): scale Q K^T, softmax over the attribution
  prompt's tokens (``heads_epochs_activation="token_softmax"``), summed over timesteps and heads; each layer's map
  resized bilinearly to the largest layer's grid and summed over layers (``stable_diffusion/daam_module.py``,
  ``get_ovam_callable``'s ``heatmaps_aggregation="sum"``); bilinear to the image size (``expand_size``).
- Class map: OVAM returns a map per token and has no phrase rule; the map here is the **mean of the phrase's
  token maps** in the prompt ``cfg.elbo_template`` (the one choice that is ours; OVAM's experiments read the single
  word of a one-word class), then divided by its max, as OVAM's evaluation notebooks do
  (``heatmap / heatmap.max()`` before thresholding).

Sums over heads and layers are taken here as means (the max-division removes the constant). Deviations:
the **un-optimised** variant (OVAM's token optimisation trains the attribution embedding on annotated masks;
the zero-shot protocol has none), and the passes are the shared attention timesteps on the noised image
instead of a generation's. OVAM's code drives SD 1.x/2.x pipelines; on SDXL the attribution prompt is encoded
by both text encoders as the pipeline does, and the unconditional branch is the pipeline's zero text.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from ..aligner import Measurement
from ..attention import AttentionStore, aggregate_cross, block_cross_attention
from ..calibrate import upsample
from ..elbo import attention_timesteps
from ..tokens import token_positions
from .base import PAPER_TIMESTEPS, Baseline, register


def ovam_layer_filter(denoiser):
    """OVAM's located layers as a predicate on processor names: up blocks, down blocks but the last, no mid."""
    last_down = len(denoiser.down_blocks) - 1

    def located(name: str) -> bool:
        found = block_cross_attention(name)
        return found is not None and (found[0] == "up" or (found[0] == "down" and found[1] < last_down))
    return located


def attribution_embedding(ad, prompt: str):
    """The attribution prompt's text condition over its own tokens (start and end included, no padding)."""
    n = len(ad.tokenizer(ad.prompt_text(prompt), truncation=False, verbose=False).input_ids)
    if n > ad.max_text_tokens:
        raise ValueError(f"attribution prompt {prompt!r} has {n} tokens; the text encoder takes {ad.max_text_tokens}")
    cond = ad.encode_text([prompt])
    return cond.embeds[:, :n]


def attribution_probs(store: AttentionStore, embeds: torch.Tensor) -> AttentionStore:
    """A store whose cross-attention is softmax(Q K_a^T / sqrt(d)) for the attribution embedding (1, L, D)
    from the stored queries (B, H, Nq, d), averaged over heads: (B, Nq, L) per layer."""
    out = AttentionStore(latent_hw=store.latent_hw)
    for name, q in store.queries.items():
        attn = store.modules[name]
        e = attn.norm_encoder_hidden_states(embeds) if attn.norm_cross else embeds
        k = attn.to_k(e.to(q.dtype))
        b, h, nq, d = q.shape
        k = k.view(1, -1, h, d).transpose(1, 2)
        if attn.norm_k is not None:
            k = attn.norm_k(k)
        probs = torch.softmax(torch.matmul(q.float(), k.float().transpose(-1, -2)) / math.sqrt(d), dim=-1)
        out.cross[name] = probs.mean(1)
    return out


def maxnorm(maps_nhw: torch.Tensor) -> torch.Tensor:
    """Each map divided by its max (OVAM's evaluation); a map whose max is not positive is an error."""
    hi = maps_nhw.amax(dim=(1, 2), keepdim=True)
    if (hi <= 0).any():
        raise ValueError("an OVAM map has no positive value to divide by")
    return maps_nhw / hi


def heatmaps(m: Measurement, cfg) -> np.ndarray:
    """(N, H, W) in [0, 1]: the phrase maps summed over timesteps, bilinear to the image size, over their max."""
    return maxnorm(upsample(m.cross.double().sum(0), m.image_hw)).numpy()


@torch.no_grad()
def measure(aligner, image, classes, caption, seed, cfg) -> Measurement:
    """Per timestep, each class's phrase map at the largest located layer's grid (the mean over its
    attribution-prompt tokens of the head- and layer-averaged attribution maps); the caption is unused (OVAM
    reads the unconditional branch). ``cross``: (T_a, N, h, w)."""
    ad = aligner.adapter
    OVAM.check_runnable(ad)
    x0, image_hw = aligner.encode(image, cfg)
    t_att = torch.as_tensor(attention_timesteps(cfg.attention_steps, cfg.attention_t_max), dtype=torch.float64)
    prompts = [cfg.elbo_template.format(c) for c in classes]
    embeds = [attribution_embedding(ad, p) for p in prompts]
    positions = [[q + ad.token_offset for q in token_positions(ad.tokenizer, ad.prompt_text(p), ad.prompt_text(c))]
                 for p, c in zip(prompts, classes)]
    maps = []
    for store in aligner.attention_passes(x0, None, t_att, seed, cfg, text=ad.unconditional_text(), self_attn=False,
                                          keep_queries=True, layer_filter=ovam_layer_filter(ad.denoiser)):
        if not store.queries:
            raise ValueError(f"{type(ad.denoiser).__name__} has no cross-attention layer OVAM locates")
        per_class = []
        for e, pos in zip(embeds, positions):
            tok = aggregate_cross(attribution_probs(store, e), "uniform")  # (b, L, h, w) at the largest layer's grid
            per_class.append(tok[:, pos].mean(1))
        maps.append(torch.stack(per_class, 1))
    return Measurement(list(classes), caption or "", np.zeros(0), torch.zeros(len(classes), 0), t_att.numpy(),
                       torch.cat(maps).float().cpu(), None, image_hw)


OVAM = register(Baseline(
    "OVAM", heatmaps, measure=measure, method="ovam", unet_only=True,
    measure_overrides=dict(self_attention=False, **PAPER_TIMESTEPS),
    notes="un-optimised (no token optimisation: needs annotated masks); unconditional queries, / max"))
