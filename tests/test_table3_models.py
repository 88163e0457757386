"""The paper's Table III models beyond SD 1.x / 2.x / XL / 3, run as the authors run them, on tiny pipelines with
the schedulers their hub repositories ship (``random_init.HUB_SCHEDULERS``; the family-wide tests in test_aligner,
test_attention and test_elbo run Alg. 1 on each of them as well):

- Playground v2.5: the official configuration noises with ``DDIMScheduler.from_config(pipe.scheduler.config)``
  (the authors' ``utils/diffusion.py``), which for its EDM config has DDIMScheduler's default betas; the project
  option ``edm_native`` uses EDM's own noise levels, preconditioning and latent normalisation instead;
- SD-Turbo / SDXL-Turbo: their Euler(-ancestral) schedulers' alphas are the authors' DDIM conversion;
- SD 3.5 medium: the attention store keeps what the authors' processors and hook keep from the image-only
  ``attn2`` layers (self-attention, never cross-attention).
"""
import math

import numpy as np
import pytest
import torch
from diffusers import (DDIMScheduler, EDMDPMSolverMultistepScheduler, EDMEulerScheduler,
                       EulerAncestralDiscreteScheduler, EulerDiscreteScheduler)
from PIL import Image

import elbo_lib
from elbo_lib import AlignConfig, Aligner
from elbo_lib.attention import capture_attention, gaussian_layer_weights
from elbo_lib.elbo import class_losses, shared_noise
from elbo_lib.models import StableDiffusion3Adapter, StableDiffusionAdapter, StableDiffusionXLAdapter, adapter_for
from elbo_lib.models.edm import EDMNoise, normalised_latent
from elbo_lib.models.random_init import (HUB_SCHEDULERS, PLAYGROUND_VAE, hub_scheduler, tiny_sd35_pipeline,
                                        tiny_sdxl_pipeline)

FAST = dict(elbo_steps=3, attention_steps=2)
T = torch.tensor([0.001, 0.02, 0.2, 0.5, 0.951], dtype=torch.float64)


def _img(h=32, w=32, seed=0):
    return (np.random.default_rng(seed).random((h, w, 3)) * 255).astype(np.uint8)


def _x(ad, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.rand((1, 3, *ad.resolution), generator=g) * 2 - 1


# ---- the shapes -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("key,pipeline,scheduler", [
    ("sd-turbo", "StableDiffusionPipeline", "EulerDiscreteScheduler"),
    ("sdxl-turbo", "StableDiffusionXLPipeline", "EulerAncestralDiscreteScheduler"),
    ("playground", "StableDiffusionXLPipeline", "EDMDPMSolverMultistepScheduler"),
    ("sd3.5", "StableDiffusion3Pipeline", "FlowMatchEulerDiscreteScheduler")])
def test_tiny_shapes_carry_the_hub_configuration(pipes, key, pipeline, scheduler):
    pipe = pipes[key]
    assert type(pipe).__name__ == pipeline and type(pipe.scheduler).__name__ == scheduler
    cfg = pipe.scheduler.config
    if "turbo" in key:
        assert cfg.timestep_spacing == "trailing" and cfg.beta_schedule == "scaled_linear"
        assert (cfg.beta_start, cfg.beta_end, cfg.prediction_type) == (0.00085, 0.012, "epsilon")
    if key == "playground":
        assert (cfg.sigma_min, cfg.sigma_max, cfg.sigma_data, cfg.rho) == (0.002, 80.0, 0.5, 7.0)
        vae = pipe.vae.config
        assert vae.scaling_factor == 0.5
        assert tuple(vae.latents_mean) == PLAYGROUND_VAE["latents_mean"]
        assert tuple(vae.latents_std) == PLAYGROUND_VAE["latents_std"]
    if key == "sd3.5":
        tc = pipe.transformer.config
        assert tuple(tc.dual_attention_layers) == (0,) and tc.qk_norm == "rms_norm" and cfg.shift == 3.0
        assert pipe.transformer.transformer_blocks[0].attn2 is not None
        assert pipe.transformer.transformer_blocks[1].attn2 is None


def test_hub_scheduler_refuses_an_unknown_model():
    with pytest.raises(ValueError, match="no hub scheduler recorded for 'sd-tubro'; known: .*playground-v2.5"):
        hub_scheduler("sd-tubro")
    assert set(HUB_SCHEDULERS) == {"sd-turbo", "sdxl-turbo", "playground-v2.5", "sd3.5-medium"}


@pytest.mark.parametrize("key,cls", [("sd-turbo", StableDiffusionAdapter), ("sdxl-turbo", StableDiffusionXLAdapter),
                                     ("playground", StableDiffusionXLAdapter), ("sd3.5", StableDiffusion3Adapter)])
def test_load_pipeline_accepts_each_shape(pipes, tmp_path, key, cls):
    """Saved and loaded through load_pipeline: the same adapter, scheduler and losses."""
    pipes[key].save_pretrained(tmp_path)
    assert elbo_lib.models.pipeline_class_name(tmp_path) == type(pipes[key]).__name__
    loaded = elbo_lib.load_pipeline(tmp_path, device="cpu")
    assert type(adapter_for(loaded)) is cls
    assert type(loaded.scheduler) is type(pipes[key].scheduler)
    public = lambda c: {k: v for k, v in c.items() if not k.startswith("_")}  # noqa: E731
    assert public(loaded.scheduler.config) == public(pipes[key].scheduler.config)
    a = Aligner(pipes[key], **FAST).elbo_losses(_img(), ["red circle", "cat"])
    b = Aligner(loaded, **FAST).elbo_losses(_img(), ["red circle", "cat"])
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


# ---- SD-Turbo / SDXL-Turbo: the authors' DDIM conversion ---------------------------------------------------------

@pytest.mark.parametrize("key", ["sd-turbo", "sdxl-turbo"])
@pytest.mark.parametrize("swap", [None, EulerDiscreteScheduler, EulerAncestralDiscreteScheduler])
def test_turbo_alphas_equal_the_authors_ddim_conversion(pipes, key, swap):
    """sqrt(abar) and sqrt(1 - abar) at k = round(1000 t) equal those of DDIMScheduler.from_config(the scheduler's
    config), which equal the Euler(-ancestral) scheduler's own: trailing spacing only moves the sampling steps."""
    pipe = pipes[key]
    sched = pipe.scheduler if swap is None else swap.from_config(pipe.scheduler.config)
    ad = adapter_for(pipe if swap is None else type(pipe).from_pipe(pipe, scheduler=sched))
    ddim = DDIMScheduler.from_config(sched.config)
    k = torch.round(T * 1000).long()
    a, s = ad.alpha_sigma(T)
    assert torch.equal(a, ddim.alphas_cumprod[k].double().sqrt().float())
    assert torch.equal(s, (1 - ddim.alphas_cumprod[k].double()).sqrt().float())
    torch.testing.assert_close(ddim.alphas_cumprod, sched.alphas_cumprod, rtol=0, atol=0)
    assert torch.equal(ad.model_timestep(T), k) and ad.objective == "epsilon"
    # the sampling grid is trailing (999, ...), but the ELBO's training timesteps do not depend on it
    fresh = type(sched).from_config(sched.config)
    fresh.set_timesteps(4)
    assert int(fresh.timesteps[0]) == 999


# ---- Playground v2.5: the official configuration is the authors' DDIM rebuild ------------------------------------

def test_authors_ddim_of_playground_has_the_default_betas(pipes):
    """DDIMScheduler.from_config(EDM config) keeps num_train_timesteps and prediction_type and falls back to
    DDIMScheduler's default betas: linear, 1e-4 to 0.02 over 1000 steps."""
    pipe = pipes["playground"]
    ddim = DDIMScheduler.from_config(pipe.scheduler.config)
    assert (ddim.config.beta_start, ddim.config.beta_end, ddim.config.beta_schedule) == (0.0001, 0.02, "linear")
    assert ddim.config.prediction_type == "epsilon" and ddim.config.num_train_timesteps == 1000
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    abar = torch.cumprod(1 - betas, 0)
    ad = adapter_for(pipe)
    assert not ad.uses_edm and ad.objective == "epsilon"
    k = torch.round(T * 1000).long()
    a, s = ad.alpha_sigma(T)
    # diffusers builds the betas in float32
    torch.testing.assert_close(a.double(), abar[k].sqrt(), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(s.double(), (1 - abar[k]).sqrt(), rtol=1e-4, atol=2e-6)
    assert torch.equal(ad.model_timestep(T), k)


@torch.no_grad()
def test_playground_official_losses_are_the_authors_construction(pipes):
    """The official per-class losses on Playground, against the authors' get_elbo written out: latent = posterior
    mean x scaling_factor (no latents_mean / latents_std), z_t = sqrt(abar) z + sqrt(1 - abar) eps with abar from
    DDIMScheduler.from_config, the UNet at the integer timestep, mse(eps, output)."""
    pipe = pipes["playground"]
    al = Aligner(pipe, AlignConfig.official(**FAST))
    x0, _ = al.encode(_img(), al.config)
    z = pipe.vae.encode(pipe.image_processor.preprocess(Image.fromarray(_img()), 32, 32)).latent_dist.mean
    torch.testing.assert_close(x0, z * pipe.vae.config.scaling_factor, rtol=1e-5, atol=1e-6)

    ddim = DDIMScheduler.from_config(pipe.scheduler.config)
    alphas, sigmas = ddim.alphas_cumprod.sqrt(), (1 - ddim.alphas_cumprod).sqrt()
    ad = adapter_for(pipe)
    cond = ad.encode_text(["a photo of red circle", "a photo of cat"])
    steps = list(range(1, 999, 50))[::7]  # three of the authors' ELBO timesteps
    eps = shared_noise(x0.shape[1:], len(steps), seed=3, device="cpu", dtype=torch.float32)
    want = torch.empty(2, len(steps))
    for i in range(2):
        for j, k in enumerate(steps):
            z_t = alphas[k] * x0 + sigmas[k] * eps[j:j + 1]
            out = pipe.unet(z_t, torch.tensor([k]), encoder_hidden_states=cond.embeds[i:i + 1],
                            added_cond_kwargs={n: v[i:i + 1] for n, v in cond.extra.items()}).sample
            want[i, j] = torch.nn.functional.mse_loss(eps[j:j + 1], out)
    got = class_losses(ad, x0, cond, torch.tensor(steps, dtype=torch.float64) / 1000, eps, "authors")
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)


# ---- Playground v2.5: the project option edm_native ------------------------------------------------------------

def _karras(k: torch.Tensor, smin=0.002, smax=80.0, rho=7.0, n=1000) -> torch.Tensor:
    """EDM's Eq. 5 at ramp k / (n - 1), increasing: (smin^(1/rho) + r (smax^(1/rho) - smin^(1/rho)))^rho."""
    r = k.double() / (n - 1)
    return (smin ** (1 / rho) + r * (smax ** (1 / rho) - smin ** (1 / rho))) ** rho


def test_edm_native_noise_levels_are_the_karras_grid(pipes):
    ad = adapter_for(pipes["playground"]).configured(True, edm_native=True)
    assert ad.uses_edm and ad.objective == "epsilon"
    k = torch.round(T * 1000).long()
    sigma = _karras(k)
    c_in = 1 / (sigma ** 2 + 0.25).sqrt()
    a, s = ad.alpha_sigma(T)
    torch.testing.assert_close(a.double(), c_in, rtol=1e-5, atol=0)
    torch.testing.assert_close(s.double(), sigma * c_in, rtol=1e-5, atol=0)
    torch.testing.assert_close(ad.model_timestep(T).double(), 0.25 * sigma.log(), rtol=1e-5, atol=1e-6)
    # the signal-to-noise ratio is frame-free: alpha^2 / sigma^2 = 1 / sigma_edm^2
    torch.testing.assert_close((a / s).double() ** 2, 1 / sigma ** 2, rtol=1e-4, atol=0)
    # sampling rewrites the pipeline scheduler's sigmas; the noise levels come from a fresh copy
    pipes["playground"].scheduler.set_timesteps(3)
    torch.testing.assert_close(adapter_for(pipes["playground"]).configured(True, True).alpha_sigma(T)[1], s)


@torch.no_grad()
def test_edm_native_feeds_the_unet_what_playgrounds_pipeline_feeds_it(pipes):
    """At the first sampling step (sigma_max, the grid's top: t = 0.999) the pipeline gives the UNet
    c_in * latents * init_noise_sigma and c_noise; the adapter's z_t = c_in (x0 + sigma eps) and time input
    are the same for x0 = 0 and eps = that latent / sigma."""
    pipe = pipes["playground"]
    ad = adapter_for(pipe).configured(True, True)
    calls = []
    hook = pipe.unet.register_forward_pre_hook(lambda m, a, kw: calls.append((a, kw)), with_kwargs=True)
    latents = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    try:
        pipe(prompt="a photo of cat", num_inference_steps=2, guidance_scale=1.0, latents=latents.clone(),
             output_type="latent")
    finally:
        hook.remove()
    args, kw = calls[0]
    sample = args[0] if args else kw["sample"]
    timestep = args[1] if len(args) > 1 else kw["timestep"]
    t = torch.tensor([0.999], dtype=torch.float64)
    sigma_max = pipe.scheduler.config.sigma_max
    x = latents * pipe.scheduler.init_noise_sigma
    a, s = ad.alpha_sigma(t)
    z_t = a * 0 + s * (x / sigma_max)
    torch.testing.assert_close(z_t, sample, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ad.model_timestep(t).float(), torch.as_tensor(timestep).float().flatten()[:1],
                               rtol=1e-6, atol=1e-6)


@torch.no_grad()
def test_edm_native_epsilon_from_the_ideal_output_is_the_noise(pipes, monkeypatch):
    """If the network returns EDM's training target F = (x0 - c_skip x) / c_out (x = x0 + sigma eps), predict()
    returns eps exactly: the preconditioning's signs and scales are the scheduler's."""
    ad = adapter_for(pipes["playground"]).configured(True, True)
    g = torch.Generator().manual_seed(5)
    x0, eps = torch.randn(5, 4, 16, 16, generator=g), torch.randn(5, 4, 16, 16, generator=g)
    sigma = _karras(torch.round(T * 1000).long()).float().view(-1, 1, 1, 1)
    c_skip, c_out = 0.25 / (sigma ** 2 + 0.25), sigma * 0.5 / (sigma ** 2 + 0.25).sqrt()
    ideal = (x0 - c_skip * (x0 + sigma * eps)) / c_out
    monkeypatch.setattr(type(ad), "denoise", lambda self, z_t, t, cond: ideal)
    a, s = (v.view(-1, 1, 1, 1) for v in ad.alpha_sigma(T))
    got = ad.predict(a * x0 + s * eps, T, None)
    torch.testing.assert_close(got, eps, rtol=1e-4, atol=1e-4)


def test_edm_native_latent_normalisation(pipes):
    pipe = pipes["playground"]
    x = _x(adapter_for(pipe))
    z = pipe.vae.encode(x).latent_dist.mean
    mean = torch.tensor(PLAYGROUND_VAE["latents_mean"]).view(1, 4, 1, 1)
    std = torch.tensor(PLAYGROUND_VAE["latents_std"]).view(1, 4, 1, 1)
    official = adapter_for(pipe).encode_image(x)
    native = adapter_for(pipe).configured(True, True).encode_image(x)
    torch.testing.assert_close(official, z * 0.5, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(native, (z - mean) * 0.5 / std, rtol=1e-6, atol=1e-7)
    plain = type(pipe.vae.config)({**pipe.vae.config, "latents_mean": None, "latents_std": None})
    torch.testing.assert_close(normalised_latent(z, plain), z * 0.5)
    bad = type(pipe.vae.config)({**pipe.vae.config, "latents_mean": [0.0] * 3})
    with pytest.raises(ValueError, match="3 / 4 entries for a 4-channel latent"):
        normalised_latent(z, bad)


@pytest.mark.parametrize("scheduler,n", [(EDMEulerScheduler(), 1001),
                                         (EDMDPMSolverMultistepScheduler(sigma_schedule="exponential"), 1000)])
def test_other_edm_schedulers_run_both_rows(scheduler, n):
    """An SDXL pipeline with EDMEulerScheduler (its grid has num_train_timesteps + 1 sigmas) or the exponential
    schedule: the official row is the DDIM rebuild, edm_native that scheduler's own grid at k = round(1000 t)."""
    pipe = tiny_sdxl_pipeline(scheduler=scheduler)
    ad = adapter_for(pipe).configured(True, True)
    k = torch.round(T * 1000).long()
    if scheduler.config.sigma_schedule == "karras":
        want = _karras(k, n=n)
    else:
        want = (math.log(0.002) + k.double() / (n - 1) * (math.log(80.0) - math.log(0.002))).exp()
    a, s = ad.alpha_sigma(T)
    torch.testing.assert_close((s / a).double(), want, rtol=1e-5, atol=0)
    ddim = DDIMScheduler.from_config(scheduler.config)
    torch.testing.assert_close(adapter_for(pipe).alpha_sigma(T)[0].double(), ddim.alphas_cumprod[k].double().sqrt(),
                               rtol=1e-6, atol=1e-7)
    for edm in (False, True):
        res = Aligner(pipe, **FAST, edm_native=edm)(_img(), ["red circle", "cat"], seed=0)
        assert np.isfinite(res.heatmaps).all() and np.isfinite(res.elbo).all()


def test_edm_noise_refuses_a_non_edm_scheduler(pipes):
    with pytest.raises(ValueError, match="DDIMScheduler is not an EDM scheduler"):
        EDMNoise(pipes["sd1"].scheduler)


def test_edm_native_changes_nothing_without_an_edm_scheduler(pipes):
    """The option touches EDM-scheduler pipelines only: SDXL-Turbo gives the same measurement either way."""
    a = Aligner(pipes["sdxl-turbo"], **FAST)(_img(), ["red circle", "cat"], seed=0)
    b = Aligner(pipes["sdxl-turbo"], **FAST, edm_native=True)(_img(), ["red circle", "cat"], seed=0)
    np.testing.assert_array_equal(a.elbo, b.elbo)
    np.testing.assert_array_equal(a.heatmaps, b.heatmaps)


def test_playground_official_and_edm_native_rows(pipes):
    """Both readings run Alg. 1 end to end and differ (docs/configuration.md reports the numbers): the official
    row is the authors' DDIM rebuild, the edm_native row EDM's own noise levels."""
    img, classes = _img(40, 24), ["red circle", "cat", "blue star"]
    off = Aligner(pipes["playground"], AlignConfig.official())(img, classes, seed=0)
    edm = Aligner(pipes["playground"], AlignConfig.official(edm_native=True))(img, classes, seed=0)
    for res in (off, edm):
        assert res.heatmaps.shape == (3, 40, 24) and np.isfinite(res.elbo).all()
        assert ((res.scores >= 1 / 3 - 1e-12) & (res.scores <= 1)).all()
    assert np.abs(off.elbo - edm.elbo).max() > 0.1
    assert np.abs(off.raw - edm.raw).max() > 0.05  # the attention is collected at other noise levels
    assert AlignConfig(edm_native=True).measurement_key()["edm_native"] is True
    assert "edm_native" not in AlignConfig().measurement_key()  # earlier measurements keep their keys


# ---- SD 3.5 medium: what the authors' processors and store keep from attn2 ----------------------------------------

class _AuthorsJointStore:
    """The authors' ``JointAttnProcessor`` (utils/attention_control.py), set on every attention of the transformer
    (``pipe.transformer.set_attn_processor(JointAttnProcessor())``), with their ``AvgAttentionStoreHook.forward``
    rule: a joint layer (tuple output) files sim[:, :img, -txt:] under cross_att and sim[:, :img, :img] under
    self_att; any other layer files its head-mean sim under ``is_cross_attention`` (attn2: self_att)."""

    def __init__(self):
        self.store = {"cross_att": [], "self_att": []}

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, **kwargs):
        b = hidden_states.shape[0]
        split = lambda x: x.view(b, -1, attn.heads, x.shape[-1] // attn.heads).transpose(1, 2)  # noqa: E731
        q, k, v = split(attn.to_q(hidden_states)), split(attn.to_k(hidden_states)), split(attn.to_v(hidden_states))
        if attn.norm_q is not None:
            q, k = attn.norm_q(q), attn.norm_k(k)
        if encoder_hidden_states is not None:
            cq, ck = split(attn.add_q_proj(encoder_hidden_states)), split(attn.add_k_proj(encoder_hidden_states))
            cv = split(attn.add_v_proj(encoder_hidden_states))
            if attn.norm_added_q is not None:
                cq, ck = attn.norm_added_q(cq), attn.norm_added_k(ck)
            q, k, v = torch.cat([q, cq], 2), torch.cat([k, ck], 2), torch.cat([v, cv], 2)
        sim = (torch.einsum("bhid,bhjd->bhij", q, k) * attn.scale).softmax(-1)
        out = torch.einsum("bhij,bhjd->bhid", sim, v).transpose(1, 2).reshape(b, -1, attn.heads * q.shape[-1])
        n_img = hidden_states.shape[1]
        img, txt = out[:, :n_img], out[:, n_img:]
        if encoder_hidden_states is not None and not attn.context_pre_only:
            txt = attn.to_add_out(txt)
        img = attn.to_out[1](attn.to_out[0](img))
        result = img if encoder_hidden_states is None else (img, txt)
        sim_mean = sim.mean(1)
        if isinstance(result, tuple):
            self.store["cross_att"].append(sim_mean[:, :n_img, -txt.shape[1]:])
            self.store["self_att"].append(sim_mean[:, :n_img, :n_img])
        else:
            self.store["cross_att" if attn.is_cross_attention else "self_att"].append(sim_mean)
        return result


@torch.no_grad()
def test_sd35_attention_store_keeps_what_the_authors_keep(pipes):
    """attn2 (image-only self-attention of the dual-attention layers) joins the self-attention average with weight
    1 like every joint layer's image block, and gives no cross-attention: the cross-attention and its Gaussian
    layer weights run over the joint layers alone, as the authors' store files them."""
    pipe = pipes["sd3.5"]
    ad = adapter_for(pipe)
    n_layers, n_dual = pipe.transformer.config.num_layers, len(pipe.transformer.config.dual_attention_layers)
    z = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([0.2], dtype=torch.float64)
    cond = ad.encode_text(["a photo of red circle, cat"])

    original = dict(pipe.transformer.attn_processors)
    authors = _AuthorsJointStore()
    pipe.transformer.set_attn_processor(authors)
    try:
        ref_out = ad.predict(z, t, cond)
    finally:
        pipe.transformer.set_attn_processor(original)
    assert len(authors.store["cross_att"]) == n_layers and len(authors.store["self_att"]) == n_layers + n_dual

    with capture_attention(ad.denoiser, (16, 16), joint=True, segments=True) as store:
        out = ad.predict(z, t, cond)
    torch.testing.assert_close(out, ref_out, rtol=1e-4, atol=1e-5)
    assert list(store.cross) == [f"transformer_blocks.{i}.attn.processor" for i in range(n_layers)]
    for got, want in zip(store.cross.values(), authors.store["cross_att"]):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)
    assert store.segment_counts == {0: n_layers + n_dual}
    torch.testing.assert_close(store.segment_sums[0] / store.segment_counts[0],
                               torch.stack(authors.store["self_att"]).mean(0), rtol=1e-5, atol=1e-7)
    # the authors centre the Gaussian on (len(cross_att) - 1) / 2 for an MMDiT
    x = torch.arange(n_layers, dtype=torch.float64) - (n_layers - 1) / 2
    w = torch.exp(-x ** 2 / 18)
    np.testing.assert_allclose(gaussian_layer_weights(list(store.cross)), (w / w.sum() * n_layers).numpy())


def test_sd35_without_t5_and_its_dual_layers_beyond_the_first():
    """SD 3.5 as users load it without T5, with the real model's pattern (dual attention in the first layers only)."""
    pipe = tiny_sd35_pipeline(seed=1, with_t5=False)
    res = Aligner(pipe, **FAST)(_img(), ["red circle", "cat"], seed=0)
    assert res.heatmaps.shape == (2, 32, 32) and np.isfinite(res.elbo).all()
    assert math.isclose(pipe.scheduler.config.shift, 3.0)
