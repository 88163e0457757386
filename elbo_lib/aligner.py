"""Algorithm 1 (ELBO-T2IAlign) composed from the pieces, with a cacheable split:

``Aligner.measure`` makes every denoiser call (per-class ELBO losses per timestep, per-timestep
class attention maps, averaged self-attention) and returns a :class:`Measurement`;
``finalize`` turns a measurement into heatmaps for any gamma, timestep subset, fixed S or
calibration switch without touching the model.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np
import torch

from . import calibrate as cal
from .attention import (LAYER_WEIGHTS, UNCAPTURED_ATTENTION, LayerWeights, SelfAttentionAverage, aggregate_cross,
                        capture_attention)
from .elbo import WEIGHTINGS, attention_timesteps, check_finite, class_losses, elbo_timesteps, shared_noise
from .models import adapter_for, model_hints, to_pil_rgb
from .models.base import RESIZES
from .tokens import OCCURRENCES, default_caption, token_positions


SELF_RULES = ("two_hop", "finest")
NOISE_DRAWS = ("stream", "split")
MEASURE_VERSION = 2  # bump when the same config fields start to give different measurements

# The project's own choices before it was pinned to the authors' code, kept as a named preset so
# that any table can show them as an extra, labelled row.
PRESETS = {
    "official": {},
    "project": dict(layer_weights="levels", self_rule="finest", renormalize=False, weighting="eps",
                    token_occurrence="all", resize="unet-bicubic", noise="split", flow_shift=False),
}


@dataclass(frozen=True)
class AlignConfig:
    """The method's knobs. The defaults are the **official** configuration: the authors' public code
    (VCG-team/elbo-t2ialign, run script settings) step for step, pinned by ``tests/test_parity.py``:

    - ``layer_weights="gaussian"``: cross-attention layers weighted by a Gaussian (std 3) over the layer
      index centred on the middle block (:func:`attention.gaussian_layer_weights`);
    - ``self_rule="two_hop"``: self-attention ``avg_B @ avg_A`` with A = first and last resolution segment,
      B = last (``self_weight``, :func:`attention.two_hop_self_attention`), averaged over the attention
      timesteps up to ``self_attention_t_max``;
    - ``renormalize=True``: each class heatmap min-max normalised again after refinement and resize;
    - ``weighting="authors"``: epsilon-space MSE for DDPM-type models (and PixArt-Sigma), plain velocity MSE
      for SD 3 (and FLUX);
    - ``flow_shift=True``: SD 3 noise levels from the scheduler's shifted sigmas;
    - ``edm_native=False``: an EDM-scheduler pipeline (Playground v2.5) noised as the authors' code does, with
      ``DDIMScheduler.from_config`` of its scheduler config, i.e. DDIMScheduler's default betas (``True``, a
      project option: EDM's own noise levels, preconditioning and latent normalisation; :mod:`.models.edm`);
    - ``token_occurrence="first"``, ``resize="vae-bilinear"``, ``noise="stream"`` (one seeded stream
      per image: the attention noise, then the ELBO noise, as the authors draw them).

    The toy UNet is shallower than SD 1.5 (cross-attention at 16, 8 | 4 | 8, 8, 16, 16; self-attention
    segments 16-8-4-8-16); the rules above carry over unchanged: the Gaussian is centred on its single
    mid layer (index 2 of 7), and hop A averages its two 16x16 segments (first down, last up), hop B the
    last up segment.

    Speed settings that change the measurement by float noise only, and are therefore not part of its cache key:
    ``batch_size`` (denoiser rows per ELBO call) and ``elbo_attention`` (``"sdpa"``: the ELBO passes on PyTorch's
    fused attention; ``"explicit"``: on the attention passes' materialised float32 probabilities, the slower
    reference; :func:`attention.uncaptured_attention`). The denoiser's dtype, memory format and compilation are
    the pipeline's (:func:`elbo_lib.models.speed_up`).

    ``AlignConfig.preset("project")`` gives the project's earlier choices (per-level weights, one-hop
    self-attention of the finest layers, no renormalisation, ...), shown only as extra rows.
    """

    gamma: float = 1 / 3
    elbo_steps: int = 20
    elbo_strategy: str = "even"
    attention_steps: int = 10
    attention_t_max: float = 0.2
    self_attention_t_max: float | None = None  # self-attention averaged over attention steps t <= this (None: all)
    layer_weights: LayerWeights = "gaussian"
    self_attention: bool = True
    self_rule: str = "two_hop"
    self_weight: tuple | None = None  # per-hop segment weights; None: first+last, last (default_self_weight)
    renormalize: bool = True
    calibrate: bool = True
    fixed_score: float | None = None
    weighting: str = "authors"
    flow_shift: bool = True
    edm_native: bool = False
    token_occurrence: str = "first"
    resize: str = "vae-bilinear"
    noise: str = "stream"
    elbo_template: str = "a photo of {}"
    caption_template: str = "a photo of {}"
    caption_item: str = "{}"
    batch_size: int = 64
    elbo_attention: str = "sdpa"
    resolution: tuple[int, int] | None = None

    def __post_init__(self):
        if not 0 < self.gamma <= 1:
            raise ValueError(f"gamma must be in (0, 1], got {self.gamma}")
        if self.fixed_score is not None and not 0 < self.fixed_score <= 1:
            raise ValueError(f"fixed_score must be in (0, 1] or None, got {self.fixed_score}")
        if "{}" not in self.elbo_template or "{}" not in self.caption_template or "{}" not in self.caption_item:
            raise ValueError("elbo_template, caption_template and caption_item must each contain '{}'")
        for name, allowed in (("self_rule", SELF_RULES), ("noise", NOISE_DRAWS), ("weighting", WEIGHTINGS),
                              ("token_occurrence", OCCURRENCES), ("resize", RESIZES),
                              ("elbo_attention", UNCAPTURED_ATTENTION)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, (int, np.integer)) \
                or self.batch_size < 1:
            raise ValueError(f"batch_size must be a whole number >= 1 (denoiser rows per call), got {self.batch_size!r}")
        if isinstance(self.layer_weights, str) and self.layer_weights not in LAYER_WEIGHTS:
            raise ValueError(f"layer_weights must be one of {LAYER_WEIGHTS}, a dict or a callable; "
                             f"got {self.layer_weights!r}")
        if self.self_attention_t_max is not None and not 0 < self.self_attention_t_max <= self.attention_t_max:
            raise ValueError(f"self_attention_t_max must be in (0, attention_t_max = {self.attention_t_max}] "
                             f"or None, got {self.self_attention_t_max}")
        if self.self_weight is not None:
            object.__setattr__(self, "self_weight", tuple(tuple(float(x) for x in hop) for hop in self.self_weight))
        elbo_timesteps(self.elbo_steps, self.elbo_strategy)
        attention_timesteps(self.attention_steps, self.attention_t_max)

    @classmethod
    def official(cls, **overrides) -> "AlignConfig":
        """The authors' algorithm (the defaults), with ``overrides``."""
        return cls(**overrides)

    @classmethod
    def preset(cls, name: str, **overrides) -> "AlignConfig":
        """A named configuration: ``"official"`` (the authors') or ``"project"`` (the project's earlier
        choices); ``overrides`` win."""
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose from {sorted(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})

    def measurement_key(self) -> dict:
        """The fields that change denoiser outputs or what is kept of them (what a cache must be keyed by)."""
        keep = ("elbo_steps", "elbo_strategy", "attention_steps", "attention_t_max", "self_attention_t_max",
                "layer_weights", "self_attention", "self_rule", "self_weight", "weighting", "flow_shift",
                "token_occurrence", "resize", "noise", "elbo_template", "caption_template", "caption_item",
                "resolution")
        key = {k: (repr(v) if callable(v) else v) for k, v in dataclasses.asdict(self).items() if k in keep}
        if self.edm_native:  # only when set: the keys of measurements made before the option existed still match
            key["edm_native"] = True
        return {**key, "version": MEASURE_VERSION}


@dataclass(frozen=True)
class Noise:
    """Noise for :meth:`Aligner.measure`, one draw per timestep, shared by every class:
    ``attention`` (T_a, C, h, w) for the attention passes, ``elbo`` (T_e, C, h, w) for the ELBO.
    float32, on the CPU or the model's device (the authors' reference noise, or your own)."""

    attention: torch.Tensor
    elbo: torch.Tensor

    @classmethod
    def draw(cls, latent_shape, n_attention: int, n_elbo: int, seed: int = 0, rule: str = "stream") -> "Noise":
        """``"stream"``: one generator seeded with ``seed`` draws the attention noise, then the ELBO noise
        (the authors' per-image order: ``torch.manual_seed(4307)`` then their first image's noise is
        ``Noise.draw(shape, 10, 20, 4307)``). ``"split"``: ELBO noise from ``seed``, attention noise from
        ``seed + 7919`` (the project's earlier rule)."""
        if rule not in NOISE_DRAWS:
            raise ValueError(f"noise rule must be one of {NOISE_DRAWS}, got {rule!r}")
        shape = tuple(latent_shape)
        if rule == "split":
            return cls(shared_noise(shape, n_attention, seed + 7919, "cpu", torch.float32),
                       shared_noise(shape, n_elbo, seed, "cpu", torch.float32))
        g = torch.Generator().manual_seed(int(seed))
        att = torch.randn((n_attention, *shape), generator=g)
        return cls(att, torch.randn((n_elbo, *shape), generator=g))

    def checked(self, latent_shape, n_attention: int, n_elbo: int, device) -> "Noise":
        """Validate against a latent (C, h, w) and the timestep counts; return it on ``device``."""
        for what, x, n in (("attention", self.attention, n_attention), ("elbo", self.elbo, n_elbo)):
            if not isinstance(x, torch.Tensor):
                raise ValueError(f"{what} noise must be a torch.Tensor, got {type(x).__name__}")
            want = (n, *latent_shape)
            if tuple(x.shape) != want:
                raise ValueError(f"{what} noise has shape {tuple(x.shape)}; this image and config need {want} "
                                 "(timesteps, latent channels, latent height, latent width)")
            if x.dtype != torch.float32:
                raise ValueError(f"{what} noise must be float32 (it is cast to the model's dtype), got {x.dtype}")
            if x.device.type not in ("cpu", torch.device(device).type):
                raise ValueError(f"{what} noise is on {x.device}; put it on the CPU or on the model's device {device}")
        return Noise(self.attention.to(device), self.elbo.to(device))


@dataclass
class Measurement:
    """Everything the model computed for one image (cache this)."""

    classes: list[str]
    caption: str
    elbo_t: np.ndarray            # (T_e,) ELBO timesteps in (0, 1)
    elbo: torch.Tensor            # (N, T_e) per-class, per-timestep losses
    attention_t: np.ndarray       # (T_a,) attention timesteps
    cross: torch.Tensor           # (T_a, N, h, w) class cross-attention per attention timestep
    self_attn: torch.Tensor | None  # (h*w, h*w) refinement matrix (self_rule), rows = queries
    image_hw: tuple[int, int]     # input image size (H, W)

    TENSORS = ("elbo_t", "elbo", "attention_t", "cross", "self_attn")

    def parts(self) -> tuple[dict[str, torch.Tensor], dict]:
        """(tensors, JSON-able metadata): what a cache stores (as safetensors and JSON, no Python objects)."""
        tensors = {k: torch.as_tensor(getattr(self, k)).detach().cpu().contiguous() for k in self.TENSORS
                   if getattr(self, k) is not None}
        return tensors, {"classes": list(self.classes), "caption": self.caption, "image_hw": list(self.image_hw)}

    @classmethod
    def from_parts(cls, tensors: dict[str, torch.Tensor], meta: dict) -> "Measurement":
        missing = [k for k in cls.TENSORS if k != "self_attn" and k not in tensors]
        if missing or not {"classes", "caption", "image_hw"} <= set(meta):
            raise ValueError(f"not a measurement: missing {missing or sorted({'classes', 'caption', 'image_hw'} - set(meta))}")
        return cls(list(meta["classes"]), meta["caption"], tensors["elbo_t"].numpy(), tensors["elbo"],
                   tensors["attention_t"].numpy(), tensors["cross"], tensors.get("self_attn"), tuple(meta["image_hw"]))


@dataclass
class AlignmentResult:
    classes: list[str]
    probs: np.ndarray      # (N, H, W) p(c_i | x_k)
    heatmaps: np.ndarray   # (N, H, W) calibrated heatmaps in [0, 1]
    raw: np.ndarray        # (N, H, W) uncalibrated heatmaps in [0, 1] (refined: the official pipeline's output)
    elbo: np.ndarray       # (N, T) per-class, per-timestep losses
    scores: np.ndarray     # (N,) alignment scores S_i in [gamma, 1]
    caption: str = ""
    extra: dict = field(default_factory=dict)
    unrefined: np.ndarray | None = None  # (N, H, W) uncalibrated cross-attention before the self-attention refinement

    def mask(self, threshold: float = 0.4, calibrated: bool = True) -> np.ndarray:
        """(H, W) ints: 0 background, i + 1 for classes[i]."""
        maps = self.heatmaps if calibrated else self.raw
        return cal.masks_from_heatmaps(torch.from_numpy(maps), threshold).numpy()


def finalize(m: Measurement, cfg: AlignConfig, elbo_idx=None, attention_idx=None) -> AlignmentResult:
    """Alg. 1 lines 5-9 from a measurement: no denoiser call. ``elbo_idx`` / ``attention_idx``
    select subsets of the measured timesteps (ablations)."""
    elbo = m.elbo if elbo_idx is None else m.elbo[:, list(elbo_idx)]
    cross = m.cross if attention_idx is None else m.cross[list(attention_idx)]
    if cross.shape[0] == 0:
        raise ValueError("empty attention timestep subset")
    if elbo.shape[1] == 0 and cfg.calibrate and cfg.fixed_score is None:
        raise ValueError("no ELBO timesteps: measure with elbo=True, or finalize with calibrate=False or a fixed_score")
    if cfg.calibrate and cfg.fixed_score is None and torch.isnan(torch.as_tensor(elbo)).any():
        raise ValueError("the ELBO was not measured at some of the selected timesteps (NaN losses); select the "
                         "timesteps it was measured at (elbo_idx)")
    maps = cross.float().mean(0)  # (N, h, w), float32 as the authors' (see calibrate.refine_with_self_attention)
    n = maps.shape[0]
    if not cfg.calibrate:
        scores = torch.ones(n, dtype=torch.float64)
    elif cfg.fixed_score is not None:
        scores = cal.fixed_scores(n, cfg.fixed_score)
    else:
        scores = cal.alignment_scores(elbo, cfg.gamma)

    ones = torch.ones(n, dtype=torch.float64)
    raw = heatmaps_for(maps, m, cfg, ones).double()
    heatmaps = heatmaps_for(maps, m, cfg, scores).double()
    probs = cal.class_probabilities(heatmaps)
    return AlignmentResult(list(m.classes), probs.numpy(), heatmaps.numpy(), raw.numpy(), elbo.numpy(),
                           scores.numpy(), m.caption,
                           unrefined=heatmaps_for(maps, m, cfg, ones, refine=False).double().numpy())


def heatmaps_for(maps_nhw: torch.Tensor, m: Measurement, cfg: AlignConfig, scores_n: torch.Tensor,
                 refine: bool = True) -> torch.Tensor:
    """Alg. 1 lines 6-8 for given scores S (N,): the 1/S-th power of the min-maxed maps (Eq. 5's use), the
    self-attention refinement (when ``refine``, ``cfg.self_attention`` and the measurement has it), resize to the
    image and the final min-max. ``maps_nhw``: the measurement's cross-attention averaged over its timesteps."""
    h = cal.calibrate_maps(maps_nhw, scores_n)
    if refine and cfg.self_attention and m.self_attn is not None:
        h = cal.refine_with_self_attention(h, m.self_attn)
    h = cal.upsample(h, m.image_hw)
    return cal.renormalize(h) if cfg.renormalize else h.clamp(0, 1)


class Aligner:
    """ELBO-T2IAlign on any supported diffusers pipeline (``preset="official"``: the authors' algorithm).

    >>> aligner = Aligner(pipe)
    >>> res = aligner(image, classes=["red circle", "blue star"], seed=0)
    """

    def __init__(self, pipe, config: AlignConfig | None = None, preset: str = "official", **overrides):
        self.adapter = adapter_for(pipe)
        if config is None:
            config = AlignConfig.preset(preset, **{**model_hints(self.adapter.pipe), **overrides})
        elif overrides:
            config = dataclasses.replace(config, **overrides)
        self.config = config

    def __call__(self, image, classes: list[str], caption: str | None = None, seed: int = 0,
                 elbo_classes: list[str] | None = None, **overrides) -> AlignmentResult:
        cfg = dataclasses.replace(self.config, **overrides) if overrides else self.config
        return finalize(self.measure(image, classes, caption, seed, elbo_classes, cfg), cfg)

    # ---- the denoiser calls -----------------------------------------------------------------------
    @torch.no_grad()
    def measure(self, image, classes: list[str], caption: str | None = None, seed: int = 0,
                elbo_classes: list[str] | None = None, cfg: AlignConfig | None = None,
                progress: bool = False, elbo: bool = True, noise: Noise | None = None,
                latent: torch.Tensor | None = None) -> Measurement:
        """Alg. 1 lines 1-4: encode, collect attention, estimate per-class ELBO losses.
        ``elbo_classes`` (default: ``classes``) are the phrases whose ELBO is measured (Table IV);
        ``elbo=False`` skips the ELBO (attention only: the uncalibrated baseline). ``noise`` (a
        :class:`Noise`) replaces the noise drawn from ``seed``; ``latent`` (1, C, h, w) replaces the
        encoded image (``image`` then only gives the output size)."""
        cfg = cfg or self.config
        classes = _check_classes(classes)
        if elbo_classes is None:
            elbo_classes = classes
        elif any(not str(c).strip() for c in elbo_classes):  # may repeat: 'green diamond', 'blue diamond' -> 'diamond'
            raise ValueError("an ELBO phrase is empty")
        if len(elbo_classes) != len(classes):
            raise ValueError(f"elbo_classes must pair with classes one to one: {len(elbo_classes)} vs {len(classes)}")
        ad = self.adapter.configured(cfg.flow_shift, cfg.edm_native)
        if caption is None:
            caption = default_caption(classes, cfg.caption_template, cfg.caption_item)
        positions = self.class_tokens(caption, classes, cfg)
        x0, image_hw = self.encode(image, cfg, latent)
        t_att = torch.as_tensor(attention_timesteps(cfg.attention_steps, cfg.attention_t_max), dtype=torch.float64)
        t_elbo_np = elbo_timesteps(cfg.elbo_steps, cfg.elbo_strategy, seed)
        noise = noise or Noise.draw(x0.shape[1:], len(t_att), len(t_elbo_np), seed, cfg.noise)
        noise = noise.checked(tuple(x0.shape[1:]), len(t_att), len(t_elbo_np), ad.device)

        self_t = cfg.self_attention_t_max or cfg.attention_t_max
        self_rows = t_att <= self_t + 1e-9  # the attention timesteps the self-attention averages over
        rule = cfg.self_rule if cfg.self_attention else None
        self_avg, cross_maps, start = SelfAttentionAverage(rule, cfg.self_weight), [], 0
        for store in self.attention_passes(x0, caption, t_att, seed, cfg, noise=noise.attention, ad=ad,
                                           self_attn=cfg.self_attention, segments=rule == "two_hop",
                                           cross_tokens=1 + max(max(p) for p in positions)):
            self_avg.add(store, self_rows[start:start + store.batch])
            start += store.batch
            tok = aggregate_cross(store, cfg.layer_weights, self_avg.out_hw)  # (b, T_tokens, h, w)
            cross_maps.append(torch.stack([tok[:, p].mean(1) for p in positions], 1))  # (b, N, h, w)
        cross = torch.cat(cross_maps).float().cpu()
        self_attn = self_avg.result()

        if not elbo:
            return Measurement(classes, caption, np.zeros(0), torch.zeros(len(classes), 0), t_att.numpy(), cross,
                               self_attn, image_hw)
        # per-class ELBO with shared noise (Alg. 1 line 3, Eq. 4)
        t_elbo = torch.as_tensor(t_elbo_np, dtype=torch.float64)
        cond_cls = ad.encode_text([cfg.elbo_template.format(c) for c in elbo_classes])
        losses = class_losses(ad, x0, cond_cls, t_elbo, noise.elbo, cfg.weighting, cfg.batch_size, progress,
                              cfg.elbo_attention)
        return Measurement(classes, caption, t_elbo_np, losses.cpu(), t_att.numpy(), cross, self_attn, image_hw)

    def class_tokens(self, caption: str, classes: list[str], cfg: AlignConfig | None = None) -> list[list[int]]:
        """Each class's columns among the denoiser's text keys (its caption tokens plus the adapter's offset).
        A class not in the caption is a ValueError; one reaching past the tokens the denoiser sees is a
        :class:`~elbo_lib.tokens.CaptionTooLong` (it is never dropped)."""
        cfg = cfg or self.config
        ad = self.adapter
        return [[p + ad.token_offset for p in token_positions(ad.tokenizer, ad.prompt_text(caption), ad.prompt_text(c),
                                                              cfg.token_occurrence, limit=ad.max_text_tokens)]
                for c in _check_classes(classes)]

    @torch.no_grad()
    def elbo_losses(self, image, elbo_classes: list[str], seed: int = 0, cfg: AlignConfig | None = None,
                    elbo_idx=None) -> torch.Tensor:
        """Alg. 1 line 3 alone: (N, T_e) losses of ``elbo_classes`` at the configured ELBO timesteps, with the
        noise :meth:`measure` draws for ``seed``; with ``elbo_idx`` only those timesteps are computed and the
        others are NaN (a paired ELBO for other phrases on an existing measurement, at a fraction of its cost)."""
        cfg = cfg or self.config
        if not elbo_classes or any(not str(c).strip() for c in elbo_classes):
            raise ValueError("ELBO phrases must be a non-empty list of non-empty phrases")
        ad = self.adapter.configured(cfg.flow_shift, cfg.edm_native)
        x0, _ = self.encode(image, cfg)
        t_all = elbo_timesteps(cfg.elbo_steps, cfg.elbo_strategy, seed)
        n_att = len(attention_timesteps(cfg.attention_steps, cfg.attention_t_max))
        noise = Noise.draw(x0.shape[1:], n_att, len(t_all), seed, cfg.noise).checked(tuple(x0.shape[1:]), n_att,
                                                                                     len(t_all), ad.device)
        idx = list(range(len(t_all))) if elbo_idx is None else [int(i) for i in elbo_idx]
        if not idx or min(idx) < 0 or max(idx) >= len(t_all):
            raise ValueError(f"elbo_idx must index the {len(t_all)} configured ELBO timesteps, got {idx}")
        cond = ad.encode_text([cfg.elbo_template.format(c) for c in elbo_classes])
        sub = class_losses(ad, x0, cond, torch.as_tensor(t_all[idx], dtype=torch.float64), noise.elbo[idx],
                           cfg.weighting, cfg.batch_size, False, cfg.elbo_attention).cpu()
        out = torch.full((len(elbo_classes), len(t_all)), float("nan"), dtype=sub.dtype)
        out[:, idx] = sub
        return out

    def encode(self, image, cfg: AlignConfig, latent: torch.Tensor | None = None,
               generator: torch.Generator | None = None) -> tuple[torch.Tensor, tuple[int, int]]:
        """Alg. 1 line 1: image -> latent x0 (1, C, h, w), and the input size (H, W); a given ``latent``
        is checked and used as it is. The posterior mean, or with ``generator`` a posterior sample drawn from it."""
        pil = to_pil_rgb(image)
        if latent is None:
            ad = self.adapter.configured(cfg.flow_shift, cfg.edm_native)  # EDM's latent normalisation with edm_native
            x0 = ad.encode_image(ad.preprocess(pil, cfg.resolution, cfg.resize), generator)
        else:
            if generator is not None:
                raise ValueError("a given latent is used as it is: it takes no posterior-sample generator")
            if not isinstance(latent, torch.Tensor) or latent.ndim != 4 or latent.shape[0] != 1:
                raise ValueError(f"latent must be a (1, C, h, w) tensor, got {getattr(latent, 'shape', type(latent))}")
            if not latent.is_floating_point():
                raise ValueError(f"latent must be a floating-point tensor, got {latent.dtype}")
            x0 = latent.to(self.adapter.device, self.adapter.dtype)
        return check_finite(x0, "image latent"), (pil.size[1], pil.size[0])

    def attention_passes(self, x0: torch.Tensor, caption: str | None, t_att: torch.Tensor, seed: int, cfg: AlignConfig,
                         noise: torch.Tensor | None = None, ad=None, text=None, noised: bool = True, **capture_kw):
        """Alg. 1 line 2: noise x0 at each attention time (Eq. 2) and run the denoiser with the caption
        under :func:`capture_attention`; yields one store per batch of timesteps. ``noise`` (T_a, C, h, w)
        defaults to the attention part of :meth:`Noise.draw` for ``seed`` and ``cfg.noise``. ``text`` (a
        one-prompt ``TextCondition``, e.g. the adapter's ``unconditional_text()``) replaces the caption's encoding;
        then ``caption`` must be None. ``noised=False`` feeds x0 itself at each timestep (no noise is added: DiffSeg
        reads the attention of the clean latent at its timestep)."""
        if (text is None) == (caption is None):
            raise ValueError("give the caption or an encoded text condition, not both or neither")
        if not noised and noise is not None:
            raise ValueError("noise was given for passes on the clean latent (noised=False)")
        ad = (ad or self.adapter.configured(cfg.flow_shift, cfg.edm_native)).for_latent(x0)
        latent_hw = (x0.shape[-2] // ad.patch_size, x0.shape[-1] // ad.patch_size)
        if not noised:
            z_att = x0.float().expand(len(t_att), *x0.shape[1:])
        else:
            if noise is None:
                noise = Noise.draw(x0.shape[1:], len(t_att), 0, seed, cfg.noise).attention
            eps_att = noise.to(ad.device, torch.float32)
            a, s = ad.alpha_sigma(t_att)
            view = (-1,) + (1,) * (x0.ndim - 1)
            z_att = a.view(view) * x0.float() + s.view(view) * eps_att
        cond_cap = ad.encode_text([caption]) if text is None else text
        if len(cond_cap) != 1:
            raise ValueError(f"the attention passes take one text condition, got {len(cond_cap)}")
        for start in range(0, len(t_att), cfg.batch_size):
            sl = slice(start, min(start + cfg.batch_size, len(t_att)))
            nb = sl.stop - sl.start
            with capture_attention(ad.denoiser, latent_hw, joint=ad.joint_attention, **capture_kw) as store:
                out = ad.predict(z_att[sl].to(ad.dtype), t_att[sl], cond_cap.index(torch.zeros(nb, dtype=torch.long)))
            check_finite(out, "denoiser output")
            yield store

def _check_classes(classes) -> list[str]:
    """The class phrases, stripped; a string or an empty phrase is an error. A phrase may repeat: two
    dataset classes can share a word (ADE20K's "screen" and "crt screen" in the project's names); the
    copies get the same tokens, ELBO and heatmap, and a mask gives their pixels to the first."""
    if isinstance(classes, str):
        raise TypeError(f"classes must be a list of phrases, got the string {classes!r}; e.g. [{classes!r}]")
    classes = [str(c).strip() for c in classes]
    if not classes:
        raise ValueError("the class list is empty; give at least one class phrase")
    if any(not c for c in classes):
        raise ValueError("a class phrase is empty")
    return classes
