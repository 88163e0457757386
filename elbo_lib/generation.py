"""Compositional generation with ELBO alignment scores as prompt weights (paper Sec. IV-B, Table V, Fig. 5).

The authors' loop (``run_generation.py`` in VCG-team/elbo-t2ialign), followed step for step:

- the prompt's noun phrases c_1..c_N, determiner included: "a red circle" (spaCy noun chunks filtered as
  the authors filter them: :mod:`elbo_lib.noun_phrases`; or named by the caller);
- 50 deterministic DDIM steps on the training grid t = T-1, T-1-T/50, ..., T/50 - 1, each stepping to
  max(0, t - T/50) (the last one lands on alpha_bar[0], not on alpha_bar = 1);
- at every step (``elbo_steps`` = all of them) the conditional predictions for the whole prompt and
  for each phrase alone, and per phrase the diffusion "loss" L_i = mean((pred_prompt - pred_phrase)^2);
- weights w_i = round(1.2 ** minmax(L), 2): the phrase the prompt's prediction explains least gets 1.2,
  the best explained 1.0; the weighted prompt "(a red circle)1.2 and (a blue square)1.0" is encoded with
  compel (the library the authors use);
- classifier-free guidance with an empty negative prompt (7.5 for SD 1.x / 2.x, 5.0 for SDXL, as theirs).

A prompt with fewer than two phrases is generated with the plain prompt: theirs keeps the weight 1.0,
"(a cat)1.0 on a mat", which compel encodes exactly as the plain prompt. Two documented departures, both where
the authors' code has no defined result: a step at which every phrase has the same loss uses weights 1.0 (their
minmax is 0/0, a NaN weight); and a phrase that cannot be marked at its first occurrence (a repeat, or one
first found inside an earlier phrase) is dropped by :func:`usable_phrases` where a caller asks for it (their
``generate_prompt`` writes one weight over another phrase's text there).

SD 3 is not served: compel has no SD 3 wrapper, and the authors' SD 3 path hands the "(phrase)1.2" text to
the pipeline's own encoders, which read the weight syntax as words. :func:`generate` refuses it by name.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from compel import Compel, ReturnedEmbeddingsType
from tqdm.auto import tqdm

from .models import TextCondition, adapter_for

ELBO_STRENGTH = 1.2          # the authors' elbo_strength: the largest prompt weight
GUIDANCE = {"sd": 7.5, "sdxl": 5.0}  # the authors' guidance scales (Diffusion.__init__)
DEFAULT_STEPS = 50           # infer_timesteps = elbo_timesteps = 50


# ---- the sampler (the authors' Diffusion.step) ----------------------------------------------------------
GRIDS = ("authors", "scheduler")


def ddim_timesteps(num_train_timesteps: int, steps: int) -> list[int]:
    """The authors' grid: T-1, T-1-r, ..., down to (but excluding) 0, with r = T // steps."""
    if not 1 <= steps <= num_train_timesteps:
        raise ValueError(f"steps must lie in [1, {num_train_timesteps}], got {steps}")
    return list(range(num_train_timesteps - 1, 0, -(num_train_timesteps // steps)))


def sampling_grid(adapter, steps: int, grid: str = "authors") -> list[tuple[int, int]]:
    """(t, t_next) pairs of integer training timesteps. ``"authors"``: :func:`ddim_timesteps`, each stepping to
    max(0, t - T // steps). ``"scheduler"`` (a project option): the pipeline scheduler's own ``set_timesteps``
    grid (its spacing and offset), each stepping to the next grid point and the last to 0. The two differ
    where the schedule's last step is extreme: the authors' grid starts at t = T - 1, where a cosine schedule
    (the toy models') has alpha_bar ~ 1e-9, so the first step divides the predicted noise's error by
    sqrt(alpha_bar)."""
    if grid not in GRIDS:
        raise ValueError(f"grid must be one of {GRIDS}, got {grid!r}")
    T = int(adapter.num_train_timesteps)
    if grid == "authors":
        ts = ddim_timesteps(T, steps)
        return [(t, max(0, t - T // steps)) for t in ts]
    if not 1 <= steps <= T:
        raise ValueError(f"steps must lie in [1, {T}], got {steps}")
    sched = type(adapter.pipe.scheduler).from_config(adapter.pipe.scheduler.config)
    sched.set_timesteps(steps)
    ts = [int(t) for t in sched.timesteps]
    return list(zip(ts, ts[1:] + [0]))


def x0_eps(z_t: torch.Tensor, pred: torch.Tensor, objective: str, alpha_t: torch.Tensor,
           sigma_t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The clean sample and the noise implied by a prediction at z_t = alpha_t x0 + sigma_t eps (Table I)."""
    if objective == "epsilon":
        return (z_t - sigma_t * pred) / alpha_t, pred
    if objective == "v_prediction":  # v = alpha eps - sigma x0, alpha^2 + sigma^2 = 1
        return alpha_t * z_t - sigma_t * pred, alpha_t * pred + sigma_t * z_t
    if objective == "sample":
        return pred, (z_t - alpha_t * pred) / sigma_t
    if objective == "flow":  # u = eps - x0, alpha = 1 - sigma
        return z_t - sigma_t * pred, z_t + alpha_t * pred
    raise ValueError(f"unknown objective {objective!r}")


def ddim_step(z_t: torch.Tensor, pred: torch.Tensor, objective: str, alpha_t, sigma_t, alpha_next,
              sigma_next) -> torch.Tensor:
    """Deterministic DDIM (eta = 0): z_next = alpha_next x0 + sigma_next eps; for flow matching this is the
    Euler step z + (sigma_next - sigma_t) u."""
    x0, eps = x0_eps(z_t, pred, objective, alpha_t, sigma_t)
    return alpha_next * x0 + sigma_next * eps


def guided(uncond: torch.Tensor, cond: torch.Tensor, guidance: float) -> torch.Tensor:
    """Classifier-free guidance: uncond + g (cond - uncond)."""
    return uncond + guidance * (cond - uncond)


NOISE = ("cpu", "device")


def check_noise(noise: str) -> str:
    if noise not in NOISE:
        raise ValueError(f"noise must be one of {NOISE} (where the initial latent is drawn), got {noise!r}")
    return noise


def initial_latents(adapter, seeds: list[int], noise: str = "cpu") -> torch.Tensor:
    """One standard-normal latent per seed, each ``torch.manual_seed(seed); torch.randn(1, C, h, w)`` as the
    authors' ``prepare_latent`` draws it. ``noise="cpu"``: drawn on the CPU in float32 (the same numbers on every
    machine), then moved to the denoiser. ``"device"``: drawn on the denoiser's device in its dtype, which is
    what their code does on a GPU (other numbers than the CPU's for the same seed)."""
    check_noise(noise)
    den = adapter.denoiser
    c, s = int(den.config.in_channels), int(den.config.sample_size)
    if noise == "cpu":
        z = [torch.randn(1, c, s, s, generator=torch.Generator().manual_seed(int(sd))) for sd in seeds]
        return torch.cat(z).to(adapter.device, adapter.dtype)
    dev, dt = adapter.device, adapter.dtype
    return torch.cat([torch.randn(1, c, s, s, generator=torch.Generator(dev).manual_seed(int(sd)), device=dev, dtype=dt)
                      for sd in seeds])


def authors_device_options(pipe) -> dict:
    """:func:`generate`'s ``noise`` and ``autocast`` as the authors' code runs on the pipeline's device. On CUDA
    (their ``io.yaml``: fp16 weights, the VAE cast to fp32): the initial latent drawn on the GPU in the
    denoiser's dtype, and every denoiser call under ``torch.autocast("cuda", torch.float16)``. On a CPU their
    autocast (CUDA's) is inactive and the latent is drawn on the CPU in float32: the defaults."""
    if adapter_for(pipe).device.type == "cuda":
        return {"noise": "device", "autocast": torch.float16}
    return {"noise": "cpu", "autocast": None}


def autocast_predict(adapter, dtype: torch.dtype | None):
    """``adapter.predict``, run under ``torch.autocast`` on the denoiser's device in ``dtype`` (None: as is).
    Only the denoiser: text encoding and the VAE stay outside it, as in the authors' code."""
    if dtype is None:
        return adapter.predict
    if dtype not in (torch.float16, torch.bfloat16):
        raise ValueError(f"autocast must be torch.float16, torch.bfloat16 or None, got {dtype!r}")

    def predict(z, t, cond):
        with torch.autocast(adapter.device.type, dtype=dtype):
            return adapter.predict(z, t, cond)
    return predict


@torch.no_grad()
def decode(adapter, z: torch.Tensor) -> np.ndarray:
    """Latents -> (N, H, W, 3) uint8 images through the VAE (scaling and shift undone)."""
    vae = adapter.pipe.vae
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    x = vae.decode((z / vae.config.scaling_factor + shift).to(adapter.vae_dtype)).sample
    x = (x.float().clamp(-1, 1) + 1) * 127.5
    return x.round().permute(0, 2, 3, 1).cpu().numpy().astype(np.uint8)


# ---- prompt weights (the authors' generate_prompt and weight rule) -----------------------------------
def phrase_weights(losses, strength: float = ELBO_STRENGTH) -> list[float]:
    """round(strength ** minmax(losses), 2): 1.0 for the phrase the prompt explains best, ``strength`` for
    the worst. Equal losses (or a single phrase) give all 1.0 (no reweighting)."""
    if not strength > 0:
        raise ValueError(f"strength must be > 0, got {strength}")
    l = torch.as_tensor(losses, dtype=torch.float32).reshape(-1)
    if not torch.isfinite(l).all():
        raise ValueError(f"phrase losses must be finite, got {l.tolist()}")
    span = l.max() - l.min() if len(l) else torch.tensor(0.0)
    if len(l) < 2 or span == 0:
        return [1.0] * len(l)
    w = torch.round(torch.pow(torch.tensor(float(strength)), (l - l.min()) / span), decimals=2)
    return [round(float(v), 2) for v in w]


def check_phrases(prompt: str, phrases: list[str]) -> list[str]:
    """Each phrase must occur in the prompt, once, without overlapping another."""
    spans = []
    for p in phrases:
        if not isinstance(p, str) or not p.strip():
            raise ValueError(f"phrases must be non-empty strings, got {p!r}")
        start = prompt.find(p)
        if start < 0:
            raise ValueError(f"phrase {p!r} is not in the prompt {prompt!r}; phrases are substrings of the prompt "
                             "(e.g. 'a red circle' in 'a red circle and a blue square')")
        spans.append((start, start + len(p), p))
    spans.sort()
    for (s0, e0, p0), (s1, _, p1) in zip(spans, spans[1:]):
        if s1 < e0:
            raise ValueError(f"phrases {p0!r} and {p1!r} overlap in the prompt {prompt!r}")
    return list(phrases)


def usable_phrases(prompt: str, phrases: list[str]) -> tuple[list[str], list[str]]:
    """(kept, dropped): the phrases :func:`weighted_prompt` can mark, in order. A phrase is placed at its first
    occurrence (the authors' ``prompt.find``), so a repeated phrase ("a dog and a dog") or one first found
    inside an earlier phrase ("a cat" in "a cat's toy and a cat") cannot be marked on its own: it is dropped.
    On such prompts the authors' ``generate_prompt`` writes one phrase's weight over another's text."""
    kept, spans, dropped = [], [], []
    for p in phrases:
        start = prompt.find(p) if isinstance(p, str) and p.strip() else -1
        span = (start, start + len(p)) if start >= 0 else None
        if span is None or p in kept or any(span[0] < e and s < span[1] for s, e in spans):
            dropped.append(p)
            continue
        kept.append(p)
        spans.append(span)
    return kept, dropped


def weighted_prompt(prompt: str, phrases: list[str], weights: list[float],
                    max_weight: float = 10.0) -> str:
    """compel syntax for the weights: '(a red circle)1.2 and (a blue square)1.0' (first occurrence of each
    phrase, as the authors' ``generate_prompt``)."""
    check_phrases(prompt, phrases)
    if len(weights) != len(phrases):
        raise ValueError(f"{len(weights)} weights for {len(phrases)} phrases")
    for w in weights:
        if not (np.isfinite(w) and 0 < w <= max_weight):
            raise ValueError(f"prompt weights must lie in (0, {max_weight}], got {w}")
    spans = sorted((prompt.find(p), p, w) for p, w in zip(phrases, weights))
    out = prompt
    for start, p, w in reversed(spans):
        out = out[:start] + f"({p}){w}" + out[start + len(p):]
    return out


class PromptWeighting:
    """Weighted prompts -> the denoiser's text condition, through compel (SD 1.x / 2.x: one CLIP encoder,
    last hidden state; SDXL: both encoders' penultimate hidden states and the second one's pooled
    embedding, as the authors configure compel). Encodings are cached by prompt string: the rounded
    weights take few values."""

    def __init__(self, pipe):
        self.adapter = adapter_for(pipe)
        fam = self.adapter.family
        if fam == "sd":
            self.compel = Compel(tokenizer=pipe.tokenizer, text_encoder=pipe.text_encoder)
        elif fam == "sdxl":
            self.compel = Compel(tokenizer=[pipe.tokenizer, pipe.tokenizer_2],
                                 text_encoder=[pipe.text_encoder, pipe.text_encoder_2],
                                 returned_embeddings_type=ReturnedEmbeddingsType.PENULTIMATE_HIDDEN_STATES_NON_NORMALIZED,
                                 requires_pooled=[False, True])
        else:
            raise ValueError(f"prompt weighting serves SD 1.x / 2.x and SDXL pipelines (compel); got the {fam!r} "
                             f"family ({type(pipe).__name__}). See elbo_lib.generation's docstring for SD 3.")
        self._cache: dict[str, TextCondition] = {}

    @torch.no_grad()
    def _encode(self, prompt: str) -> TextCondition:
        out = self.compel(prompt)
        a = self.adapter
        if a.family == "sdxl":
            return a.condition(*out)
        return TextCondition(out.to(a.device, a.dtype), {})

    def __call__(self, prompts: list[str]) -> TextCondition:
        for p in prompts:
            if p not in self._cache:
                self._cache[p] = self._encode(p)
        parts = [self._cache[p] for p in prompts]
        return cat_conditions(parts)


def cat_conditions(parts: list[TextCondition]) -> TextCondition:
    """Concatenate text conditions along the prompt axis (equal token lengths: compel pads to the maximum)."""
    lens = {c.embeds.shape[1] for c in parts}
    if len(lens) > 1:
        raise ValueError(f"text conditions of different token lengths {sorted(lens)} cannot be batched")
    keys = parts[0].extra.keys()
    return TextCondition(torch.cat([c.embeds for c in parts]), {k: torch.cat([c.extra[k] for c in parts]) for k in keys})


# ---- the generation loop --------------------------------------------------------------------------------
@dataclass
class Generation:
    """Images and, per image, the prompt weights used at each step and the phrase losses they came from
    ((steps, N phrases); empty when plain); the final latents (before the VAE) and, with ``keep_trajectory``,
    the latent after every step ((steps, images, C, h, w)); both float32 on the CPU."""

    images: np.ndarray
    prompts: list[str]
    phrases: list[list[str]]
    seeds: list[int]
    reweight: bool
    weights: list[np.ndarray] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    losses: list[np.ndarray] = field(default_factory=list)
    latents: torch.Tensor | None = None
    trajectory: torch.Tensor | None = None


def _check_inputs(prompts, phrases, seeds, steps, elbo_steps, guidance, strength):
    if isinstance(prompts, str):
        raise TypeError("prompts must be a list of strings, got one string; wrap it: [prompt]")
    if phrases is None:
        raise ValueError("phrases are required: one list of noun phrases per prompt (the authors use spaCy noun "
                         "chunks, e.g. ['a red circle', 'a blue square'] for 'a red circle and a blue square'; "
                         "elbo_lib.noun_phrases extracts them)")
    if len(phrases) != len(prompts) or len(seeds) != len(prompts):
        raise ValueError(f"need one phrase list and one seed per prompt: {len(prompts)} prompts, "
                         f"{len(phrases)} phrase lists, {len(seeds)} seeds")
    for p, ph in zip(prompts, phrases):
        check_phrases(p, list(ph))
    if elbo_steps is not None and not 0 <= elbo_steps <= steps:
        raise ValueError(f"elbo_steps must lie in [0, steps={steps}], got {elbo_steps}")
    if guidance is not None and not np.isfinite(guidance):
        raise ValueError(f"guidance must be finite, got {guidance}")
    if not strength > 0:
        raise ValueError(f"strength must be > 0, got {strength}")


def _check_latents(adapter, latents: torch.Tensor, n: int) -> torch.Tensor:
    den = adapter.denoiser
    want = (n, int(den.config.in_channels), int(den.config.sample_size), int(den.config.sample_size))
    if not isinstance(latents, torch.Tensor) or tuple(latents.shape) != want:
        got = tuple(latents.shape) if isinstance(latents, torch.Tensor) else type(latents).__name__
        raise ValueError(f"latents must be a tensor of shape {want} (one initial latent per prompt), got {got}")
    return latents.to(adapter.device, adapter.dtype)


def denoise(adapter, z: torch.Tensor, pairs: list[tuple[int, int]], prediction, bar=None,
            on_step=None) -> torch.Tensor:
    """Run the sampler from z over (t, t_next) pairs; ``prediction(z, t, k)`` returns the guided prediction
    at step k; ``on_step(k, z)`` sees the latent after step k. One home for the step rule, shared by generation
    and editing."""
    T = int(adapter.num_train_timesteps)
    for k, (t, nxt) in enumerate(pairs):
        pred = prediction(z, t, k)
        a_t, s_t = (v.view(1, 1, 1, 1) for v in adapter.alpha_sigma(torch.tensor([t / T], dtype=torch.float64)))
        a_n, s_n = (v.view(1, 1, 1, 1) for v in adapter.alpha_sigma(torch.tensor([nxt / T], dtype=torch.float64)))
        z = ddim_step(z.float(), pred.float(), adapter.objective, a_t, s_t, a_n, s_n).to(adapter.dtype)
        if on_step is not None:
            on_step(k, z)
        if bar is not None:
            bar.update(len(z))
    return z


def timestep_batch(adapter, t: int, n: int) -> torch.Tensor:
    """n copies of integer training timestep t as the adapter's continuous time."""
    return torch.full((n,), t / adapter.num_train_timesteps, dtype=torch.float64)


@torch.no_grad()
def generate(pipe, prompts: list[str], phrases: list[list[str]] | None, seeds: list[int], reweight: bool = True,
             steps: int = DEFAULT_STEPS, elbo_steps: int | None = None, guidance: float | None = None,
             strength: float = ELBO_STRENGTH, negative_prompt: str = "", grid: str = "authors", batch_size: int = 16,
             weighting: PromptWeighting | None = None, progress: bool = True, latents: torch.Tensor | None = None,
             noise: str = "cpu", autocast: torch.dtype | None = None, keep_trajectory: bool = False) -> Generation:
    """Generate one image per (prompt, seed); ``reweight=False`` is the baseline (the plain prompt through the
    same sampler, encoder and guidance). ``elbo_steps``: reweight during the first that many steps (default:
    all). ``grid``: see :func:`sampling_grid`. ``guidance`` defaults to the authors' scale for the family.
    Initial latents: drawn from ``seeds`` (``noise``: see :func:`initial_latents`), or given as ``latents``
    (N, C, h, w). ``autocast``: the denoiser's calls under ``torch.autocast`` in that dtype (the authors' GPU
    run: :func:`authors_device_options`); the VAE decodes in its own dtype (float32 from ``load_pipeline``).
    Batched: each step's phrase predictions of a whole batch of prompts go through the denoiser in one call."""
    adapter = adapter_for(pipe)
    weighting = weighting or PromptWeighting(pipe)
    seeds = [int(s) for s in seeds]
    _check_inputs(prompts, phrases, seeds, steps, elbo_steps, guidance, strength)
    if latents is not None:
        latents = _check_latents(adapter, latents, len(prompts))
    else:
        check_noise(noise)  # before any denoiser call
    predict = autocast_predict(adapter, autocast)
    elbo_steps = steps if elbo_steps is None else elbo_steps
    guidance = GUIDANCE[adapter.family] if guidance is None else float(guidance)
    pairs = sampling_grid(adapter, steps, grid)
    images, weights, losses, notes, finals, trajs = [], [], [], [], [], []
    bar = tqdm(total=len(prompts) * len(pairs), desc="reweighted generation" if reweight else "generation",
               disable=not progress)
    for s in range(0, len(prompts), batch_size):
        b_prompts, b_phr = list(prompts[s:s + batch_size]), [list(p) for p in phrases[s:s + batch_size]]
        n = len(b_prompts)
        active = [reweight and len(ph) >= 2 for ph in b_phr]
        notes += ["" if a or not reweight else "fewer than two phrases: plain prompt" for a in active]
        plain, uncond = weighting(b_prompts), weighting([negative_prompt] * n)
        rows = [i for i in range(n) if active[i]]
        phr_idx = [(i, j) for i in rows for j in range(len(b_phr[i]))]
        phr_cond = weighting([b_phr[i][j] for i, j in phr_idx]) if phr_idx else None
        w_hist = [np.ones((len(pairs), len(ph)), dtype=np.float32) for ph in b_phr]
        l_hist = [np.zeros((len(pairs), len(ph)), dtype=np.float32) for ph in b_phr]

        def prediction(z, t, k):
            if not rows or k >= elbo_steps:
                out = predict(torch.cat([z, z]), timestep_batch(adapter, t, 2 * n), cat_conditions([plain, uncond]))
                return guided(out[n:].float(), out[:n].float(), guidance)
            # one call: the whole prompt and each phrase (conditional, unweighted), and the negative prompt
            sel = torch.tensor(rows)
            zin = torch.cat([z[sel], z[torch.tensor([i for i, _ in phr_idx])], z])
            out = predict(zin, timestep_batch(adapter, t, len(zin)), cat_conditions([plain.index(sel), phr_cond, uncond]))
            m, q = len(rows), len(phr_idx)
            pred_all, pred_phr, pred_u = out[:m].float(), out[m:m + q].float(), out[m + q:].float()
            texts = list(b_prompts)
            for r, i in enumerate(rows):
                js = [c for c, (ii, _) in enumerate(phr_idx) if ii == i]
                l = torch.stack([torch.mean((pred_all[r] - pred_phr[c]) ** 2) for c in js])
                w = phrase_weights(l, strength)
                w_hist[i][k], l_hist[i][k] = w, l.cpu().numpy()
                texts[i] = weighted_prompt(b_prompts[i], b_phr[i], w)
            pred_c = predict(z, timestep_batch(adapter, t, n), weighting(texts)).float()
            return guided(pred_u, pred_c, guidance)

        z0 = latents[s:s + batch_size] if latents is not None else initial_latents(adapter, seeds[s:s + batch_size], noise)
        traj = []
        z = denoise(adapter, z0, pairs, prediction, bar,
                    on_step=(lambda k, z: traj.append(z.float().cpu())) if keep_trajectory else None)
        images.append(decode(adapter, z))
        finals.append(z.float().cpu())
        if keep_trajectory:
            trajs.append(torch.stack(traj))
        empty = np.zeros((len(pairs), 0), dtype=np.float32)
        weights += [w if active[i] else empty for i, w in enumerate(w_hist)]
        losses += [l if active[i] else empty for i, l in enumerate(l_hist)]
    bar.close()
    return Generation(np.concatenate(images), list(prompts), [list(p) for p in phrases], seeds, reweight,
                      weights, notes, losses, torch.cat(finals), torch.cat(trajs, dim=1) if keep_trajectory else None)
