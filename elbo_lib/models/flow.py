"""Noise levels of flow-matching (rectified-flow) pipelines: SD 3 / 3.5 and FLUX.1.

Flow matching: z = (1 - sigma) x0 + sigma eps, so alpha = 1 - sigma, and the denoiser predicts the
velocity u = eps - x0 (Table I, "flow").

Noise level at time t in [0, 1] (``flow_shift``):
- ``True`` (the authors', for SD 3): the scheduler's own training grid. t names the integer
  timestep k = round(1000 t) and sigma is the scheduler's shifted sigma there, read from the
  flipped ``sigmas`` of a freshly configured scheduler: with a fixed shift s,
  sigma_k = s k' / (1 + (s - 1) k'), k' = (k + 1) / 1000, so with SD 3's s = 3, t = 0.2 gives
  sigma ~0.43.
  A scheduler with ``use_dynamic_shifting`` (FLUX.1-dev) shifts by image size instead: the
  pipelines compute mu = calculate_shift(n) from the image token count n (linear in n from
  ``base_shift`` at ``base_image_seq_len`` tokens to ``max_shift`` at ``max_image_seq_len``) and the
  scheduler maps sigma' -> e^mu / (e^mu + 1 / sigma' - 1) (``time_shift``). The grid here does the
  same with n from the latent being scored (:meth:`FlowMatchAdapter.for_latent`), and, before a
  latent is known, from the VAE's sample size (the authors' resize target).
- ``False`` (a project option): sigma = t.
"""
from __future__ import annotations

import copy

import torch
from diffusers.pipelines.flux.pipeline_flux import calculate_shift

from .base import PipelineAdapter

T_MIN = 1e-3  # keep sigma_t > 0 so that eps is identifiable


class FlowMatchAdapter(PipelineAdapter):
    """Shared noise schedule of the flow-matching adapters; subclasses set the denoiser and its inputs."""

    timestep_scale: float = 1.0  # the denoiser's timestep input: the scheduler's timestep (1000 sigma) times this
    image_seq_len: int | None = None  # image tokens of the latent being scored (None: the VAE sample size's)

    @property
    def objective(self) -> str:
        return "flow"

    def tokens_of(self, latent_hw: tuple[int, int]) -> int:
        """Image tokens of a (h, w) latent: (h / p) (w / p) for patch (or packing) size p."""
        return (latent_hw[0] // self.patch_size) * (latent_hw[1] // self.patch_size)

    def for_latent(self, x0: torch.Tensor) -> "FlowMatchAdapter":
        """With a dynamic shift: this adapter's noise levels for ``x0``'s token count (``predict`` applies it to
        its input too, so the timestep the model sees always matches the latent it gets)."""
        n = self.tokens_of(tuple(x0.shape[-2:]))
        if n == self.image_seq_len or not self._dynamic():
            return self
        out = copy.copy(self)
        out.image_seq_len, out._grid_cache = n, None
        return out

    def _dynamic(self) -> bool:
        return bool(self.pipe.scheduler.config.get("use_dynamic_shifting", False))

    def shift_mu(self) -> float:
        """FluxPipeline's / StableDiffusion3Pipeline's mu for this adapter's image token count."""
        n = self.image_seq_len
        if n is None:
            h, w = self.vae_resolution
            n = self.tokens_of((h // self.pipe.vae_scale_factor, w // self.pipe.vae_scale_factor))
        c = self.pipe.scheduler.config
        return calculate_shift(n, c.get("base_image_seq_len", 256), c.get("max_image_seq_len", 4096),
                               c.get("base_shift", 0.5), c.get("max_shift", 1.15))

    def _grid(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(sigmas, timesteps) of a fresh copy of the scheduler, flipped to increasing noise, after the dynamic
        shift where the scheduler has one (timesteps = 1000 sigma, as ``set_timesteps`` makes them); a fresh
        copy because ``set_timesteps`` (any sampling run) rewrites the pipeline's own."""
        if getattr(self, "_grid_cache", None) is None:
            sched = type(self.pipe.scheduler).from_config(self.pipe.scheduler.config)
            sigmas, steps = sched.sigmas.float(), sched.timesteps.float()
            if self._dynamic():
                sigmas = torch.as_tensor(sched.time_shift(self.shift_mu(), 1.0, sigmas.double())).float()
                steps = sigmas * sched.config.num_train_timesteps
            self._grid_cache = (sigmas.flip(0), steps.flip(0))
        return self._grid_cache

    def _grid_index(self, t: torch.Tensor, n: int) -> torch.Tensor:
        return torch.clamp(torch.round(t.double().cpu() * n), 0, n - 1).long()

    def sigma(self, t: torch.Tensor) -> torch.Tensor:
        if not self.flow_shift:
            return t.to(self.device, torch.float32).clamp(T_MIN, 1.0)
        sigmas, _ = self._grid()
        return sigmas[self._grid_index(t, len(sigmas))].to(self.device)

    def alpha_sigma(self, t):
        s = self.sigma(t)
        return 1.0 - s, s

    def model_timestep(self, t):
        if not self.flow_shift:
            return (self.sigma(t) * 1000.0 * self.timestep_scale).to(self.dtype)
        _, steps = self._grid()
        return (steps[self._grid_index(t, len(steps))] * self.timestep_scale).to(self.device, self.dtype)
