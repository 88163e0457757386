"""Adapter for Stable Diffusion 3 / 3.5 (MMDiT, rectified flow; noise levels in :mod:`.flow`).

The transformer predicts the velocity u = eps - x0 and takes 1000 * sigma as its timestep.
Attention is joint over [image tokens, text tokens]; the text tokens are the CLIP tokens (77,
positions from ``tokenizer``) followed by the T5 tokens.

SD 3.5 (MMDiT-X; medium: ``dual_attention_layers`` 0-12 of 24, ``qk_norm="rms_norm"``) runs through the same
adapter. Its dual-attention blocks add ``attn2``, a self-attention over the image tokens alone. The authors set
their ``JointAttnProcessor`` on every attention of the transformer, ``attn2`` included, and their store files
what a layer without text tokens returns under ``is_cross_attention``, which is False for ``attn2``: its maps
join the self-attention average (weight 1, like each joint layer's image block) and never the cross-attention,
whose Gaussian layer weights so run over the joint layers alone. ``attention.capture_attention(joint=True)``
does the same (``JointCaptureProcessor`` on every layer; no text tokens, no cross-attention), and both apply the
RMS q/k norms before the softmax.
"""
from __future__ import annotations

import torch

from .base import TextCondition, TransformerDenoiser, register
from .flow import FlowMatchAdapter


@register
class StableDiffusion3Adapter(TransformerDenoiser, FlowMatchAdapter):
    pipeline_classes = ("StableDiffusion3Pipeline", "StableDiffusion3Img2ImgPipeline")
    family = "sd3"
    joint_attention = True

    @torch.no_grad()
    def encode_text(self, prompts):
        prompts = list(prompts)
        embeds, _, pooled, _ = self.pipe.encode_prompt(prompts, prompts, prompts, device=self.device,
                                                       num_images_per_prompt=1, do_classifier_free_guidance=False)
        return TextCondition(embeds.to(self.dtype), {"pooled_projections": pooled.to(self.dtype)})

    def predict(self, z_t, t, cond):
        return self.denoiser(hidden_states=z_t, timestep=self.for_latent(z_t).model_timestep(t),
                             encoder_hidden_states=cond.embeds, pooled_projections=cond.extra["pooled_projections"]).sample
