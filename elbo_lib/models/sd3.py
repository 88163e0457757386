"""Adapter for Stable Diffusion 3 / 3.5 (MMDiT, rectified flow).

Flow matching: z = (1 - sigma) x0 + sigma eps, so alpha = 1 - sigma; the transformer predicts the
velocity u = eps - x0 and takes 1000 * sigma as its timestep. Attention is joint over [image
tokens, text tokens]; the text tokens are the CLIP tokens (77, positions from ``tokenizer``)
followed by the T5 tokens.

Noise level at time t in [0, 1] (``flow_shift``):
- ``True`` (the authors'): the scheduler's own training grid. t names the integer timestep
  k = round(1000 t) and sigma is the scheduler's shifted sigma there, read from the flipped
  ``sigmas`` of a freshly configured scheduler: sigma_k = s k' / (1 + (s - 1) k'), k' = (k + 1) / 1000,
  so with SD 3's shift s = 3, t = 0.2 gives sigma ~0.43.
- ``False`` (a project option): sigma = t.
"""
from __future__ import annotations

import torch

from .base import PipelineAdapter, TextCondition, register

T_MIN = 1e-3  # keep sigma_t > 0 so that eps is identifiable


@register
class StableDiffusion3Adapter(PipelineAdapter):
    pipeline_classes = ("StableDiffusion3Pipeline", "StableDiffusion3Img2ImgPipeline")
    family = "sd3"
    joint_attention = True

    @property
    def denoiser(self):
        return self.pipe.transformer

    @property
    def patch_size(self) -> int:
        return int(self.denoiser.config.patch_size)

    @property
    def objective(self) -> str:
        return "flow"

    def _grid(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(sigmas, timesteps) of a fresh copy of the scheduler, flipped to increasing noise; a fresh copy
        because ``set_timesteps`` (any sampling run) rewrites the pipeline's own."""
        if getattr(self, "_grid_cache", None) is None:
            sched = type(self.pipe.scheduler).from_config(self.pipe.scheduler.config)
            if sched.config.get("use_dynamic_shifting", False):
                raise ValueError("this scheduler shifts sigmas by image size (use_dynamic_shifting); give the "
                                 "SD 3 adapter a fixed-shift scheduler or use flow_shift=False")
            self._grid_cache = (sched.sigmas.flip(0).float(), sched.timesteps.flip(0).float())
        return self._grid_cache

    def sigma(self, t: torch.Tensor) -> torch.Tensor:
        if not self.flow_shift:
            return t.to(self.device, torch.float32).clamp(T_MIN, 1.0)
        sigmas, _ = self._grid()
        k = torch.clamp(torch.round(t.double().cpu() * len(sigmas)), 0, len(sigmas) - 1).long()
        return sigmas[k].to(self.device)

    def alpha_sigma(self, t):
        s = self.sigma(t)
        return 1.0 - s, s

    def model_timestep(self, t):
        if not self.flow_shift:
            return (self.sigma(t) * 1000.0).to(self.dtype)
        _, timesteps = self._grid()
        k = torch.clamp(torch.round(t.double().cpu() * len(timesteps)), 0, len(timesteps) - 1).long()
        return timesteps[k].to(self.device, self.dtype)

    @torch.no_grad()
    def encode_text(self, prompts):
        prompts = list(prompts)
        embeds, _, pooled, _ = self.pipe.encode_prompt(prompts, prompts, prompts, device=self.device,
                                                       num_images_per_prompt=1, do_classifier_free_guidance=False)
        return TextCondition(embeds.to(self.dtype), {"pooled_projections": pooled.to(self.dtype)})

    def predict(self, z_t, t, cond):
        return self.denoiser(hidden_states=z_t, timestep=self.model_timestep(t), encoder_hidden_states=cond.embeds,
                             pooled_projections=cond.extra["pooled_projections"]).sample
