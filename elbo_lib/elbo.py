"""Per-class ELBO estimates from the diffusion loss (Eqs. 4 and 6, Table I).

For each class prompt c_i and timestep t_j the loss is ||f_theta(z_t, t, c_i) - target||^2 on the
same noise eps_j for every class (common random numbers), so differences between classes come
from the conditioning alone. Summed over timesteps it estimates -ELBO(x | c_i) up to terms that
do not depend on the class.

Weights w(t) that un-weight each objective to the epsilon-prediction error (Table I), derived
from z_t = alpha_t x0 + sigma_t eps with alpha_t^2 + sigma_t^2 = 1 (VP) or alpha_t = 1 - t,
sigma_t = t (rectified flow):

===========  ===================  =====================  ===========================
objective    model predicts        eps-error identity     w(t) on the native MSE
===========  ===================  =====================  ===========================
epsilon      eps                  eps - eps_hat          1
v            alpha eps - sigma x0 alpha (v - v_hat)      alpha_t^2
sample       x0                   alpha/sigma (x0_hat-x0) alpha_t^2 / sigma_t^2 (SNR)
flow         u = eps - x0          alpha (u - u_hat)      alpha_t^2 = (1 - t)^2
===========  ===================  =====================  ===========================

``weighting``:
- ``"authors"`` (default, the official configuration): what the authors' code computes. For
  DDPM-type models (epsilon, v, sample) it converts the prediction to epsilon and takes
  ``mse(eps, eps_hat)``, which is ``"eps"`` below; for flow matching (SD 3) it takes the plain
  velocity MSE ``mse(eps - x0, u_hat)``, which is ``"native"``. Beyond the paper's models the same
  rule applies: FLUX (flow) gets the plain velocity MSE, PixArt-Sigma (epsilon, learned sigma) the
  eps MSE on its epsilon channels (``models.flux``, ``models.pixart``).
- ``"eps"``: w(t) above, so every objective is compared in the same epsilon-space error, with
  equal weight per sampled timestep (for SD 3 this multiplies the velocity MSE by (1 - sigma)^2).
- ``"native"``: the plain per-timestep MSE in the model's own parameterisation.
- ``"vlb"``: the eps-space error times -d lambda / dt with lambda = log(alpha^2 / sigma^2), the
  continuous-time variational bound of Kingma et al. (2021); high variance near t = 0.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from .attention import uncaptured_attention
from .models.base import PipelineAdapter, TextCondition

STRATEGIES = {"even": (0.0, 1.0), "random": (0.0, 1.0), "small": (0.0, 0.2), "middle": (0.4, 0.6), "large": (0.7, 0.9)}
WEIGHTINGS = ("authors", "eps", "native", "vlb")


def elbo_timesteps(n: int, strategy: str = "even", seed: int = 0, num_train_timesteps: int = 1000) -> np.ndarray:
    """ELBO timesteps t in (0, 1) (Table VII). "even" over [0, 1] is the authors' 1, 51, ..., 951 of
    1000 for n = 20; range strategies space n points evenly inside their range; "random" draws
    uniformly from [0, 1] with ``seed``."""
    if n < 1:
        raise ValueError(f"number of ELBO timesteps must be >= 1, got {n}")
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown timestep strategy {strategy!r}; choose from {list(STRATEGIES)}")
    T = num_train_timesteps
    if strategy == "even":
        return (1 + np.floor(np.arange(n) * T / n)) / T
    if strategy == "random":
        rng = np.random.default_rng([seed, 7])
        return np.sort(rng.integers(1, T, size=n)) / T
    lo, hi = STRATEGIES[strategy]
    return lo + (np.arange(n) + 0.5) * (hi - lo) / n


def attention_timesteps(n: int = 10, t_max: float = 0.2) -> np.ndarray:
    """Attention collection times: n evenly up to t_max (the authors' 20, 40, ..., 200 of 1000)."""
    if n < 1:
        raise ValueError(f"number of attention timesteps must be >= 1, got {n}")
    if not 0 < t_max <= 1:
        raise ValueError(f"attention t_max must be in (0, 1], got {t_max}")
    return t_max * (np.arange(n) + 1) / n


def objective_weight(adapter: PipelineAdapter, t: torch.Tensor, weighting: str = "authors") -> torch.Tensor:
    """Eq. 6 / Table I: w(t) multiplying the native MSE (see module docstring)."""
    if weighting not in WEIGHTINGS:
        raise ValueError(f"unknown ELBO weighting {weighting!r}; choose from {WEIGHTINGS}")
    if weighting == "authors":
        weighting = "native" if adapter.objective == "flow" else "eps"
    if weighting == "native":
        return torch.ones_like(t, dtype=torch.float32, device=adapter.device)
    alpha_t, sigma_t = adapter.alpha_sigma(t)
    obj = adapter.objective
    w = {"epsilon": torch.ones_like(alpha_t), "v_prediction": alpha_t**2, "flow": alpha_t**2,
         "sample": alpha_t**2 / sigma_t**2}[obj]
    if weighting == "vlb":
        w = w * _minus_dlambda_dt(adapter, t)
    return w


def reweight(losses: torch.Tensor, adapter: PipelineAdapter, t, source: str = "authors",
             target: str = "eps") -> torch.Tensor:
    """Losses (N, T) measured with weighting ``source`` at times ``t`` (T,), as weighting ``target`` would have
    given them: each timestep's column times w_target(t) / w_source(t). Exact, since w depends on t alone and
    the noise is shared, so one measurement serves both rows of a weighting comparison (Table I)."""
    tt = torch.as_tensor(np.asarray(t), dtype=torch.float64)
    if losses.ndim != 2 or losses.shape[1] != len(tt):
        raise ValueError(f"losses must be (classes, {len(tt)} timesteps), got {tuple(losses.shape)}")
    ratio = objective_weight(adapter, tt, target) / objective_weight(adapter, tt, source)
    return losses * ratio.to(losses.device, losses.dtype)


def _minus_dlambda_dt(adapter: PipelineAdapter, t: torch.Tensor, h: float = 1e-3) -> torch.Tensor:
    def lam(tt):
        a, s = adapter.alpha_sigma(tt)
        return torch.log(a**2 / s**2)
    if adapter.objective == "flow" and not adapter.flow_shift:  # sigma = t: lambda = 2 log((1 - t) / t) exactly
        tt = t.to(adapter.device, torch.float32).clamp(1e-3, 1 - 1e-3)
        return 2.0 / (tt * (1 - tt))
    lo, hi = (t - h).clamp(min=0.0), (t + h).clamp(max=1.0 - 1.0 / 1000)
    return -(lam(hi) - lam(lo)) / (hi - lo).to(adapter.device)


def shared_noise(shape: Sequence[int], n_timesteps: int, seed: int, device, dtype) -> torch.Tensor:
    """(T, *shape) standard normal noise, one draw per timestep, from one seeded CPU generator."""
    g = torch.Generator().manual_seed(int(seed))
    return torch.randn((n_timesteps, *shape), generator=g).to(device, dtype)


class NonFiniteError(FloatingPointError):
    """The denoiser returned NaN or inf (typically fp16 overflow)."""


def check_finite(x: torch.Tensor, what: str) -> torch.Tensor:
    if not torch.isfinite(x).all():
        raise NonFiniteError(f"{what} contains NaN or inf (dtype {x.dtype}); fp16 overflow is the usual cause: "
                             "load the pipeline with dtype=torch.float32 (or bfloat16) and retry")
    return x


@torch.no_grad()
def class_losses(adapter: PipelineAdapter, x0: torch.Tensor, cond: TextCondition, t: torch.Tensor,
                 eps: torch.Tensor, weighting: str = "authors", batch_size: int = 64,
                 progress: bool = False, attention: str = "sdpa") -> torch.Tensor:
    """Eq. 4: losses (N, T) for N prompts x T timesteps, batched over all (class, timestep) pairs.

    x0 (1, C, h, w); eps (T, C, h, w) shared by every class; on CUDA out-of-memory the batch is
    halved and the chunk retried. The passes capture nothing: ``attention`` (:func:`.attention.uncaptured_attention`)
    runs them on fused SDPA (``"sdpa"``) or on the capture path's explicit probabilities (``"explicit"``)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    adapter = adapter.for_latent(x0)
    with uncaptured_attention(adapter.denoiser, attention, adapter.joint_attention):
        return _batched_losses(adapter, x0, cond, t, eps, weighting, batch_size, progress)


def _batched_losses(adapter: PipelineAdapter, x0, cond: TextCondition, t, eps, weighting: str, batch_size: int,
                    progress: bool) -> torch.Tensor:
    N, T = len(cond), len(t)
    alpha_t, sigma_t = adapter.alpha_sigma(t)
    view = (-1,) + (1,) * (x0.ndim - 1)
    z_t = (alpha_t.view(view) * x0.float() + sigma_t.view(view) * eps.float())  # (T, C, h, w)
    target = adapter.target(x0.float(), eps.float(), t)  # (T, C, h, w)
    w = objective_weight(adapter, t, weighting)
    ii, jj = torch.meshgrid(torch.arange(N), torch.arange(T), indexing="ij")
    ii, jj = ii.reshape(-1), jj.reshape(-1)
    out = torch.empty(N * T, dtype=torch.float32, device=adapter.device)
    # equal chunks (200 rows at batch 64: 4 x 50, not 64 + 64 + 64 + 8)
    n_chunks = math.ceil(N * T / batch_size)
    start, bs = 0, math.ceil(N * T / n_chunks)
    bar = tqdm(total=N * T, desc="ELBO", disable=not progress, leave=False)
    while start < N * T:
        sl = slice(start, min(start + bs, N * T))
        try:
            pred = adapter.predict(z_t[jj[sl]].to(adapter.dtype), t[jj[sl]], cond.index(ii[sl].to(cond.embeds.device)))
        except torch.cuda.OutOfMemoryError:
            if bs == 1:
                raise
            bs = max(1, bs // 2)
            torch.cuda.empty_cache()
            continue
        check_finite(pred, "denoiser output")
        err = (pred.float() - target[jj[sl]]).pow(2).flatten(1).mean(1)
        out[sl] = err * w[jj[sl]]
        bar.update(sl.stop - sl.start)
        start = sl.stop
    bar.close()
    return out.view(N, T)


@torch.no_grad()
def class_losses_loop(adapter: PipelineAdapter, x0, cond: TextCondition, t, eps, weighting: str = "authors") -> torch.Tensor:
    """Reference implementation: one denoiser call per (class, timestep), as the authors' code."""
    adapter = adapter.for_latent(x0)
    N, T = len(cond), len(t)
    out = torch.empty(N, T)
    w = objective_weight(adapter, t, weighting)
    for i in range(N):
        for j in range(T):
            a, s = (v[0] for v in adapter.alpha_sigma(t[j:j + 1]))
            z = a * x0.float() + s * eps[j:j + 1].float()
            pred = adapter.predict(z.to(adapter.dtype), t[j:j + 1], cond.index(torch.tensor([i])))
            tgt = adapter.target(x0.float(), eps[j:j + 1].float(), t[j:j + 1])
            out[i, j] = (pred.float() - tgt).pow(2).mean() * w[j]
    return out
