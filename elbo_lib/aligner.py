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
from .attention import LayerWeights, aggregate_cross, capture_attention
from .elbo import attention_timesteps, class_losses, elbo_timesteps, shared_noise, check_finite
from .models import adapter_for, model_hints, to_pil_rgb
from .tokens import default_caption, token_positions


@dataclass(frozen=True)
class AlignConfig:
    """The paper's knobs, with its defaults (Sec. IV, DIGEST)."""

    gamma: float = 1 / 3
    elbo_steps: int = 20
    elbo_strategy: str = "even"
    attention_steps: int = 10
    attention_t_max: float = 0.2
    layer_weights: LayerWeights = "paper"
    self_attention: bool = True
    calibrate: bool = True
    fixed_score: float | None = None
    weighting: str = "eps"
    elbo_template: str = "a photo of {}"
    caption_template: str = "a photo of {}"
    caption_item: str = "{}"
    batch_size: int = 64
    resolution: tuple[int, int] | None = None

    def __post_init__(self):
        if not 0 < self.gamma <= 1:
            raise ValueError(f"gamma must be in (0, 1], got {self.gamma}")
        if self.fixed_score is not None and not 0 < self.fixed_score <= 1:
            raise ValueError(f"fixed_score must be in (0, 1] or None, got {self.fixed_score}")
        if "{}" not in self.elbo_template or "{}" not in self.caption_template or "{}" not in self.caption_item:
            raise ValueError("elbo_template, caption_template and caption_item must each contain '{}'")
        elbo_timesteps(self.elbo_steps, self.elbo_strategy)
        attention_timesteps(self.attention_steps, self.attention_t_max)

    def measurement_key(self) -> dict:
        """The fields that change denoiser outputs (what a cache must be keyed by)."""
        keep = ("elbo_steps", "elbo_strategy", "attention_steps", "attention_t_max", "layer_weights",
                "self_attention", "weighting", "elbo_template", "caption_template", "caption_item", "resolution")
        return {k: (repr(v) if callable(v) else v) for k, v in dataclasses.asdict(self).items() if k in keep}


@dataclass
class Measurement:
    """Everything the model computed for one image (cache this)."""

    classes: list[str]
    caption: str
    elbo_t: np.ndarray            # (T_e,) ELBO timesteps in (0, 1)
    elbo: torch.Tensor            # (N, T_e) per-class, per-timestep losses
    attention_t: np.ndarray       # (T_a,) attention timesteps
    cross: torch.Tensor           # (T_a, N, h, w) class cross-attention per attention timestep
    self_attn: torch.Tensor | None  # (h*w, h*w) self-attention averaged over timesteps and finest layers
    image_hw: tuple[int, int]     # input image size (H, W)

    def state(self) -> dict:
        return {"classes": self.classes, "caption": self.caption, "elbo_t": torch.as_tensor(self.elbo_t),
                "elbo": self.elbo.cpu(), "attention_t": torch.as_tensor(self.attention_t), "cross": self.cross.cpu(),
                "self_attn": None if self.self_attn is None else self.self_attn.cpu(), "image_hw": list(self.image_hw)}

    @classmethod
    def from_state(cls, d: dict) -> "Measurement":
        return cls(list(d["classes"]), d["caption"], np.asarray(d["elbo_t"]), d["elbo"], np.asarray(d["attention_t"]),
                   d["cross"], d["self_attn"], tuple(d["image_hw"]))


@dataclass
class AlignmentResult:
    classes: list[str]
    probs: np.ndarray      # (N, H, W) p(c_i | x_k)
    heatmaps: np.ndarray   # (N, H, W) calibrated heatmaps in [0, 1]
    raw: np.ndarray        # (N, H, W) uncalibrated heatmaps in [0, 1]
    elbo: np.ndarray       # (N, T) per-class, per-timestep losses
    scores: np.ndarray     # (N,) alignment scores S_i in [gamma, 1]
    caption: str = ""
    extra: dict = field(default_factory=dict)

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
    maps = cross.double().mean(0)  # (N, h, w)
    n = maps.shape[0]
    if not cfg.calibrate:
        scores = torch.ones(n, dtype=torch.float64)
    elif cfg.fixed_score is not None:
        scores = cal.fixed_scores(n, cfg.fixed_score)
    else:
        scores = cal.alignment_scores(elbo, cfg.gamma)

    def heat(s):
        h = cal.calibrate_maps(maps, s)
        if cfg.self_attention and m.self_attn is not None:
            h = cal.refine_with_self_attention(h, m.self_attn)
        return cal.upsample(h, m.image_hw).clamp(0, 1)

    raw = heat(torch.ones(n, dtype=torch.float64))
    heatmaps = heat(scores)
    probs = cal.class_probabilities(heatmaps)
    return AlignmentResult(list(m.classes), probs.numpy(), heatmaps.numpy(), raw.numpy(), elbo.numpy(),
                           scores.numpy(), m.caption)


class Aligner:
    """ELBO-T2IAlign on any supported diffusers pipeline.

    >>> aligner = Aligner(pipe)
    >>> res = aligner(image, classes=["red circle", "blue star"], seed=0)
    """

    def __init__(self, pipe, config: AlignConfig | None = None, **overrides):
        self.adapter = adapter_for(pipe)
        if config is None:
            config = AlignConfig(**{**model_hints(self.adapter.pipe), **overrides})
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
                progress: bool = False, elbo: bool = True) -> Measurement:
        """Alg. 1 lines 1-4: encode, collect attention, estimate per-class ELBO losses.
        ``elbo_classes`` (default: ``classes``) are the phrases whose ELBO is measured (Table IV);
        ``elbo=False`` skips the ELBO (attention only: the uncalibrated baseline)."""
        cfg = cfg or self.config
        classes = _check_classes(classes)
        if elbo_classes is None:
            elbo_classes = classes
        elif any(not str(c).strip() for c in elbo_classes):  # may repeat: 'green diamond', 'blue diamond' -> 'diamond'
            raise ValueError("an ELBO phrase is empty")
        if len(elbo_classes) != len(classes):
            raise ValueError(f"elbo_classes must pair with classes one to one: {len(elbo_classes)} vs {len(classes)}")
        ad = self.adapter
        if caption is None:
            caption = default_caption(classes, cfg.caption_template, cfg.caption_item)
        positions = [[p + ad.token_offset for p in token_positions(ad.tokenizer, caption, c)] for c in classes]
        x0, image_hw = self.encode(image, cfg)
        t_att = torch.as_tensor(attention_timesteps(cfg.attention_steps, cfg.attention_t_max), dtype=torch.float64)
        cross_maps, self_sum = [], None
        for store in self.attention_passes(x0, caption, t_att, seed, cfg, self_attn=cfg.self_attention):
            out_hw = store.layer_hw(max(store.self_sums)) if cfg.self_attention and store.self_sums else None
            tok = aggregate_cross(store, cfg.layer_weights, out_hw)  # (b, T_tokens, h, w)
            cross_maps.append(torch.stack([tok[:, p].mean(1) for p in positions], 1))  # (b, N, h, w)
            if cfg.self_attention:
                sa = store.self_attention().double().sum(0)
                self_sum = sa if self_sum is None else self_sum + sa
        cross = torch.cat(cross_maps).float().cpu()
        self_attn = None if self_sum is None else (self_sum / len(t_att)).float().cpu()

        if not elbo:
            return Measurement(classes, caption, np.zeros(0), torch.zeros(len(classes), 0), t_att.numpy(), cross,
                               self_attn, image_hw)
        # per-class ELBO with shared noise (Alg. 1 line 3, Eq. 4)
        t_elbo_np = elbo_timesteps(cfg.elbo_steps, cfg.elbo_strategy, seed)
        t_elbo = torch.as_tensor(t_elbo_np, dtype=torch.float64)
        eps = shared_noise(x0.shape[1:], len(t_elbo), seed, ad.device, torch.float32)
        cond_cls = ad.encode_text([cfg.elbo_template.format(c) for c in elbo_classes])
        losses = class_losses(ad, x0, cond_cls, t_elbo, eps, cfg.weighting, cfg.batch_size, progress)
        return Measurement(classes, caption, t_elbo_np, losses.cpu(), t_att.numpy(), cross, self_attn, image_hw)


    def encode(self, image, cfg: AlignConfig) -> tuple[torch.Tensor, tuple[int, int]]:
        """Alg. 1 line 1: image -> latent x0 (1, C, h, w), and the input size (H, W)."""
        pil = to_pil_rgb(image)
        x0 = self.adapter.encode_image(self.adapter.preprocess(pil, cfg.resolution))
        return check_finite(x0, "image latent"), (pil.size[1], pil.size[0])

    def attention_passes(self, x0: torch.Tensor, caption: str, t_att: torch.Tensor, seed: int, cfg: AlignConfig,
                         **capture_kw):
        """Alg. 1 line 2: noise x0 at each attention time (Eq. 2) and run the denoiser with the caption
        under :func:`capture_attention`; yields one store per batch of timesteps."""
        ad = self.adapter
        latent_hw = (x0.shape[-2] // ad.patch_size, x0.shape[-1] // ad.patch_size)
        eps_att = shared_noise(x0.shape[1:], len(t_att), seed + 7919, ad.device, torch.float32)
        a, s = ad.alpha_sigma(t_att)
        view = (-1,) + (1,) * (x0.ndim - 1)
        z_att = a.view(view) * x0.float() + s.view(view) * eps_att
        cond_cap = ad.encode_text([caption])
        for start in range(0, len(t_att), cfg.batch_size):
            sl = slice(start, min(start + cfg.batch_size, len(t_att)))
            nb = sl.stop - sl.start
            with capture_attention(ad.denoiser, latent_hw, joint=ad.joint_attention, **capture_kw) as store:
                out = ad.predict(z_att[sl].to(ad.dtype), t_att[sl], cond_cap.index(torch.zeros(nb, dtype=torch.long)))
            check_finite(out, "denoiser output")
            yield store


def _check_classes(classes) -> list[str]:
    if isinstance(classes, str):
        raise TypeError(f"classes must be a list of phrases, got the string {classes!r}; e.g. [{classes!r}]")
    classes = [str(c).strip() for c in classes]
    if not classes:
        raise ValueError("the class list is empty; give at least one class phrase")
    if any(not c for c in classes):
        raise ValueError("a class phrase is empty")
    dup = sorted({c for c in classes if classes.count(c) > 1})
    if dup:
        raise ValueError(f"duplicate classes {dup}; each class must appear once")
    return classes
