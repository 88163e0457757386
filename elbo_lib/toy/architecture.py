"""Architecture of the toy text-to-image models, built from diffusers/transformers classes so that each
saved directory is an ordinary pipeline:

- ``denoiser="unet"``: a miniature Stable Diffusion (VAE, CLIP text encoder, cross-attention UNet,
  epsilon or v objective), a ``StableDiffusionPipeline``;
- ``denoiser="mmdit"``: a miniature Stable Diffusion 3 (the same VAE, two CLIP text encoders with
  projections, an ``SD3Transformer2DModel`` with joint attention, rectified flow with SD 3's shifted
  ``FlowMatchEulerDiscreteScheduler``), a ``StableDiffusion3Pipeline`` without T5: the pipeline then
  appends ``t5_tokens`` zero tokens to the prompt, as SD 3 does when its T5 encoder is dropped."""
from __future__ import annotations

import copy
from dataclasses import asdict, dataclass

import torch

from diffusers import (AutoencoderKL, DDIMScheduler, DDPMScheduler, FlowMatchEulerDiscreteScheduler,
                       SD3Transformer2DModel, StableDiffusion3Pipeline, StableDiffusionPipeline, UNet2DConditionModel)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

DENOISERS = {"unet": ("epsilon", "v_prediction"), "mmdit": ("flow_matching",)}


@dataclass(frozen=True)
class ToyArchitecture:
    image_size: int = 64
    vae_channels: tuple[int, ...] = (16, 32, 64)  # 3 levels -> latent downsampling factor 4
    latent_channels: int = 4
    unet_channels: tuple[int, ...] = (64, 96, 96)
    unet_heads: int = 4
    text_width: int = 64
    text_layers: int = 2
    text_heads: int = 4
    token_embedding_std: float = 1.0  # token identity must dominate the text encoder's residual stream (see below)
    max_length: int = 28               # the longest toy caption is 24 tokens with BOS/EOS
    num_train_timesteps: int = 1000
    beta_schedule: str = "squaredcos_cap_v2"
    prediction_type: str = "epsilon"   # or "v_prediction" (as SD 2.x 768); "flow_matching" for the MMDiT
    denoiser: str = "unet"             # or "mmdit" (SD 3-shaped)
    mmdit_layers: int = 6
    mmdit_heads: int = 4
    mmdit_head_dim: int = 32
    patch_size: int = 2                # SD 3's: the 16x16 latent is an 8x8 token grid
    flow_shift: float = 3.0            # SD 3 medium's scheduler shift
    t5_tokens: int = 256               # zero tokens StableDiffusion3Pipeline appends without T5 (its default length)

    def __post_init__(self):
        if self.denoiser not in DENOISERS:
            raise ValueError(f"denoiser must be one of {sorted(DENOISERS)}, got {self.denoiser!r}")
        if self.prediction_type not in DENOISERS[self.denoiser]:
            raise ValueError(f"prediction_type for the {self.denoiser} must be one of {DENOISERS[self.denoiser]}, "
                             f"got {self.prediction_type!r}")

    @property
    def latent_size(self) -> int:
        return self.image_size // 2 ** (len(self.vae_channels) - 1)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def normalised(cls, d: dict) -> dict:
        """A saved architecture dict with the fields it predates filled with their defaults (a model saved
        before ``prediction_type`` existed is an epsilon model)."""
        return {**cls().to_dict(), **d}


def build_vae(a: ToyArchitecture) -> AutoencoderKL:
    n = len(a.vae_channels)
    return AutoencoderKL(
        in_channels=3, out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * n, up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=a.vae_channels, layers_per_block=1, latent_channels=a.latent_channels,
        norm_num_groups=16, sample_size=a.image_size)


def build_unet(a: ToyArchitecture) -> UNet2DConditionModel:
    """Cross-attention at the two finest latent resolutions (16x16 and 8x8 for 64 px images)."""
    return UNet2DConditionModel(
        sample_size=a.latent_size, in_channels=a.latent_channels, out_channels=a.latent_channels,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=a.unet_channels, layers_per_block=1, cross_attention_dim=a.text_width,
        attention_head_dim=a.unet_heads, norm_num_groups=16)


def build_mmdit(a: ToyArchitecture) -> SD3Transformer2DModel:
    """SD 3's MMDiT at toy size; its text stream takes the two CLIP encoders' features side by side
    (joint_attention_dim = 2 x text_width) and their pooled projections."""
    width = a.mmdit_heads * a.mmdit_head_dim
    return SD3Transformer2DModel(
        sample_size=a.latent_size, patch_size=a.patch_size, in_channels=a.latent_channels,
        out_channels=a.latent_channels, num_layers=a.mmdit_layers, attention_head_dim=a.mmdit_head_dim,
        num_attention_heads=a.mmdit_heads, joint_attention_dim=2 * a.text_width, caption_projection_dim=width,
        pooled_projection_dim=2 * a.text_width, pos_embed_max_size=a.latent_size // a.patch_size)


def build_text_encoder(a: ToyArchitecture, tokenizer: CLIPTokenizer,
                       projection: bool = False) -> CLIPTextModel | CLIPTextModelWithProjection:
    """The toy CLIP text encoder; ``projection``: with SD 3's pooled-output projection, set to the identity
    (the pooled vector is the final-norm EOS feature, as the epsilon model's encoder computes it)."""
    cfg = CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=a.text_width, intermediate_size=2 * a.text_width,
        num_hidden_layers=a.text_layers, num_attention_heads=a.text_heads,
        max_position_embeddings=a.max_length, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, projection_dim=a.text_width)
    model = (CLIPTextModelWithProjection if projection else CLIPTextModel)(cfg)
    if projection:
        with torch.no_grad():
            model.text_projection.weight.copy_(torch.eye(a.text_width))
    # CLIP initialises token embeddings with std 0.02, far below its layers' outputs; trained from scratch on
    # toy captions, the causal attention's running means then swamp token identity (neighbouring output
    # tokens reached cosine similarity 0.93-0.99) and the UNet's cross-attention stayed uniform.
    torch.nn.init.normal_(model.get_input_embeddings().weight, std=a.token_embedding_std)
    return model


def build_schedulers(a: ToyArchitecture):
    """Training and sampling schedulers: DDPM and DDIM sharing one beta schedule (UNet), or one shifted
    flow-matching Euler scheduler (MMDiT)."""
    if a.denoiser == "mmdit":
        sched = FlowMatchEulerDiscreteScheduler(num_train_timesteps=a.num_train_timesteps, shift=a.flow_shift)
        return sched, sched
    kw = dict(num_train_timesteps=a.num_train_timesteps, beta_schedule=a.beta_schedule,
              prediction_type=a.prediction_type, clip_sample=False)
    return DDPMScheduler(**kw), DDIMScheduler(**kw, set_alpha_to_one=False, steps_offset=1)


def build_pipeline(a: ToyArchitecture, vae, text_encoder, tokenizer, denoiser, scheduler):
    """The saved pipeline: ``StableDiffusionPipeline`` (UNet) or ``StableDiffusion3Pipeline`` (MMDiT; both CLIP
    slots hold ``text_encoder``, T5 absent)."""
    if a.denoiser == "unet":
        return StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=denoiser,
                                       scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                       requires_safety_checker=False)
    vae.register_to_config(shift_factor=0.0)  # SD 3's decode adds it; the toy latents are not shifted
    return StableDiffusion3Pipeline(transformer=denoiser, scheduler=scheduler, vae=vae, text_encoder=text_encoder,
                                    tokenizer=tokenizer, text_encoder_2=copy.deepcopy(text_encoder),
                                    tokenizer_2=copy.deepcopy(tokenizer), text_encoder_3=None, tokenizer_3=None)
