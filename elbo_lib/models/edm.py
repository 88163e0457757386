"""Noise levels of UNet pipelines whose scheduler is in the EDM formulation (Karras et al. 2022): Playground v2.5.

Such a scheduler (``EDMDPMSolverMultistepScheduler``, ``EDMEulerScheduler``) has no betas: its configuration
holds ``sigma_min``, ``sigma_max``, ``sigma_data``, ``rho`` and the network's preconditioning. Two readings:

- **The authors'** (the official configuration, :func:`.stable_diffusion.authors_ddim`): their
  ``utils/diffusion.py`` builds ``DDIMScheduler.from_config(pipe.scheduler.config)`` for every SD / SDXL
  pipeline, Playground's included. ``from_config`` keeps ``num_train_timesteps`` and ``prediction_type`` and
  ignores the EDM keys, so the DDIM scheduler has its default betas (linear, 1e-4 to 0.02 over 1000 steps):
  z_t = sqrt(abar_k) x0 + sqrt(1 - abar_k) eps with abar_k from those betas, the integer timestep k as the
  UNet's time input, the raw UNet output scored as the epsilon prediction, and the latent scaled by
  ``scaling_factor`` alone.
- **EDM's own** (``edm_native=True``, a project option; :class:`EDMNoise`): the scheduler's training grid of
  noise levels (a fresh copy's ``sigmas`` without the final sampling entry, flipped to increasing noise: the
  Karras (or exponential) schedule from ``sigma_min`` to ``sigma_max``; ``EDMDPMSolverMultistepScheduler``
  spaces ``num_train_timesteps`` points, ``EDMEulerScheduler`` one more), sigma_k at k = round(1000 t)
  (clamped to the grid), so sigma sits at about fraction t of the schedule's ramp; the UNet sees
  c_in (x0 + sigma eps) with c_in = 1 / sqrt(sigma^2 + sigma_data^2) (``precondition_inputs``), so
  alpha_t = c_in and sigma_t = sigma c_in in Eq. 2, and the time input
  c_noise = ln(sigma) / 4 (``precondition_noise``); its output F gives the denoised
  D = c_skip x + c_out F (``precondition_outputs``, x = x0 + sigma eps) and the epsilon estimate
  (x - D) / sigma, scored against eps (objective ``"epsilon"``); the latent is normalised with the VAE's
  ``latents_mean`` / ``latents_std`` as the SDXL img2img pipeline encodes it:
  (z - mean) * scaling_factor / std.
"""
from __future__ import annotations

import torch

EDM_SCHEDULERS = ("EDMDPMSolverMultistepScheduler", "EDMEulerScheduler")


def is_edm(scheduler) -> bool:
    """Whether ``scheduler`` is one of diffusers' EDM-formulation schedulers (:data:`EDM_SCHEDULERS`)."""
    return type(scheduler).__name__ in EDM_SCHEDULERS


def normalised_latent(z: torch.Tensor, vae_config) -> torch.Tensor:
    """The VAE posterior mean ``z`` as an EDM pipeline encodes it: (z - latents_mean) * scaling_factor /
    latents_std per channel where the VAE has both statistics, else z * scaling_factor (the SDXL img2img rule)."""
    mean, std = getattr(vae_config, "latents_mean", None), getattr(vae_config, "latents_std", None)
    if mean is None or std is None:
        return z * vae_config.scaling_factor
    if len(mean) != z.shape[1] or len(std) != z.shape[1]:
        raise ValueError(f"the VAE's latents_mean / latents_std have {len(mean)} / {len(std)} entries for a "
                         f"{z.shape[1]}-channel latent")
    shape = (1, -1) + (1,) * (z.ndim - 2)
    mean = torch.tensor(mean, dtype=z.dtype, device=z.device).view(shape)
    std = torch.tensor(std, dtype=z.dtype, device=z.device).view(shape)
    return (z - mean) * vae_config.scaling_factor / std


class EDMNoise:
    """EDM's noise levels and preconditioning from a pipeline's scheduler (a fresh copy: ``set_timesteps``, run
    by any sampling, rewrites the pipeline's own ``sigmas``)."""

    def __init__(self, scheduler):
        if not is_edm(scheduler):
            raise ValueError(f"{type(scheduler).__name__} is not an EDM scheduler; EDM noise levels need one of "
                             f"{EDM_SCHEDULERS}")
        self.scheduler = type(scheduler).from_config(scheduler.config)
        self.grid = self.scheduler.sigmas[:-1].double().flip(0)  # increasing noise; the final sampling entry dropped

    def timestep(self, t: torch.Tensor) -> torch.Tensor:
        """t in [0, 1] -> the grid index k = round(T t) (T = num_train_timesteps), clamped to the grid."""
        T = int(self.scheduler.config.num_train_timesteps)
        return torch.clamp(torch.round(t.double().cpu() * T), 0, len(self.grid) - 1).long()

    def sigma(self, t: torch.Tensor) -> torch.Tensor:
        """The noise level at times t in [0, 1] (float64, on the CPU)."""
        return self.grid[self.timestep(t)]

    def c_in(self, sigma: torch.Tensor) -> torch.Tensor:
        return self.scheduler.precondition_inputs(torch.ones_like(sigma), sigma)

    def c_noise(self, sigma: torch.Tensor) -> torch.Tensor:
        return self.scheduler.precondition_noise(sigma)

    def epsilon(self, z_t: torch.Tensor, output: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """The epsilon estimate from the network's output at z_t = c_in (x0 + sigma eps), in float32."""
        s = sigma.to(z_t.device, torch.float32).view(-1, *[1] * (z_t.ndim - 1))
        x = z_t.float() / self.c_in(s)
        denoised = self.scheduler.precondition_outputs(x, output.float(), s)
        return (x - denoised) / s
