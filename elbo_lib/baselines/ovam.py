"""OVAM (Marcos-Manchón et al., CVPR 2024), "Open-Vocabulary Attention Maps with Token
Optimization for Semantic Segmentation in Diffusion Models".

Facts followed: the queries Q of every cross-attention layer are stored during the caption's
denoising pass; an attention map for an arbitrary *attribution prompt* is softmax(Q K_a^T / sqrt(d))
with K_a the layer's keys of that prompt's embedding, so a class need not be in the caption.
Maps are averaged over heads, summed over layers (equal weight) and timesteps, upsampled and
normalised, as in DAAM. The attribution prompt per class is the ELBO prompt ("a photo of a {class}")
and the class's token columns are read.
Deviation, labelled: the **un-optimised** variant. OVAM's token optimisation trains the attribution
token embedding on annotated masks (one or a few images per class); the zero-shot referring
protocol gives no annotations, so it is not run. Joint-attention models (SD3) are not supported.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from ..aligner import Measurement
from ..attention import AttentionStore, aggregate_cross
from ..elbo import attention_timesteps
from ..tokens import default_caption, token_positions
from .base import PAPER_TIMESTEPS, Baseline, NotRunnable, register
from .daam import heatmaps as daam_heatmaps


def attribution_probs(store: AttentionStore, embeds: torch.Tensor) -> AttentionStore:
    """A store whose cross-attention is softmax(Q K_a^T / sqrt(d)) for the attribution embedding
    (1, L, D), from the stored queries (B, H, Nq, d)."""
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
        out.cross[name] = probs.mean(1)  # (B, Nq, L)
    return out


@torch.no_grad()
def measure(aligner, image, classes, caption, seed, cfg) -> Measurement:
    ad = aligner.adapter
    if ad.joint_attention:
        raise NotRunnable("OVAM needs separate cross-attention layers; joint-attention (MMDiT) models are not supported")
    caption = caption or default_caption(classes, cfg.caption_template, cfg.caption_item)
    x0, image_hw = aligner.encode(image, cfg)
    t_att = torch.as_tensor(attention_timesteps(cfg.attention_steps, cfg.attention_t_max), dtype=torch.float64)
    prompts = [cfg.elbo_template.format(c) for c in classes]
    embeds = [ad.encode_text([p]).embeds for p in prompts]
    positions = [token_positions(ad.tokenizer, p, c) for p, c in zip(prompts, classes)]
    maps = []
    for store in aligner.attention_passes(x0, caption, t_att, seed, cfg, self_attn=False, keep_queries=True):
        per_class = []
        for e, pos in zip(embeds, positions):
            tok = aggregate_cross(attribution_probs(store, e), "uniform")  # (b, L, h, w)
            per_class.append(tok[:, pos].mean(1))
        maps.append(torch.stack(per_class, 1))
    cross = torch.cat(maps).float().cpu()
    return Measurement(list(classes), caption, np.zeros(0), torch.zeros(len(classes), 0), t_att.numpy(), cross, None,
                       image_hw)


OVAM = register(Baseline("OVAM", daam_heatmaps, measure_overrides=dict(self_attention=False, layer_weights="uniform", **PAPER_TIMESTEPS),
                         measure=measure, method="ovam-unoptimised", joint_attention=False,
                         notes="un-optimised (no token optimisation: needs annotated masks)"))
