"""Adapters for UNet pipelines with a discrete DDPM-style schedule: SD 1.x / 2.x (eps and
v-prediction, incl. SD-Turbo) and SDXL (two text encoders, added conditions; SDXL-Turbo,
Playground v2.5)."""
from __future__ import annotations

import torch

from .base import PipelineAdapter, TextCondition, register


class _DiscreteScheduleAdapter(PipelineAdapter):
    @property
    def denoiser(self):
        return self.pipe.unet

    @property
    def num_train_timesteps(self) -> int:
        return int(self.pipe.scheduler.config.num_train_timesteps)

    @property
    def objective(self) -> str:
        return str(self.pipe.scheduler.config.get("prediction_type", "epsilon"))

    def _alphas_cumprod(self) -> torch.Tensor:
        ac = getattr(self.pipe.scheduler, "alphas_cumprod", None)
        if ac is None:
            raise ValueError(f"scheduler {type(self.pipe.scheduler).__name__} has no alphas_cumprod; "
                             "use a DDPM/DDIM/Euler-type scheduler")
        return ac.to(torch.float64)

    def timestep_index(self, t: torch.Tensor) -> torch.Tensor:
        """t in [0, 1] -> integer training timestep in [0, T - 1] (t = 0.001 -> 1 for T = 1000)."""
        T = self.num_train_timesteps
        return torch.clamp(torch.round(t.double() * T), 0, T - 1).long()

    def alpha_sigma(self, t):
        ac = self._alphas_cumprod()[self.timestep_index(t).cpu()]
        return ac.sqrt().to(self.device, torch.float32), (1 - ac).sqrt().to(self.device, torch.float32)

    def model_timestep(self, t):
        return self.timestep_index(t).to(self.device)


@register
class StableDiffusionAdapter(_DiscreteScheduleAdapter):
    pipeline_classes = ("StableDiffusionPipeline", "StableDiffusionImg2ImgPipeline")
    family = "sd"

    @torch.no_grad()
    def encode_text(self, prompts):
        embeds, _ = self.pipe.encode_prompt(list(prompts), self.device, 1, False)
        return TextCondition(embeds.to(self.dtype), {})

    def predict(self, z_t, t, cond):
        return self.denoiser(z_t, self.model_timestep(t), encoder_hidden_states=cond.embeds).sample


@register
class StableDiffusionXLAdapter(_DiscreteScheduleAdapter):
    pipeline_classes = ("StableDiffusionXLPipeline", "StableDiffusionXLImg2ImgPipeline")
    family = "sdxl"

    @torch.no_grad()
    def encode_text(self, prompts):
        embeds, _, pooled, _ = self.pipe.encode_prompt(list(prompts), device=self.device, num_images_per_prompt=1,
                                                       do_classifier_free_guidance=False)
        return self.condition(embeds, pooled)

    def condition(self, embeds: torch.Tensor, pooled: torch.Tensor) -> TextCondition:
        """Encoded prompts (P, L, D) and pooled embeddings (P, D') with SDXL's added time ids (native size,
        no crop), as the denoiser takes them."""
        h, w = self.resolution
        proj = pooled.shape[-1] if self.pipe.text_encoder_2 is None else self.pipe.text_encoder_2.config.projection_dim
        time_ids = self.pipe._get_add_time_ids((h, w), (0, 0), (h, w), dtype=self.dtype,
                                               text_encoder_projection_dim=proj).to(self.device)
        return TextCondition(embeds.to(self.device, self.dtype), {"text_embeds": pooled.to(self.device, self.dtype),
                                                                  "time_ids": time_ids.expand(len(embeds), -1)})

    def predict(self, z_t, t, cond):
        return self.denoiser(z_t, self.model_timestep(t), encoder_hidden_states=cond.embeds,
                             added_cond_kwargs=dict(cond.extra)).sample
