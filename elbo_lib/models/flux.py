"""Adapter for FLUX.1 (schnell, dev): a rectified-flow DiT with double- and single-stream blocks.

Beyond the paper's models (its Table I has no FLUX row); the method carries over as for SD 3:

- **Noise levels** (:mod:`.flow`): z = (1 - sigma) x0 + sigma eps. FLUX.1-schnell's scheduler has
  a fixed shift (1.0); FLUX.1-dev's has ``use_dynamic_shifting``, so sigma depends on the image
  token count n through mu = calculate_shift(n) (0.5 at 256 tokens to 1.15 at 4096, i.e. 1024 px),
  computed as ``FluxPipeline`` does for the latent being scored. The transformer takes sigma itself
  as its timestep (``FluxPipeline`` passes ``timestep / 1000``; the model multiplies by 1000).
- **Objective**: velocity u = eps - x0. ELBO weighting in the Table I spirit: ``"authors"`` is the
  plain velocity MSE (what the authors' code computes for SD 3's flow matching), ``"eps"`` the
  eps-space comparison, the velocity MSE times (1 - sigma)^2.
- **Latents**: x0 stays an unpacked (1, C, h, w) VAE latent (scaled and shifted as the pipeline's
  img2img encode does), so the method sees a grid like every other family; :meth:`predict` packs
  2x2 patches (``FluxPipeline._pack_latents``) into (B, h w / 4, 4 C) tokens, builds the image
  position ids (``_prepare_latent_image_ids``, rotary embeddings of each patch's row and column)
  and unpacks the velocity. ``patch_size`` is therefore 2: the attention grid is (h / 2, w / 2).
  Images are resized to multiples of 2 x the VAE factor, as ``FluxPipeline`` rounds sizes.
- **Guidance embedding**: guidance-distilled checkpoints (FLUX.1-dev, ``guidance_embeds=True``)
  take a guidance scale as an input. It is passed as :attr:`FluxAdapter.guidance` = 1.0: a
  distilled model at scale g imitates the classifier-free combination u_uncond + g (u_cond -
  u_uncond), and the ELBO of p(x | c) (Eq. 4) wants the conditional model itself, g = 1 (the
  pipeline's sampling default is 3.5; set ``adapter.guidance`` to use it). schnell has no
  guidance input and ignores the value.
- **Text**: the CLIP encoder gives only the pooled vector; the sequence the image attends to is
  the T5 encoding (``tokenizer_2``, up to 512 tokens), so class positions are T5 token positions
  and ``token_offset`` is 0.
- **Attention**: double-stream blocks (``transformer_blocks.N``) attend over [text, image] with
  separate projections; single-stream blocks (``single_transformer_blocks.N``) over one
  [text, image] sequence. Both are captured by ``attention.FluxCaptureProcessor`` (image-to-text
  slice as cross-attention, image-to-image as self-attention).
"""
from __future__ import annotations

import torch
from .base import TextCondition, TransformerDenoiser, register
from .flow import FlowMatchAdapter

MAX_T5_TOKENS = 512  # FluxPipeline's max_sequence_length


@register
class FluxAdapter(TransformerDenoiser, FlowMatchAdapter):
    pipeline_classes = ("FluxPipeline", "FluxImg2ImgPipeline")
    family = "flux"
    joint_attention = True
    patch_size = 2  # FluxPipeline packs 2x2 latent patches into one token
    timestep_scale = 1.0 / 1000  # the transformer takes sigma (it multiplies by 1000 itself)
    cuda_dtype = torch.bfloat16  # FLUX.1 is released and run in bf16; its activations overflow fp16
    guidance: float = 1.0  # guidance-distilled checkpoints: the conditional model (see the module docstring)

    @property
    def tokenizer(self):
        return self.pipe.tokenizer_2

    @property
    def max_text_tokens(self) -> int:
        return min(MAX_T5_TOKENS, int(self.tokenizer.model_max_length))

    @property
    def resolution(self) -> tuple[int, int]:
        s = self.pipe.default_sample_size * self.pipe.vae_scale_factor
        return (s, s)

    def preprocess(self, image, resolution=None, resize="vae-bilinear"):
        """As the base, with the size rounded down to a multiple of 2 x the VAE factor (2x2 packing), as
        ``FluxPipeline.prepare_latents`` rounds it."""
        h, w = resolution or (self.vae_resolution if resize == "vae-bilinear" else self.resolution)
        m = 2 * self.pipe.vae_scale_factor
        return super().preprocess(image, (max(m, h // m * m), max(m, w // m * m)), resize)

    @torch.no_grad()
    def encode_text(self, prompts):
        prompts = list(prompts)
        embeds, pooled, _ = self.pipe.encode_prompt(prompts, prompts, device=self.device, num_images_per_prompt=1,
                                                    max_sequence_length=self.max_text_tokens)
        return TextCondition(embeds.to(self.dtype), {"pooled_projections": pooled.to(self.dtype)})

    def pack(self, z: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) -> (B, h w / 4, 4 C) tokens, as FluxPipeline packs its latents."""
        b, c, h, w = z.shape
        if h % 2 or w % 2:
            raise ValueError(f"FLUX packs 2x2 latent patches: the latent is {h}x{w}; use an image whose sides are "
                             f"multiples of {2 * self.pipe.vae_scale_factor} pixels")
        return self.pipe._pack_latents(z, b, c, h, w)

    def unpack(self, tokens: torch.Tensor, latent_hw: tuple[int, int]) -> torch.Tensor:
        """Inverse of :meth:`pack` for a (h, w) latent."""
        f = self.pipe.vae_scale_factor
        return self.pipe._unpack_latents(tokens, latent_hw[0] * f, latent_hw[1] * f, f)

    def predict(self, z_t, t, cond):
        b, _, h, w = z_t.shape
        img_ids = self.pipe._prepare_latent_image_ids(b, h // 2, w // 2, self.device, self.dtype)
        txt_ids = torch.zeros(cond.embeds.shape[1], 3, device=self.device, dtype=self.dtype)
        guidance = None
        if self.denoiser.config.guidance_embeds:
            guidance = torch.full((b,), float(self.guidance), device=self.device, dtype=torch.float32)
        out = self.denoiser(hidden_states=self.pack(z_t), timestep=self.for_latent(z_t).model_timestep(t),
                            guidance=guidance, pooled_projections=cond.extra["pooled_projections"],
                            encoder_hidden_states=cond.embeds, txt_ids=txt_ids, img_ids=img_ids).sample
        return self.unpack(out, (h, w))
