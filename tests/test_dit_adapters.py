"""FLUX.1 and PixArt-Sigma adapters on tiny random pipelines (the family-wide tests in test_attention,
test_elbo and test_aligner cover them too): each adapter's denoiser call equals the pipeline's own,
the noise levels follow their schedulers, and the captured attention stays within its memory bound."""
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import elbo_lib
from elbo_lib import Aligner
from elbo_lib.attention import _explicit_attention, capture_attention, head_mean_attention, layer_level, ordered_levels
from elbo_lib.elbo import class_losses, elbo_timesteps, objective_weight, shared_noise
from elbo_lib.models import FluxAdapter, PixArtSigmaAdapter, adapter_for
from elbo_lib.models.random_init import tiny_flux_pipeline

ROOT = Path(__file__).resolve().parents[1]
FAST = dict(elbo_steps=3, attention_steps=2)


@pytest.fixture(scope="module")
def schnell():
    return tiny_flux_pipeline(seed=1, guidance_embeds=False, dynamic_shift=False)


def _record_denoiser_calls(denoiser):
    """Hooks recording every forward call's keyword inputs and output."""
    calls = []
    pre = denoiser.register_forward_pre_hook(lambda m, a, kw: calls.append({"args": a, "kw": dict(kw)}),
                                             with_kwargs=True)
    post = denoiser.register_forward_hook(lambda m, a, kw, out: calls[-1].update(out=out[0]), with_kwargs=True)
    return calls, (pre, post)


def _z(ad, hw=(16, 24), batch=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn((batch, ad.pipe.vae.config.latent_channels, *hw), generator=g)


def test_adapter_chosen_by_pipeline_class(pipes, schnell):
    assert type(adapter_for(pipes["flux"])) is FluxAdapter and type(adapter_for(schnell)) is FluxAdapter
    assert type(adapter_for(pipes["pixart"])) is PixArtSigmaAdapter
    assert adapter_for(pipes["flux"]).objective == "flow" and adapter_for(pipes["pixart"]).objective == "epsilon"


def test_load_pipeline_refuses_an_unsupported_class_before_loading(tmp_path):
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "KandinskyV22Pipeline"}))
    with pytest.raises(ValueError, match="unsupported pipeline class KandinskyV22Pipeline; supported: .*FluxPipeline"
                                         ".*PixArtSigmaPipeline"):
        elbo_lib.load_pipeline(tmp_path, device="cpu")


# ---- FLUX -------------------------------------------------------------------------------------------------

def test_flux_pack_round_trip_and_odd_latent(pipes):
    ad = adapter_for(pipes["flux"])
    z = _z(ad, (16, 24), batch=2)
    tokens = ad.pack(z)
    assert tokens.shape == (2, 8 * 12, 4 * z.shape[1])
    torch.testing.assert_close(ad.unpack(tokens, (16, 24)), z, rtol=0, atol=0)
    # token (i, j) holds the 2x2 patch at rows 2i..2i+1, columns 2j..2j+1, channel-major
    torch.testing.assert_close(tokens[0, 1 * 12 + 2].view(-1, 2, 2), z[0, :, 2:4, 4:6], rtol=0, atol=0)
    with pytest.raises(ValueError, match="2x2"):
        ad.pack(_z(ad, (15, 24)))


def test_flux_dynamic_shift_mu_from_the_image_tokens(pipes):
    """mu = calculate_shift(n) (linear from 0.5 at 256 tokens to 1.15 at 4096) for the latent being scored;
    sigma at t is the scheduler's exponential time shift of (k + 1) / 1000, k = round(1000 t)."""
    ad = adapter_for(pipes["flux"])
    sched_cfg = pipes["flux"].scheduler.config
    assert sched_cfg.use_dynamic_shifting
    for hw in ((16, 24), (64, 64), (128, 128)):
        a = ad.for_latent(torch.zeros(1, 4, *hw))
        n = (hw[0] // 2) * (hw[1] // 2)
        mu = 0.5 + (1.15 - 0.5) * (n - 256) / (4096 - 256)
        assert math.isclose(a.shift_mu(), mu, rel_tol=1e-12)
        t = torch.tensor([0.001, 0.2, 0.951], dtype=torch.float64)
        k1 = (torch.round(t * 1000) + 1) / 1000
        want = math.exp(mu) / (math.exp(mu) + 1 / k1 - 1)
        torch.testing.assert_close(a.alpha_sigma(t)[1].double(), want, rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(a.model_timestep(t).double(), want, rtol=1e-6, atol=1e-7)  # FLUX takes sigma
    assert math.isclose(ad.for_latent(torch.zeros(1, 4, 128, 128)).shift_mu(), 1.15)  # 1024 px: FLUX's max shift
    # the same sigma as the pipeline's own scheduler at that noise level and image size
    sched = type(pipes["flux"].scheduler).from_config(sched_cfg)
    a = ad.for_latent(torch.zeros(1, 4, 16, 24))
    sched.set_timesteps(sigmas=[0.3], mu=a.shift_mu())
    torch.testing.assert_close(a.alpha_sigma(torch.tensor([0.299], dtype=torch.float64))[1], sched.sigmas[:1])
    assert ad.for_latent(torch.zeros(1, 4, 16, 24)) is not ad and a.for_latent(torch.zeros(1, 4, 16, 24)) is a


def test_sd3_shares_the_dynamic_shift(pipes):
    """SD 3 and FLUX share one flow-matching schedule (models.flow): an SD 3 pipeline given a dynamic-shift
    scheduler (which the SD 3 adapter used to refuse) gets sigma as StableDiffusion3Pipeline would set it."""
    from diffusers import FlowMatchEulerDiscreteScheduler
    from elbo_lib.models.sd3 import StableDiffusion3Adapter
    pipe = pipes["sd3"]
    sched = FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15)
    ad = StableDiffusion3Adapter(pipe)
    ad.pipe = type(pipe)(**{**pipe.components, "scheduler": sched})
    a = ad.for_latent(torch.zeros(1, 4, 16, 24))  # patch 1: 384 tokens
    mu = 0.5 + 0.65 * (384 - 256) / 3840
    assert math.isclose(a.shift_mu(), mu, rel_tol=1e-12)
    sched.set_timesteps(sigmas=[0.6], mu=mu)
    t = torch.tensor([0.599], dtype=torch.float64)
    torch.testing.assert_close(a.alpha_sigma(t)[1], sched.sigmas[:1])
    torch.testing.assert_close(a.model_timestep(t), sched.timesteps[:1])  # SD 3 takes 1000 sigma


def test_flux_schnell_fixed_shift_and_no_guidance(schnell):
    ad = adapter_for(schnell)
    assert ad.for_latent(torch.zeros(1, 4, 64, 64)) is ad  # no dynamic shift: nothing depends on the size
    t = torch.tensor([0.05, 0.5], dtype=torch.float64)
    torch.testing.assert_close(ad.alpha_sigma(t)[1].double(), (torch.round(t * 1000) + 1) / 1000)
    calls, hooks = _record_denoiser_calls(ad.denoiser)
    with torch.no_grad():
        ad.predict(_z(ad), t[:1], ad.encode_text(["a photo of a cat"]))
    for h in hooks:
        h.remove()
    assert calls[0]["kw"]["guidance"] is None


@pytest.mark.parametrize("dev", [True, False], ids=["dev", "schnell"])
def test_flux_predict_equals_the_pipeline_step(pipes, schnell, dev):
    """One FluxPipeline step at sigma 0.3 on a 32x48 image (guidance 1.0, the adapter's) calls the transformer
    exactly as the adapter does at t = 0.299: packing, image ids, text ids, timestep, guidance, mu."""
    pipe = pipes["flux"] if dev else schnell
    ad = adapter_for(pipe)
    z = _z(ad, (16, 24), seed=3)
    calls, hooks = _record_denoiser_calls(ad.denoiser)
    with torch.no_grad():
        pipe("a photo of a red circle", height=32, width=48, num_inference_steps=1, sigmas=[0.3], guidance_scale=1.0,
             latents=ad.pack(z), output_type="latent", max_sequence_length=ad.max_text_tokens)
        ref = ad.unpack(calls[0]["out"], (16, 24))
        mine = ad.predict(z, torch.tensor([0.299], dtype=torch.float64), ad.encode_text(["a photo of a red circle"]))
    for h in hooks:
        h.remove()
    torch.testing.assert_close(calls[1]["kw"]["timestep"], calls[0]["kw"]["timestep"])
    torch.testing.assert_close(mine, ref, rtol=1e-5, atol=1e-6)
    if dev:  # the guidance value reaches the model: 3.5 (the pipeline's sampling default) changes the output
        ad35 = adapter_for(pipe)
        ad35.guidance = 3.5
        with torch.no_grad():
            other = ad35.predict(z, torch.tensor([0.299], dtype=torch.float64),
                                 ad.encode_text(["a photo of a red circle"]))
        assert not torch.allclose(other, mine) and adapter_for(pipe).guidance == 1.0


def test_flux_layer_names_levels_and_weights(pipes):
    ad = adapter_for(pipes["flux"])
    with torch.no_grad(), capture_attention(ad.denoiser, (8, 8), joint=True) as store:
        ad.predict(_z(ad, (16, 16)), torch.tensor([0.1], dtype=torch.float64), ad.encode_text(["a cat"]))
    names = list(store.cross)
    assert names == ["transformer_blocks.0.attn.processor", "transformer_blocks.1.attn.processor",
                     "single_transformer_blocks.0.attn.processor", "single_transformer_blocks.1.attn.processor"]
    assert [layer_level(n) for n in names] == ["block0", "block1", "single0", "single1"]
    assert ordered_levels(names[::-1]) == ["block0", "block1", "single0", "single1"]


def test_head_mean_attention_equals_the_full_matrix():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 10, 4, generator=g) for _ in range(3))
    for mask in (None, torch.randn(2, 3, 10, 10, generator=g), torch.rand(2, 1, 10, 10, generator=g) > 0.2):
        if mask is not None and mask.dtype == torch.bool:
            mask[..., 0] = True  # every query keeps a key
        out, mean = head_mean_attention(q, k, v, mask)
        ref_out, ref_probs = _explicit_attention(q, k, v, mask)
        torch.testing.assert_close(out, ref_out)
        torch.testing.assert_close(mean, ref_probs.mean(1))


def test_flux_capture_memory_is_bounded(pipes, monkeypatch):
    """Probabilities are formed one head at a time; all layers' self-attention is one in-place (B, N, N) sum;
    cross-attention keeps only the first ``cross_tokens`` text columns, as copies (the full matrices freed)."""
    import elbo_lib.attention as A
    ad = adapter_for(pipes["flux"])
    shapes = []
    orig = A._explicit_attention
    monkeypatch.setattr(A, "_explicit_attention", lambda q, k, v, m=None: shapes.append(q.shape) or orig(q, k, v, m))
    ptrs = []
    orig_acc = A.AttentionStore._accumulate
    monkeypatch.setattr(A.AttentionStore, "_accumulate",
                        staticmethod(lambda sums, key, p: (orig_acc(sums, key, p), ptrs.append(sums[key].data_ptr()))))
    z = _z(ad, (16, 24), batch=2)
    cond = ad.encode_text(["a photo of a cat"] * 2)
    t = torch.tensor([0.1, 0.2], dtype=torch.float64)
    with torch.no_grad(), capture_attention(ad.denoiser, (8, 12), joint=True, segments=True, cross_tokens=5) as store:
        ad.for_latent(z).predict(z, t, cond)
    heads = ad.denoiser.config.num_attention_heads
    n_layers = len(ad.denoiser.transformer_blocks) + len(ad.denoiser.single_transformer_blocks)
    assert len(shapes) == heads * n_layers and all(s[1] == 1 for s in shapes)  # one head per softmax
    assert list(store.segment_sums) == [0] and store.segment_counts == {0: n_layers}
    assert store.segment_sums[0].shape == (2, 96, 96) and len(set(ptrs)) == 1  # summed in place
    for p in store.cross.values():
        assert p.shape == (2, 96, 5) and p._base is None


def test_flux_and_pixart_non_square_image(pipes):
    for fam in ("flux", "pixart"):
        al = Aligner(pipes[fam], **FAST, resolution=(32, 48))
        img = (np.random.default_rng(0).random((30, 45, 3)) * 255).astype(np.uint8)
        m = al.measure(img, ["red circle", "cat"], seed=0)
        assert m.cross.shape == (2, 2, 8, 12) and m.self_attn.shape == (96, 96), fam
        res = al(img, ["red circle", "cat"], seed=0)
        assert res.heatmaps.shape == (2, 30, 45) and np.isfinite(res.elbo).all()
    # FLUX rounds sizes to multiples of 2 x the VAE factor, as FluxPipeline does
    x = adapter_for(pipes["flux"]).preprocess(img, (35, 50))
    assert x.shape[-2:] == (32, 48)


# ---- PixArt-Sigma ------------------------------------------------------------------------------------------

def test_pixart_predict_equals_the_pipeline_step_learned_sigma(pipes):
    """One PixArtSigmaPipeline step (no CFG) calls the transformer as the adapter does (timestep, T5 embeddings,
    attention mask); the adapter returns the epsilon half of the 2 C learned-sigma channels."""
    pipe = pipes["pixart"]
    ad = adapter_for(pipe)
    assert ad.learned_sigma and ad.denoiser.config.out_channels == 2 * pipe.vae.config.latent_channels
    z = _z(ad, (16, 24), seed=4)
    calls, hooks = _record_denoiser_calls(ad.denoiser)
    with torch.no_grad():
        pipe("a photo of a red circle", height=32, width=48, num_inference_steps=1, guidance_scale=1.0, latents=z,
             output_type="latent", use_resolution_binning=False, max_sequence_length=ad.max_text_tokens)
        step = int(calls[0]["kw"]["timestep"][0])
        t = torch.tensor([step / 1000], dtype=torch.float64)
        mine = ad.predict(z, t, ad.encode_text(["a photo of a red circle"]))
    for h in hooks:
        h.remove()
    full = calls[0]["out"]
    assert full.shape[1] == 2 * z.shape[1]
    torch.testing.assert_close(mine, full[:, :z.shape[1]], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(calls[1]["kw"]["encoder_attention_mask"], calls[0]["kw"]["encoder_attention_mask"])


def test_pixart_positions_in_the_text_the_pipeline_encodes(pipes):
    """PixArtSigmaPipeline lower-cases prompts: capitalised classes and captions give the lower-case positions
    (T5 itself is case-sensitive: 'Cat' and 'cat' are other pieces)."""
    al = Aligner(pipes["pixart"], **FAST)
    img = (np.random.default_rng(0).random((32, 32, 3)) * 255).astype(np.uint8)
    upper = al.measure(img, ["Red circle", "Cat"], caption="A photo of a Red circle and a Cat", seed=0)
    lower = al.measure(img, ["red circle", "cat"], caption="a photo of a red circle and a cat", seed=0)
    torch.testing.assert_close(upper.cross, lower.cross)
    assert adapter_for(pipes["flux"]).prompt_text("A Cat") == "A Cat"  # FLUX passes prompts as given


def test_pixart_schedule_and_weighting(pipes):
    ad = adapter_for(pipes["pixart"])
    t = torch.tensor([0.001, 0.5, 0.999], dtype=torch.float64)
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    abar = torch.cumprod(1 - betas, 0)[torch.round(t * 1000).long()]
    a, s = ad.alpha_sigma(t)
    torch.testing.assert_close(a.double(), abar.sqrt(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(s.double(), (1 - abar).sqrt(), rtol=1e-5, atol=1e-6)
    for w in ("authors", "eps", "native"):  # epsilon objective: the plain eps MSE under every weighting
        torch.testing.assert_close(objective_weight(ad, t, w), torch.ones(3))


def test_pixart_padding_gets_no_attention(pipes):
    """The T5 padding keys get a -10000 bias, as in diffusers: the captured cross-attention past the caption's
    tokens is zero and the caption's columns sum to one."""
    ad = adapter_for(pipes["pixart"])
    cond = ad.encode_text(["a photo of a cat"])
    n_tok = int(cond.extra["encoder_attention_mask"].sum())
    with torch.no_grad(), capture_attention(ad.denoiser, (8, 8)) as store:
        ad.predict(_z(ad, (16, 16)), torch.tensor([0.1], dtype=torch.float64), cond)
    for p in store.cross.values():
        assert p[..., n_tok:].abs().max() < 1e-30
        torch.testing.assert_close(p[..., :n_tok].sum(-1), torch.ones(p.shape[:2]))


def test_flow_and_pixart_elbo_weightings_table1(pipes):
    """FLUX: "authors" is the plain velocity MSE, "eps" the (1 - sigma)^2-weighted one (as SD 3)."""
    ad = adapter_for(pipes["flux"])
    g = torch.Generator().manual_seed(0)
    x0 = ad.encode_image(torch.rand((1, 3, 32, 32), generator=g) * 2 - 1)
    cond = ad.encode_text(["a photo of a cat", "a photo of a dog"])
    t = torch.as_tensor(elbo_timesteps(3), dtype=torch.float64)
    eps = shared_noise(x0.shape[1:], 3, 0, ad.device, torch.float32)
    authors, eps_w = class_losses(ad, x0, cond, t, eps, "authors"), class_losses(ad, x0, cond, t, eps, "eps")
    sigma = ad.for_latent(x0).alpha_sigma(t)[1]
    torch.testing.assert_close(eps_w, authors * (1 - sigma) ** 2, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(authors, class_losses(ad, x0, cond, t, eps, "native"))


# ---- end to end --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("fam", ["flux", "pixart"])
def test_segment_cli_on_a_saved_tiny_pipeline(pipes, tmp_path, fam):
    pipes[fam].save_pretrained(tmp_path / "model")
    img = tmp_path / "scene.png"
    Image.fromarray((np.random.default_rng(0).random((40, 56, 3)) * 255).astype(np.uint8)).save(img)
    r = subprocess.run([sys.executable, "-m", "elbo_lib", "segment", str(img), "--classes", "red circle,cat",
                        "--model", str(tmp_path / "model"), "--out", str(tmp_path / "out"), "--device", "cpu"],
                       cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads((tmp_path / "out" / "result.json").read_text())
    assert len(res["scores"]) == 2 and max(res["scores"]) == 1.0 and min(res["scores"]) >= 1 / 3 - 1e-9
    assert np.asarray(Image.open(tmp_path / "out" / "mask.png")).shape == (40, 56)
    loaded = elbo_lib.load_pipeline(tmp_path / "model", device="cpu")  # the same model as in memory
    a = Aligner(loaded, **FAST)(np.asarray(Image.open(img)), ["red circle", "cat"], seed=0)
    b = Aligner(pipes[fam], **FAST)(np.asarray(Image.open(img)), ["red circle", "cat"], seed=0)
    np.testing.assert_allclose(a.elbo, b.elbo, rtol=1e-5)
