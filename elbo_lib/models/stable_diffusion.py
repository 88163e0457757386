"""Adapters for UNet pipelines with a discrete timestep: SD 1.x / 2.x (eps and v-prediction, incl. SD-Turbo) and
SDXL (two text encoders, added conditions; SDXL-Turbo, Playground v2.5).

Noise levels, as the authors' ``utils/diffusion.py`` takes them for every SD / SDXL pipeline: the
``alphas_cumprod`` of ``DDIMScheduler.from_config(pipe.scheduler.config)`` (:func:`authors_ddim`) at the integer
timestep k = round(1000 t), which the UNet takes as input. For the DDPM-type schedulers the pipelines ship
(DDIM, PNDM, Euler, Euler-ancestral: SD-Turbo's and SDXL-Turbo's with trailing timestep spacing) that equals
the scheduler's own ``alphas_cumprod``: the betas keys are shared and the spacing only concerns sampling. For
Playground v2.5's EDM scheduler it is DDIMScheduler's default betas; ``edm_native`` (a project option) uses
EDM's own noise levels, preconditioning and latent normalisation instead (:mod:`.edm`).
"""
from __future__ import annotations

import torch
from diffusers import DDIMScheduler

from .base import PipelineAdapter, TextCondition, posterior_latent, register
from .edm import EDMNoise, is_edm, normalised_latent


def authors_ddim(scheduler) -> DDIMScheduler:
    """The authors' scheduler construction for SD / SDXL pipelines: ``DDIMScheduler.from_config`` of the
    pipeline scheduler's config (keys DDIM does not know, such as EDM's sigmas, are ignored)."""
    try:
        return DDIMScheduler.from_config(scheduler.config)
    except NotImplementedError as e:  # a beta_schedule DDIMScheduler does not implement
        raise ValueError(f"DDIMScheduler.from_config cannot rebuild {type(scheduler).__name__}'s noise schedule "
                         f"(the authors' construction): {e}") from e


class _DiscreteScheduleAdapter(PipelineAdapter):
    """Subclasses implement :meth:`denoise` (the denoiser's output for z_t); :meth:`predict` is that output, or,
    for an EDM scheduler with ``edm_native``, the epsilon estimate it implies."""

    @property
    def denoiser(self):
        return self.pipe.unet

    @property
    def uses_edm(self) -> bool:
        """Whether EDM's own noise levels apply: ``edm_native`` set and the pipeline's scheduler an EDM one."""
        return self.edm_native and is_edm(self.pipe.scheduler)

    @property
    def num_train_timesteps(self) -> int:
        return int(self.pipe.scheduler.config.num_train_timesteps)

    @property
    def objective(self) -> str:
        if self.uses_edm:
            return "epsilon"  # predict() returns the preconditioned network's epsilon estimate
        return str(self._ddim().config.prediction_type)

    def _cached(self, what: str, build):
        """``build(scheduler)``, kept until the pipeline's scheduler is replaced."""
        cache = getattr(self, "_schedule_cache", None)
        if cache is None or cache["scheduler"] is not self.pipe.scheduler:
            cache = self._schedule_cache = {"scheduler": self.pipe.scheduler}
        if what not in cache:
            cache[what] = build(self.pipe.scheduler)
        return cache[what]

    def _ddim(self) -> DDIMScheduler:
        return self._cached("ddim", authors_ddim)

    def _alphas_cumprod(self) -> torch.Tensor:
        return self._ddim().alphas_cumprod.to(torch.float64)

    def _edm(self) -> EDMNoise:
        return self._cached("edm", EDMNoise)

    def timestep_index(self, t: torch.Tensor) -> torch.Tensor:
        """t in [0, 1] -> integer training timestep in [0, T - 1] (t = 0.001 -> 1 for T = 1000)."""
        T = self.num_train_timesteps
        return torch.clamp(torch.round(t.double() * T), 0, T - 1).long()

    def alpha_sigma(self, t):
        if self.uses_edm:
            sigma = self._edm().sigma(t)
            c_in = self._edm().c_in(sigma)
            return c_in.to(self.device, torch.float32), (sigma * c_in).to(self.device, torch.float32)
        ac = self._alphas_cumprod()[self.timestep_index(t).cpu()]
        return ac.sqrt().to(self.device, torch.float32), (1 - ac).sqrt().to(self.device, torch.float32)

    def model_timestep(self, t):
        if self.uses_edm:
            return self._edm().c_noise(self._edm().sigma(t)).to(self.device, torch.float32)
        return self.timestep_index(t).to(self.device)

    @torch.no_grad()
    def encode_image(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        if not self.uses_edm:
            return super().encode_image(x, generator)
        z = posterior_latent(self.pipe.vae.encode(x.to(self.vae_dtype)).latent_dist, generator)
        return normalised_latent(z, self.pipe.vae.config).to(self.dtype)

    def denoise(self, z_t: torch.Tensor, t: torch.Tensor, cond: TextCondition) -> torch.Tensor:
        """The denoiser's own output at z_t (its epsilon channels for a learned-variance model)."""
        raise NotImplementedError

    def predict(self, z_t, t, cond):
        out = self.denoise(z_t, t, cond)
        if not self.uses_edm:
            return out
        return self._edm().epsilon(z_t, out, self._edm().sigma(t))


@register
class StableDiffusionAdapter(_DiscreteScheduleAdapter):
    pipeline_classes = ("StableDiffusionPipeline", "StableDiffusionImg2ImgPipeline")
    family = "sd"

    @torch.no_grad()
    def encode_text(self, prompts):
        embeds, _ = self.pipe.encode_prompt(list(prompts), self.device, 1, False)
        return TextCondition(embeds.to(self.dtype), {})

    def denoise(self, z_t, t, cond):
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

    @torch.no_grad()
    def unconditional_text(self) -> TextCondition:
        """SDXL pipelines with ``force_zeros_for_empty_prompt`` (the default) feed zeros as the unconditional
        branch's text and pooled embeddings when no negative prompt is given."""
        if not getattr(self.pipe.config, "force_zeros_for_empty_prompt", False):
            return self.encode_text([""])
        cond = self.encode_text([""])
        return self.condition(torch.zeros_like(cond.embeds), torch.zeros_like(cond.extra["text_embeds"]))

    def condition(self, embeds: torch.Tensor, pooled: torch.Tensor) -> TextCondition:
        """Encoded prompts (P, L, D) and pooled embeddings (P, D') with SDXL's added time ids (native size,
        no crop), as the denoiser takes them."""
        h, w = self.resolution
        proj = pooled.shape[-1] if self.pipe.text_encoder_2 is None else self.pipe.text_encoder_2.config.projection_dim
        time_ids = self.pipe._get_add_time_ids((h, w), (0, 0), (h, w), dtype=self.dtype,
                                               text_encoder_projection_dim=proj).to(self.device)
        return TextCondition(embeds.to(self.device, self.dtype), {"text_embeds": pooled.to(self.device, self.dtype),
                                                                  "time_ids": time_ids.expand(len(embeds), -1)})

    def denoise(self, z_t, t, cond):
        return self.denoiser(z_t, self.model_timestep(t), encoder_hidden_states=cond.embeds,
                             added_cond_kwargs=dict(cond.extra)).sample
