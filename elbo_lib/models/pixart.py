"""Adapter for PixArt-Sigma: a DiT with cross-attention to T5 and a DDPM schedule.

Beyond the paper's models (its Table I has no PixArt row); the method carries over as for SD 1.x:

- **Noise levels**: the scheduler's own discrete schedule (``alphas_cumprod`` of PixArt-Sigma's
  DPM-Solver scheduler: linear betas 1e-4 to 0.02 over 1000 steps, which the authors' DDIM rebuild of a
  scheduler config gives unchanged), z_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps at the integer timestep
  round(1000 t), which the transformer takes as input.
- **Objective, learned sigma**: the transformer outputs 2 C channels, the epsilon prediction
  followed by the (learned) variance interpolation; :meth:`predict` returns the first half, as
  the pipeline keeps ``noise_pred.chunk(2, dim=1)[0]`` (:meth:`denoise`). ELBO weighting in the Table I spirit:
  ``"authors"`` = ``"eps"`` = ``"native"`` is the plain eps MSE on those channels (what the
  authors' code computes for their epsilon models); the variance channels, which the VLB term
  of the improved-DDPM training uses, are not scored.
- **Text**: T5 only (up to 300 tokens, ``max_sequence_length`` of ``PixArtSigmaPipeline``), with an
  attention mask over the padding that the transformer turns into a -10000 bias on those keys
  (``encoder_attention_mask``); ``token_offset`` is 0 (T5 has no BOS). The pipeline lower-cases
  prompts (``_text_preprocessing``), and class positions are looked up in that text
  (:meth:`PixArtSigmaAdapter.prompt_text`).
- **Attention**: ``BasicTransformerBlock``s with ``attn1`` (self) and ``attn2`` (cross, to T5), run
  by diffusers' ``AttnProcessor2_0``: ``attention.CaptureProcessor`` reproduces it, masks included.
  ``patch_size`` is the transformer's (2): the attention grid is the latent / 2.
"""
from __future__ import annotations

import torch

from .base import TextCondition, TransformerDenoiser, register
from .stable_diffusion import _DiscreteScheduleAdapter

MAX_T5_TOKENS = 300  # PixArtSigmaPipeline's max_sequence_length


@register
class PixArtSigmaAdapter(TransformerDenoiser, _DiscreteScheduleAdapter):
    pipeline_classes = ("PixArtSigmaPipeline",)
    family = "pixart"

    @property
    def max_text_tokens(self) -> int:
        return min(MAX_T5_TOKENS, int(self.tokenizer.model_max_length))

    @property
    def learned_sigma(self) -> bool:
        """Whether the transformer outputs [eps, variance] (2 C channels) rather than eps alone."""
        return self.denoiser.config.out_channels == 2 * self.denoiser.config.in_channels

    def prompt_text(self, text: str) -> str:
        return self.pipe._text_preprocessing(text, clean_caption=False)[0]

    @torch.no_grad()
    def encode_text(self, prompts):
        embeds, mask, _, _ = self.pipe.encode_prompt(list(prompts), do_classifier_free_guidance=False,
                                                     device=self.device, max_sequence_length=self.max_text_tokens)
        return TextCondition(embeds.to(self.dtype), {"encoder_attention_mask": mask})

    def denoise(self, z_t, t, cond):
        out = self.denoiser(z_t, encoder_hidden_states=cond.embeds, timestep=self.model_timestep(t),
                            encoder_attention_mask=cond.extra["encoder_attention_mask"],
                            added_cond_kwargs={"resolution": None, "aspect_ratio": None}).sample
        return out.chunk(2, dim=1)[0] if self.learned_sigma else out
