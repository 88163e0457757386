"""Architecture of the toy text-to-image model: a miniature Stable Diffusion (VAE, CLIP text
encoder, cross-attention UNet) built from diffusers/transformers classes, so the saved directory
is an ordinary ``StableDiffusionPipeline``."""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer


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
    prediction_type: str = "epsilon"   # or "v_prediction" (as SD 2.x 768)

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


def build_text_encoder(a: ToyArchitecture, tokenizer: CLIPTokenizer) -> CLIPTextModel:
    cfg = CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=a.text_width, intermediate_size=2 * a.text_width,
        num_hidden_layers=a.text_layers, num_attention_heads=a.text_heads,
        max_position_embeddings=a.max_length, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    model = CLIPTextModel(cfg)
    # CLIP initialises token embeddings with std 0.02, far below its layers' outputs; trained from scratch on
    # toy captions, the causal attention's running means then swamp token identity (neighbouring output
    # tokens reached cosine similarity 0.93-0.99) and the UNet's cross-attention stayed uniform.
    torch.nn.init.normal_(model.get_input_embeddings().weight, std=a.token_embedding_std)
    return model


def build_schedulers(a: ToyArchitecture) -> tuple[DDPMScheduler, DDIMScheduler]:
    """Training (DDPM) and sampling (DDIM) schedulers sharing one beta schedule."""
    if a.prediction_type not in ("epsilon", "v_prediction"):
        raise ValueError(f"prediction_type must be 'epsilon' or 'v_prediction', got {a.prediction_type!r}")
    kw = dict(num_train_timesteps=a.num_train_timesteps, beta_schedule=a.beta_schedule,
              prediction_type=a.prediction_type, clip_sample=False)
    return DDPMScheduler(**kw), DDIMScheduler(**kw, set_alpha_to_one=False, steps_offset=1)
