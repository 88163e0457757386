"""Randomly initialised pipelines of each supported family, built locally (tokenizers included),
for tests and benchmarks. Shapes follow diffusers' own tests' ``get_dummy_components``; the
SD1.5-shaped UNet (``sd15_random_pipeline``) has the real architecture at 512 px, for timing.

The paper's Table III models beyond SD 1.x / 2.x / XL / 3 (SD-Turbo, SDXL-Turbo, Playground v2.5,
SD 3.5 medium) are built at toy width with the scheduler class and configuration their hub
repositories ship (:data:`HUB_SCHEDULERS`, sources in the comments there) and the architectural
switches that set them apart (SD 3.5's dual attention and RMS q/k norm, Playground's latent statistics)."""
from __future__ import annotations

import torch
from diffusers import (AutoencoderKL, DDIMScheduler, DPMSolverMultistepScheduler, EDMDPMSolverMultistepScheduler,
                       EulerAncestralDiscreteScheduler, EulerDiscreteScheduler, FlowMatchEulerDiscreteScheduler,
                       FluxPipeline, FluxTransformer2DModel, PixArtSigmaPipeline, PixArtTransformer2DModel,
                       SD3Transformer2DModel, StableDiffusion3Pipeline, StableDiffusionPipeline,
                       StableDiffusionXLPipeline, UNet2DConditionModel)
from transformers import (CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTextConfig, CLIPTextModel,
                          CLIPTextModelWithProjection, T5Config, T5EncoderModel, T5TokenizerFast)

from .tokenizer import build_t5_tokenizer, build_tokenizer

# whole-word tokens of the tiny tokenizers; any other word falls back to characters
WORDS = ["a", "and", "photo", "of", ",", "red", "green", "blue", "yellow", "purple", "circle", "square", "triangle",
         "star", "cross", "diamond", "heart", "cat", "dog", "person", "sky", "tree", "grass", "car", "road", "big",
         "small", "the"]


# scheduler/scheduler_config.json of the paper's models beyond SD 1.x / 2.x / XL / 3, as their hub repositories
# ship them (keys that do not change the training noise levels or the sampler are left at diffusers' defaults):
# - stabilityai/sd-turbo (revision b335f733db09ff60444334351a3bbf6ab4b64332, the "Add Diffusers" commit):
#   EulerDiscreteScheduler, scaled_linear betas 0.00085 - 0.012 over 1000 steps, epsilon, steps_offset 1,
#   timestep_spacing "trailing" (an Euler, not an Euler-ancestral, scheduler in that file);
# - stabilityai/sdxl-turbo (refs/pr/4, "correct scheduler"): EulerAncestralDiscreteScheduler, the same betas,
#   epsilon, steps_offset 1, timestep_spacing "trailing";
# - playgroundai/playground-v2.5-1024px-aesthetic: EDMDPMSolverMultistepScheduler, sigma_min 0.002, sigma_max 80,
#   sigma_data 0.5, rho 7, epsilon, dpmsolver++ of order 2 with midpoint steps, final sigma zero (diffusers'
#   loaders/single_file_utils.py writes the same dict for a Playground v2.5 checkpoint);
# - stabilityai/stable-diffusion-3.5-medium: FlowMatchEulerDiscreteScheduler, 1000 steps, shift 3.0.
HUB_SCHEDULERS = {
    "sd-turbo": (EulerDiscreteScheduler, dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                              num_train_timesteps=1000, prediction_type="epsilon", steps_offset=1,
                                              timestep_spacing="trailing", interpolation_type="linear",
                                              use_karras_sigmas=False, timestep_type="discrete")),
    "sdxl-turbo": (EulerAncestralDiscreteScheduler, dict(beta_start=0.00085, beta_end=0.012,
                                                         beta_schedule="scaled_linear", num_train_timesteps=1000,
                                                         prediction_type="epsilon", steps_offset=1,
                                                         timestep_spacing="trailing")),
    "playground-v2.5": (EDMDPMSolverMultistepScheduler, dict(sigma_min=0.002, sigma_max=80.0, sigma_data=0.5,
                                                             num_train_timesteps=1000, prediction_type="epsilon",
                                                             rho=7.0, solver_order=2, algorithm_type="dpmsolver++",
                                                             solver_type="midpoint", lower_order_final=True,
                                                             euler_at_final=False, final_sigmas_type="zero")),
    "sd3.5-medium": (FlowMatchEulerDiscreteScheduler, dict(num_train_timesteps=1000, shift=3.0)),
}
# playgroundai/playground-v2.5-1024px-aesthetic vae/config.json: SDXL's VAE with scaling_factor 0.5 and per-channel
# latent statistics (diffusers' single_file_utils: PLAYGROUND_VAE_SCALING_FACTOR = 0.5; the same mean and std in
# ComfyUI's latent_formats.SDXL_Playground_2_5); the pipelines encode (z - mean) * 0.5 / std and decode the inverse.
PLAYGROUND_VAE = dict(scaling_factor=0.5, latents_mean=(-1.6574, 1.886, -1.383, 2.5155),
                      latents_std=(8.4927, 5.9022, 6.5498, 5.2299))
# stabilityai/stable-diffusion-3.5-medium transformer/config.json: 24 layers, the first 13 (0-12) with a second,
# image-only self-attention (MMDiT-X), q/k RMS norm. The tiny one: 2 layers, the first dual.
SD35_TRANSFORMER = dict(dual_attention_layers=(0,), qk_norm="rms_norm")


def hub_scheduler(model: str):
    """A fresh scheduler of ``model``'s hub configuration (:data:`HUB_SCHEDULERS`)."""
    if model not in HUB_SCHEDULERS:
        raise ValueError(f"no hub scheduler recorded for {model!r}; known: {sorted(HUB_SCHEDULERS)}")
    cls, config = HUB_SCHEDULERS[model]
    return cls(**config)


def tiny_clip_tokenizer(max_length: int = 77, words: tuple[str, ...] = ()):
    """CLIP BPE over :data:`WORDS` plus ``words`` (each word of a multi-word phrase becomes one token)."""
    extra = [w for phrase in words for w in phrase.lower().split()]
    return build_tokenizer(WORDS + [w for w in dict.fromkeys(extra) if w not in WORDS], model_max_length=max_length)


def tiny_clip(seed: int = 0) -> tuple[CLIPModel, CLIPProcessor]:
    """A CLIP image-text model (2 layers per tower, width 32, 32 px images) and its processor, for the Table V
    CLIP score's tests; ``save_pretrained`` both to use it by path."""
    tok = tiny_clip_tokenizer()
    cfg = CLIPConfig(text_config=dict(vocab_size=len(tok), hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                                      num_attention_heads=4, max_position_embeddings=77, bos_token_id=tok.bos_token_id,
                                      eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id),
                     vision_config=dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                                        image_size=32, patch_size=8),
                     projection_dim=16)
    torch.manual_seed(seed)
    proc = CLIPProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": 32},
                                                            crop_size={"height": 32, "width": 32}), tokenizer=tok)
    return CLIPModel(cfg).eval(), proc


def tiny_t5_tokenizer():
    chars = "abcdefghijklmnopqrstuvwxyz,▁"
    vocab = ([("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)] + [("▁" + w, -1.0) for w in dict.fromkeys(WORDS)]
             + [(c, -5.0) for c in chars])
    return T5TokenizerFast(vocab=vocab, extra_ids=0)


def _finish(pipe):
    """Modules in eval mode, as ``from_pretrained`` leaves them (T5's dropout would otherwise make every
    prompt encoding random), and no progress bars."""
    for module in pipe.components.values():
        if isinstance(module, torch.nn.Module):
            module.eval()
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _t5_encoder(tok, d_model: int = 32) -> T5EncoderModel:
    return T5EncoderModel(T5Config(vocab_size=len(tok), d_model=d_model, d_ff=37, d_kv=8, num_layers=2, num_heads=4,
                                   relative_attention_num_buckets=8, pad_token_id=tok.pad_token_id,
                                   eos_token_id=tok.eos_token_id))


def _clip_config(tok, hidden: int = 32, projection: int = 32, layers: int = 2) -> CLIPTextConfig:
    return CLIPTextConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=37, num_hidden_layers=layers,
                          num_attention_heads=4, max_position_embeddings=tok.model_max_length, projection_dim=projection,
                          bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                          hidden_act="gelu")


def _ddim(prediction_type: str = "epsilon") -> DDIMScheduler:
    return DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                         set_alpha_to_one=False, steps_offset=1, prediction_type=prediction_type)


def _vae(latent_channels: int = 4, **kw) -> AutoencoderKL:
    return AutoencoderKL(block_out_channels=(8, 16), in_channels=3, out_channels=3,
                         down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                         latent_channels=latent_channels, norm_num_groups=4, sample_size=32, **kw)


def tiny_sd_pipeline(prediction_type: str = "epsilon", seed: int = 0, scheduler=None,
                     linear_projection: bool | None = None, words: tuple[str, ...] = ()) -> StableDiffusionPipeline:
    """SD 1.x (eps) or SD 2.x-v (``prediction_type="v_prediction"``) shaped, 32 px images. ``scheduler``
    replaces the DDIM scheduler; ``linear_projection`` (default: SD 2.x's for v-prediction) the transformer
    blocks' projection; ``words`` extend the tokenizer's whole-word vocabulary (e.g. a dataset's class words;
    the default pipeline is unchanged)."""
    torch.manual_seed(seed)
    tok = tiny_clip_tokenizer(words=words)
    if linear_projection is None:
        linear_projection = prediction_type == "v_prediction"
    unet = UNet2DConditionModel(block_out_channels=(16, 32), layers_per_block=1, sample_size=16, in_channels=4,
                                out_channels=4, down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32,
                                attention_head_dim=2, norm_num_groups=8, use_linear_projection=linear_projection)
    pipe = StableDiffusionPipeline(vae=_vae(), text_encoder=CLIPTextModel(_clip_config(tok)), tokenizer=tok, unet=unet,
                                   scheduler=scheduler or _ddim(prediction_type), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    return _finish(pipe)


def tiny_sd_turbo_pipeline(seed: int = 0) -> StableDiffusionPipeline:
    """SD-Turbo shaped: SD 2.1's UNet layout (linear projections; epsilon at 512 px) with stabilityai/sd-turbo's
    Euler scheduler (trailing timestep spacing)."""
    return tiny_sd_pipeline("epsilon", seed, scheduler=hub_scheduler("sd-turbo"), linear_projection=True)


def tiny_sdxl_pipeline(seed: int = 0, scheduler=None, vae: AutoencoderKL | None = None) -> StableDiffusionXLPipeline:
    """SDXL shaped (two CLIP encoders, added time conditions), 32 px images; ``scheduler`` replaces the DDIM
    scheduler, ``vae`` the VAE."""
    torch.manual_seed(seed)
    tok = tiny_clip_tokenizer()
    unet = UNet2DConditionModel(block_out_channels=(16, 32), layers_per_block=1, sample_size=16, in_channels=4,
                                out_channels=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), attention_head_dim=(2, 4),
                                use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=8,
                                transformer_layers_per_block=(1, 2), projection_class_embeddings_input_dim=6 * 8 + 32,
                                cross_attention_dim=64, norm_num_groups=8)
    pipe = StableDiffusionXLPipeline(vae=vae or _vae(), text_encoder=CLIPTextModel(_clip_config(tok)),
                                     text_encoder_2=CLIPTextModelWithProjection(_clip_config(tok)), tokenizer=tok,
                                     tokenizer_2=tiny_clip_tokenizer(), unet=unet, scheduler=scheduler or _ddim())
    return _finish(pipe)


def tiny_sdxl_turbo_pipeline(seed: int = 0) -> StableDiffusionXLPipeline:
    """SDXL-Turbo shaped: SDXL's UNet with stabilityai/sdxl-turbo's Euler-ancestral scheduler (trailing spacing)."""
    return tiny_sdxl_pipeline(seed, scheduler=hub_scheduler("sdxl-turbo"))


def tiny_playground_pipeline(seed: int = 0) -> StableDiffusionXLPipeline:
    """Playground v2.5 shaped: SDXL's UNet, the EDM DPM-Solver scheduler Playground ships (sigma_min 0.002,
    sigma_max 80, sigma_data 0.5) and a VAE with its scaling factor 0.5 and per-channel ``latents_mean`` /
    ``latents_std``."""
    torch.manual_seed(seed)
    vae = _vae(**PLAYGROUND_VAE)
    return tiny_sdxl_pipeline(seed, scheduler=hub_scheduler("playground-v2.5"), vae=vae)


def tiny_sd3_pipeline(seed: int = 0, with_t5: bool = True, dual_attention_layers: tuple[int, ...] = (),
                      qk_norm: str | None = None, scheduler=None) -> StableDiffusion3Pipeline:
    """SD 3 shaped (two-layer MMDiT, patch 1), 32 px images; ``dual_attention_layers`` and ``qk_norm`` give the
    SD 3.5 transformer, ``scheduler`` replaces the default flow-matching scheduler (shift 1)."""
    torch.manual_seed(seed)
    tok = tiny_clip_tokenizer()
    transformer = SD3Transformer2DModel(sample_size=16, patch_size=1, in_channels=4, num_layers=2, attention_head_dim=8,
                                        num_attention_heads=4, caption_projection_dim=32, joint_attention_dim=64,
                                        pooled_projection_dim=64, out_channels=4,
                                        dual_attention_layers=tuple(dual_attention_layers), qk_norm=qk_norm)
    t5 = t5_tok = None
    if with_t5:
        t5_tok = tiny_t5_tokenizer()
        t5 = T5EncoderModel(T5Config(vocab_size=len(t5_tok), d_model=64, d_ff=37, d_kv=8, num_layers=2, num_heads=4,
                                     relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1))
    pipe = StableDiffusion3Pipeline(
        transformer=transformer, scheduler=scheduler or FlowMatchEulerDiscreteScheduler(),
        vae=_vae(use_quant_conv=False, use_post_quant_conv=False, shift_factor=0.0609, scaling_factor=1.5035),
        text_encoder=CLIPTextModelWithProjection(_clip_config(tok)), tokenizer=tok,
        text_encoder_2=CLIPTextModelWithProjection(_clip_config(tok)), tokenizer_2=tiny_clip_tokenizer(),
        text_encoder_3=t5, tokenizer_3=t5_tok)
    return _finish(pipe)


def tiny_sd35_pipeline(seed: int = 0, with_t5: bool = True) -> StableDiffusion3Pipeline:
    """SD 3.5 medium shaped (MMDiT-X): the first of two layers has the second, image-only self-attention ``attn2``,
    q/k RMS norm, and SD 3.5 medium's flow-matching scheduler (shift 3)."""
    return tiny_sd3_pipeline(seed, with_t5, scheduler=hub_scheduler("sd3.5-medium"), **SD35_TRANSFORMER)


def tiny_flux_pipeline(seed: int = 0, guidance_embeds: bool = True, dynamic_shift: bool = True,
                       text_tokens: int = 32) -> FluxPipeline:
    """FLUX.1-dev shaped (guidance embedding, dynamic shift) unless told otherwise (schnell: neither):
    two double-stream and two single-stream blocks, 4 latent channels packed 2x2 into 16, a locally
    built T5 Unigram tokenizer of ``text_tokens`` tokens, 32 px images (a 16x16 latent, 8x8 tokens)."""
    torch.manual_seed(seed)
    t5_tok = build_t5_tokenizer(WORDS, model_max_length=text_tokens)
    transformer = FluxTransformer2DModel(patch_size=1, in_channels=16, out_channels=16, num_layers=2,
                                         num_single_layers=2, attention_head_dim=16, num_attention_heads=2,
                                         joint_attention_dim=32, pooled_projection_dim=32,
                                         guidance_embeds=guidance_embeds, axes_dims_rope=(4, 4, 8))
    tok = tiny_clip_tokenizer()
    sched = FlowMatchEulerDiscreteScheduler(shift=1.0, use_dynamic_shifting=dynamic_shift, base_shift=0.5,
                                            max_shift=1.15, base_image_seq_len=256, max_image_seq_len=4096)
    pipe = FluxPipeline(scheduler=sched, vae=_vae(use_quant_conv=False, use_post_quant_conv=False, shift_factor=0.1159,
                                                  scaling_factor=0.3611),
                        text_encoder=CLIPTextModel(_clip_config(tok)), tokenizer=tok, text_encoder_2=_t5_encoder(t5_tok),
                        tokenizer_2=t5_tok, transformer=transformer)
    pipe.default_sample_size = 16  # 16 latent pixels = 32 px native (FLUX.1's 128 = 1024 px)
    return _finish(pipe)


def tiny_pixart_pipeline(seed: int = 0, text_tokens: int = 32) -> PixArtSigmaPipeline:
    """PixArt-Sigma shaped: a two-block DiT with patch 2, learned sigma (8 output channels for 4 latent ones),
    cross-attention to a tiny T5 with a locally built Unigram tokenizer, PixArt-Sigma's DPM-Solver scheduler
    (linear betas), 32 px images (a 16x16 latent, 8x8 tokens)."""
    torch.manual_seed(seed)
    t5_tok = build_t5_tokenizer(WORDS, model_max_length=text_tokens)
    transformer = PixArtTransformer2DModel(sample_size=16, num_layers=2, patch_size=2, attention_head_dim=8,
                                           num_attention_heads=3, caption_channels=32, in_channels=4,
                                           cross_attention_dim=24, out_channels=8, attention_bias=True,
                                           activation_fn="gelu-approximate", num_embeds_ada_norm=1000,
                                           norm_type="ada_norm_single", norm_elementwise_affine=False, norm_eps=1e-6,
                                           use_additional_conditions=False)
    sched = DPMSolverMultistepScheduler(beta_start=0.0001, beta_end=0.02, beta_schedule="linear",
                                        prediction_type="epsilon", num_train_timesteps=1000)
    pipe = PixArtSigmaPipeline(tokenizer=t5_tok, text_encoder=_t5_encoder(t5_tok), vae=_vae(), transformer=transformer,
                               scheduler=sched)
    return _finish(pipe)


def sd15_random_pipeline(seed: int = 0) -> StableDiffusionPipeline:
    """Stable Diffusion 1.5's UNet and VAE architecture (860 M UNet parameters), random weights, with a
    small text encoder of SD1.5's width (768); for timing the real architecture without weights."""
    torch.manual_seed(seed)
    tok = tiny_clip_tokenizer()
    unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768)  # diffusers' defaults are SD1.x's UNet
    vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                        up_block_types=("UpDecoderBlock2D",) * 4, latent_channels=4, layers_per_block=2,
                        sample_size=512, scaling_factor=0.18215)
    te = CLIPTextModel(_clip_config(tok, hidden=768, projection=768, layers=2))
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=te, tokenizer=tok, unet=unet, scheduler=_ddim(),
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    return _finish(pipe)
