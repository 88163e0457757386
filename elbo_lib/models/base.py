"""What the method needs from a text-to-image pipeline, in one interface.

An adapter knows how to encode an image to the denoiser's latent x0, encode prompts, noise
x0 at a continuous time t in [0, 1] (Eq. 2: z_t = alpha_t x0 + sigma_t eps), call the denoiser,
and which quantity the denoiser predicts (its objective, Table I). Adding a family is one new
subclass registered with :func:`register`, as ``models.flux`` (FLUX.1) and ``models.pixart``
(PixArt-Sigma) are; the method modules (aligner, elbo, calibrate) only call this interface.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
from PIL import Image

OBJECTIVES = ("epsilon", "v_prediction", "sample", "flow")
RESIZES = ("vae-bilinear", "unet-bicubic")


@dataclass
class TextCondition:
    """Encoded prompts: ``embeds`` (P, L, D) plus extra denoiser inputs with a leading P axis."""

    embeds: torch.Tensor
    extra: dict[str, torch.Tensor]

    def __len__(self) -> int:
        return self.embeds.shape[0]

    def index(self, idx: torch.Tensor) -> "TextCondition":
        return TextCondition(self.embeds[idx], {k: v[idx] for k, v in self.extra.items()})


def posterior_latent(dist, generator: torch.Generator | None = None) -> torch.Tensor:
    """The VAE posterior's mean, or with a ``generator`` a sample ``mean + std * eps`` with eps drawn from it."""
    return dist.mean if generator is None else dist.sample(generator=generator)


class PipelineAdapter:
    """Base adapter; subclasses set ``pipeline_classes`` and implement the abstract methods."""

    pipeline_classes: ClassVar[tuple[str, ...]] = ()
    family: ClassVar[str] = "base"
    joint_attention: ClassVar[bool] = False  # MMDiT: image and text tokens in one attention
    patch_size: int = 1
    cuda_dtype: ClassVar[torch.dtype] = torch.float16  # load_pipeline's default dtype on CUDA for this family
    flow_shift: bool = True  # flow matching: the scheduler's shifted sigma grid (see models.flow)
    edm_native: bool = False  # EDM schedulers: EDM's own noise levels instead of the authors' DDIM rebuild (models.edm)

    def __init__(self, pipe):
        self.pipe = pipe

    def configured(self, flow_shift: bool, edm_native: bool = False) -> "PipelineAdapter":
        """This adapter with the given noise-level rules (a shallow copy when they differ): ``flow_shift`` for
        flow-matching pipelines (:mod:`.flow`), ``edm_native`` for pipelines with an EDM scheduler
        (:mod:`.edm`); a family without that kind of scheduler has nothing for the rule to change."""
        if (flow_shift, edm_native) == (self.flow_shift, self.edm_native):
            return self
        out = copy.copy(self)
        out.flow_shift, out.edm_native = flow_shift, edm_native
        return out

    # ---- properties ---------------------------------------------------------------------------
    @property
    def denoiser(self) -> torch.nn.Module:
        raise NotImplementedError

    @property
    def tokenizer(self):
        """The tokenizer whose token positions index the cross-attention keys."""
        return self.pipe.tokenizer

    @property
    def device(self) -> torch.device:
        return next(self.denoiser.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.denoiser.parameters()).dtype

    @property
    def objective(self) -> str:
        raise NotImplementedError

    @property
    def resolution(self) -> tuple[int, int]:
        """Native image size (H, W) the pipeline generates by default."""
        s = self.denoiser.config.sample_size * self.pipe.vae_scale_factor
        return (s, s)

    @property
    def vae_resolution(self) -> tuple[int, int]:
        """The VAE's ``sample_size`` (H, W): where the authors resize every image before encoding it."""
        s = self.pipe.vae.config.sample_size
        return tuple(s) if isinstance(s, (list, tuple)) else (int(s), int(s))

    @property
    def token_offset(self) -> int:
        """Index of the tokenizer's first token among the attention's text keys."""
        return 0

    @property
    def max_text_tokens(self) -> int:
        """How many of the tokenizer's tokens the denoiser sees (a class phrase past it has no attention)."""
        return int(self.tokenizer.model_max_length)

    def prompt_text(self, text: str) -> str:
        """The text the pipeline's tokenizer receives for a prompt ``text`` (where token positions are looked up)."""
        return text

    def for_latent(self, x0: torch.Tensor) -> "PipelineAdapter":
        """This adapter with anything that depends on the latent's size fixed to ``x0``'s (FLUX's
        resolution-dependent noise schedule, :mod:`.flow`); the same adapter where nothing does."""
        return self

    # ---- images ---------------------------------------------------------------------------------
    def preprocess(self, image, resolution: tuple[int, int] | None = None, resize: str = "vae-bilinear") -> torch.Tensor:
        """PIL / numpy (H, W[, C]) uint8 or float in [0, 1] / torch (C, H, W) -> (1, 3, H', W') in [-1, 1]
        (grey -> RGB, alpha dropped). ``resize``: ``"vae-bilinear"`` (the authors': the image processor's
        bilinear resize to the VAE's sample size) or ``"unet-bicubic"`` (bicubic to the denoiser's native
        size); ``resolution`` overrides the size either way."""
        if resize not in RESIZES:
            raise ValueError(f"resize must be one of {RESIZES}, got {resize!r}")
        pil = to_pil_rgb(image)
        h, w = resolution or (self.vae_resolution if resize == "vae-bilinear" else self.resolution)
        if pil.size != (w, h):
            pil = pil.resize((w, h), Image.BILINEAR if resize == "vae-bilinear" else Image.BICUBIC)
        x = torch.from_numpy(np.asarray(pil, dtype=np.float32) / 255.0 * 2.0 - 1.0).permute(2, 0, 1)[None]
        return x.to(self.device, self.vae_dtype)

    @property
    def vae_dtype(self) -> torch.dtype:
        return next(self.pipe.vae.parameters()).dtype

    @torch.no_grad()
    def encode_image(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """x (1, 3, H, W) in [-1, 1] -> x0 latent (1, C, h, w): the posterior mean, scaled (and shifted); with a
        ``generator``, a posterior sample drawn from it instead (DiffSegmenter's encoding)."""
        vae = self.pipe.vae
        z = posterior_latent(vae.encode(x.to(self.vae_dtype)).latent_dist, generator)
        shift = getattr(vae.config, "shift_factor", None) or 0.0
        return ((z - shift) * vae.config.scaling_factor).to(self.dtype)

    # ---- noise schedule (Eq. 2) -------------------------------------------------------------------
    def alpha_sigma(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def model_timestep(self, t: torch.Tensor) -> torch.Tensor:
        """Continuous t in [0, 1] -> the value the denoiser takes as its timestep input."""
        raise NotImplementedError

    def target(self, x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """What the denoiser is trained to predict at z_t (Table I)."""
        a, s = (v.view(-1, *[1] * (x0.ndim - 1)) for v in self.alpha_sigma(t))
        obj = self.objective
        if obj == "epsilon":
            return eps + torch.zeros_like(x0)  # broadcast to the common shape
        if obj == "v_prediction":
            return a * eps - s * x0
        if obj == "sample":
            return x0 + torch.zeros_like(eps)
        if obj == "flow":
            return eps - x0
        raise ValueError(f"unknown objective {obj!r}; known: {OBJECTIVES}")

    # ---- text and denoiser -------------------------------------------------------------------------
    def encode_text(self, prompts: list[str]) -> TextCondition:
        raise NotImplementedError

    def unconditional_text(self) -> TextCondition:
        """The text condition of the pipeline's unconditional (classifier-free guidance) branch for an empty
        negative prompt: the encoding of ``""`` (pipelines that zero it override this)."""
        return self.encode_text([""])

    def predict(self, z_t: torch.Tensor, t: torch.Tensor, cond: TextCondition) -> torch.Tensor:
        raise NotImplementedError


class TransformerDenoiser:
    """Mixin for DiT pipelines (SD 3, FLUX, PixArt): the denoiser is ``pipe.transformer`` and its token grid is
    the latent grid divided by the transformer's patch size (an adapter whose pipeline packs patches itself, as
    FLUX's does, sets ``patch_size`` as a class attribute instead)."""

    @property
    def denoiser(self):
        return self.pipe.transformer

    @property
    def patch_size(self) -> int:
        return int(self.denoiser.config.patch_size)


def to_pil_rgb(image) -> Image.Image:
    """Accept PIL images, numpy arrays and torch tensors; return an RGB PIL image or raise."""
    if isinstance(image, (str,)):
        raise TypeError(f"expected an image (PIL.Image, numpy array or torch tensor), got the string {image!r}; "
                        "open it first, e.g. PIL.Image.open(path)")
    if isinstance(image, torch.Tensor):
        t = image.detach().cpu()
        if t.ndim == 3 and t.shape[0] in (1, 3, 4) and t.shape[-1] not in (1, 3, 4):
            t = t.permute(1, 2, 0)
        image = t.numpy()
    if isinstance(image, np.ndarray):
        a = image
        if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] not in (1, 3, 4)):
            raise ValueError(f"expected an image array of shape (H, W), (H, W, 1), (H, W, 3) or (H, W, 4); got {a.shape}")
        if not np.isfinite(a).all():
            raise ValueError("image array contains NaN or inf")
        if a.dtype != np.uint8:
            if a.min() < 0 or a.max() > 1:
                raise ValueError(f"float image arrays must lie in [0, 1]; got range [{a.min():.3g}, {a.max():.3g}]")
            a = np.round(a * 255).astype(np.uint8)
        if a.ndim == 3 and a.shape[2] == 1:
            a = a[..., 0]
        image = Image.fromarray(a)
    if not isinstance(image, Image.Image):
        raise TypeError(f"expected an image (PIL.Image, numpy array or torch tensor), got {type(image).__name__}")
    w, h = image.size
    if min(w, h) < 8:
        raise ValueError(f"image is {w}x{h} pixels; the smallest usable side is 8 pixels")
    if image.mode == "RGBA":
        bg = Image.new("RGB", image.size, (255, 255, 255))
        bg.paste(image, mask=image.getchannel("A"))
        return bg
    return image.convert("RGB")


_REGISTRY: list[type[PipelineAdapter]] = []


def register(cls: type[PipelineAdapter]) -> type[PipelineAdapter]:
    _REGISTRY.append(cls)
    return cls


def supported_pipelines() -> list[str]:
    return [name for cls in _REGISTRY for name in cls.pipeline_classes]


def adapter_class(pipeline_class: str) -> type[PipelineAdapter]:
    """The adapter class for a diffusers pipeline class name (or a clear error listing the supported classes)."""
    for cls in _REGISTRY:
        if pipeline_class in cls.pipeline_classes:
            return cls
    raise ValueError(f"unsupported pipeline class {pipeline_class}; supported: {', '.join(supported_pipelines())}")


def adapter_for(pipe) -> PipelineAdapter:
    """The adapter for a loaded diffusers pipeline (or a clear error listing the supported classes)."""
    if isinstance(pipe, PipelineAdapter):
        return pipe
    return adapter_class(type(pipe).__name__)(pipe)
