"""The committed toy model loads as an ordinary diffusers pipeline; training runs and resumes."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from elbo_lib.models import load_pipeline
from elbo_lib.toy.architecture import ToyArchitecture
from elbo_lib.toy.train import TrainConfig, train
from elbo_lib.toy.world import WorldConfig

ROOT = Path(__file__).resolve().parents[1]
TOY = ROOT / "data" / "toy-sd"
TINY_ARCH = ToyArchitecture(image_size=32, vae_channels=(16, 16), unet_channels=(16, 16, 16), text_width=32)
TINY_TRAIN = TrainConfig(n_scenes=24, vae_steps=2, vae_batch=4, unet_steps=4, batch=4, checkpoint_every=1, threads=1)
TINY_WORLD = WorldConfig(image_size=32, radius=(4.0, 8.0))


def test_toy_pipeline_loads_and_samples():
    from diffusers import StableDiffusionPipeline
    pipe = StableDiffusionPipeline.from_pretrained(TOY)
    pipe.set_progress_bar_config(disable=True)
    out = pipe("a red circle and a blue star", num_inference_steps=2, generator=torch.Generator().manual_seed(0),
               output_type="np").images
    assert out.shape == (1, 64, 64, 3) and np.isfinite(out).all()
    assert pipe.unet.config.sample_size * pipe.vae_scale_factor == 64
    from elbo_lib.attention import capture_attention
    ids = pipe.tokenizer(["a red circle"], return_tensors="pt").input_ids
    with torch.no_grad(), capture_attention(pipe.unet, (16, 16), self_attn=False) as store:
        pipe.unet(torch.zeros(1, 4, 16, 16), 10, pipe.text_encoder(ids).last_hidden_state)
    assert max(p.shape[1] for p in store.cross.values()) == 16 * 16  # finest cross-attention map: 16x16
    meta = json.loads((TOY / "training.json").read_text())
    assert meta["world"]["rare_frequency"] <= 0.01
    size = sum(f.stat().st_size for f in TOY.rglob("*") if f.is_file())
    assert size < 25 * 2**20


def test_two_training_steps_and_resume(tmp_path, monkeypatch):
    out_a = train(tmp_path / "a", tmp_path / "wa", TINY_TRAIN, TINY_WORLD, TINY_ARCH)
    # interrupt a second run after two UNet steps, then resume it
    import elbo_lib.toy.train as tr
    calls = {"n": 0}
    orig = tr._ema_update

    def flaky(ema, model, decay):
        orig(ema, model, decay)
        if ema.__class__.__name__ == "CLIPTextModel":
            calls["n"] += 1
            if calls["n"] == 2:
                raise KeyboardInterrupt
    monkeypatch.setattr(tr, "_ema_update", flaky)
    with pytest.raises(KeyboardInterrupt):
        train(tmp_path / "b", tmp_path / "wb", TINY_TRAIN, TINY_WORLD, TINY_ARCH)
    monkeypatch.setattr(tr, "_ema_update", orig)
    assert torch.load(tmp_path / "wb" / "unet.pt", weights_only=False)["step"] == 1
    out_b = train(tmp_path / "b", tmp_path / "wb", TINY_TRAIN, TINY_WORLD, TINY_ARCH)
    from safetensors.torch import load_file
    for sub in ("unet", "text_encoder", "vae"):
        fa = next((out_a / sub).glob("*.safetensors"))
        a, b = load_file(fa), load_file(out_b / sub / fa.name)
        for k in a:
            torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)
    with pytest.raises(ValueError, match="different configuration"):
        train(tmp_path / "c", tmp_path / "wa", TrainConfig(n_scenes=25, vae_steps=2), TINY_WORLD, TINY_ARCH)


@pytest.mark.slow
def test_toy_calibration_changes_maps_exactly_where_score_below_one(toy_image):
    import elbo_lib
    pipe = elbo_lib.load_pipeline(TOY, device="cpu")
    res = elbo_lib.Aligner(pipe)(toy_image.image, ["red circle", "blue star"], caption="a red circle and a blue star")
    assert res.probs.shape == (2, 64, 64)
    np.testing.assert_allclose(res.probs.sum(0), 1.0, atol=1e-9)
    assert sorted(res.scores.tolist())[-1] == 1.0 and sorted(res.scores.tolist())[0] == pytest.approx(1 / 3)
    for i, s in enumerate(res.scores):
        if s == 1.0:
            np.testing.assert_array_equal(res.heatmaps[i], res.raw[i])
        else:
            assert not np.allclose(res.heatmaps[i], res.raw[i])
    # the root lowers every value of a [0, 1] map; refinement and the final min-max re-stretch it, so
    # the pointwise order holds on the calibrated cross-attention itself
    plain = elbo_lib.Aligner(pipe, self_attention=False, renormalize=False)(
        toy_image.image, ["red circle", "blue star"], caption="a red circle and a blue star")
    for i, s in enumerate(plain.scores):
        assert (plain.heatmaps[i] <= plain.raw[i] + 1e-6).all()


@pytest.mark.parametrize("std,distinct", [(0.02, False), (ToyArchitecture().token_embedding_std, True)])
def test_text_encoder_init_keeps_tokens_distinguishable(std, distinct):
    """With CLIP's default token-embedding std (0.02) the freshly built toy text encoder already maps the
    caption's words to nearly parallel vectors (the collapse that left the first toy model's cross-attention
    uniform); the toy default keeps them apart."""
    import dataclasses
    from elbo_lib.toy.architecture import build_text_encoder
    from elbo_lib.models.tokenizer import build_tokenizer
    from elbo_lib.toy.world import vocabulary
    arch = dataclasses.replace(ToyArchitecture(), token_embedding_std=std)
    tok = build_tokenizer(vocabulary(), arch.max_length)
    torch.manual_seed(0)
    te = build_text_encoder(arch, tok)
    ids = tok(["a red circle and a blue star"], return_tensors="pt").input_ids
    with torch.no_grad():
        h = te(ids).last_hidden_state[0, 1:-1]  # the caption's words
    h = h / h.norm(dim=-1, keepdim=True)
    cos = (h @ h.T)[~torch.eye(len(h), dtype=torch.bool)]
    assert (cos.mean().item() < 0.5) == distinct, cos.mean().item()


def test_longest_toy_caption_fits_the_text_encoder():
    from elbo_lib.models.tokenizer import build_tokenizer
    from elbo_lib.toy.world import COLOURS, SHAPES, make_caption, vocabulary
    arch = ToyArchitecture()
    tok = build_tokenizer(vocabulary(), arch.max_length)
    longest = make_caption([f"{c} {s}" for c, s in zip(COLOURS, SHAPES)][:5], prefix="a photo of ")
    n = len(tok(longest).input_ids)
    assert n <= arch.max_length, (n, longest)
    assert len(tok(longest + " and a red circle").input_ids) > n  # the count is real, not clipped


def test_eps_loss_min_snr_weighting():
    """snr_gamma = 0 is the plain MSE; min-SNR caps the weight of low-noise timesteps at gamma / SNR and
    leaves timesteps with SNR <= gamma at weight 1."""
    from diffusers import DDPMScheduler
    from elbo_lib.toy.train import diffusion_loss as eps_loss
    ac = DDPMScheduler(beta_schedule="squaredcos_cap_v2").alphas_cumprod
    g = torch.Generator().manual_seed(0)
    pred, eps = torch.randn(4, 4, 8, 8, generator=g), torch.randn(4, 4, 8, 8, generator=g)
    t = torch.tensor([5, 100, 700, 990])
    torch.testing.assert_close(eps_loss(pred, eps, t, ac, 0.0), torch.nn.functional.mse_loss(pred, eps))
    per = (pred - eps).pow(2).flatten(1).mean(1)
    snr = ac[t] / (1 - ac[t])
    assert snr[0] > 5 > snr[-1]
    w = torch.where(snr > 5, 5 / snr, torch.ones_like(snr))
    torch.testing.assert_close(eps_loss(pred, eps, t, ac, 5.0), (per * w).mean())
    with pytest.raises(ValueError, match="snr_gamma"):
        eps_loss(pred, eps, t, ac, -1.0)
    # v-prediction: the same cap in x0 terms, min(SNR, gamma) / (SNR + 1)
    torch.testing.assert_close(eps_loss(pred, eps, t, ac, 5.0, "v_prediction"),
                               (per * snr.clamp(max=5) / (snr + 1)).mean())
    with pytest.raises(ValueError, match="prediction_type"):
        eps_loss(pred, eps, t, ac, 5.0, "sample")


def test_training_device_must_exist(tmp_path):
    import dataclasses
    if torch.cuda.is_available():
        pytest.skip("a GPU is present; the refusal is for machines without one")
    with pytest.raises(ValueError, match="no CUDA GPU"):
        train(tmp_path / "o", tmp_path / "w", dataclasses.replace(TINY_TRAIN, device="cuda"), TINY_WORLD, TINY_ARCH)


@pytest.mark.slow
def test_toy_check_cli_writes_the_gate_numbers(tmp_path, capsys):
    """``python -m elbo_lib.toy.check`` on a small sample: prints the table, writes the JSON with every
    gate, and its exit status says whether all gates pass."""
    from elbo_lib.toy import check
    out = tmp_path / "q.json"
    rc = check.main(["--model", str(TOY), "--json", str(out), "--n-test", "4", "--n-per-level", "1",
                     "--n-prompts", "2", "--guidance", "3.0", "--sample-steps", "3"])
    res = json.loads(out.read_text())
    assert set(res["gates"]) == {"generation_presence", "pointing_accuracy", "bias_smaller_falls",
                                 "bias_occluded_falls", "bias_rare_falls"}
    assert rc == (0 if res["all_gates_pass"] else 1)
    assert res["settings"]["guidance"] == 3.0 and res["settings"]["sample_steps"] == 3
    assert 0 <= res["pointing_accuracy"] <= 1 and res["generation_presence"] in (0.0, 0.5, 1.0)
    assert "| pointing accuracy, toy-test |" in capsys.readouterr().out
    assert "distractors_in_target_colour" in res  # reported next to the gates, never one of them


def test_heatmap_iou():
    from elbo_lib.toy.check import heatmap_iou
    mask = np.zeros((8, 8), dtype=bool); mask[2:4, 2:4] = True
    h = mask.astype(float) * 3 + 1
    assert heatmap_iou(h, mask) == 1.0
    h2 = h.copy(); h2[2:4, 4:6] = 4.0  # as many false positives as true pixels
    assert heatmap_iou(h2, mask) == pytest.approx(0.5)
    assert heatmap_iou(np.ones((8, 8)), mask) == 0.0  # a flat map selects nothing


def test_paired_drop_interval():
    import pandas as pd
    from elbo_lib.evaluation.metrics import paired_drop
    rows = [{"id": f"smaller-{i:03d}-{lvl}", "level": lvl, "iou": 0.8 - 0.2 * lvl + 0.01 * i}
            for i in range(10) for lvl in range(3)]
    d = paired_drop(pd.DataFrame(rows), "iou")
    assert d["n"] == 10 and d["mean"] == pytest.approx(0.4) and d["ci95"][0] == pytest.approx(0.4)
    flat = pd.DataFrame([{"id": f"rare-{i:03d}-{lvl}", "level": lvl, "iou": (-1) ** i * 0.1 * lvl}
                         for i in range(10) for lvl in range(2)])
    d = paired_drop(flat, "iou")
    assert d["ci95"][0] < 0 < d["ci95"][1]  # no systematic drop: the interval straddles 0
    lonely = pd.DataFrame([{"id": "rare-000-0", "level": 0, "iou": 0.5}, {"id": "rare-001-1", "level": 1, "iou": 0.4}])
    with pytest.raises(ValueError, match="no sample has both level 0 and level 1"):
        paired_drop(lonely, "iou")


class _RoundTripVAE(torch.nn.Module):
    """Stands in for a VAE: encode-decode returns the image itself, or a flat grey one."""

    def __init__(self, flat: bool):
        super().__init__()
        self.flat = flat
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def encode(self, x):
        from types import SimpleNamespace
        return SimpleNamespace(latent_dist=SimpleNamespace(mean=x))

    def decode(self, z):
        from types import SimpleNamespace
        return SimpleNamespace(sample=torch.zeros_like(z) if self.flat else z)


def test_generation_ceiling_bounds_follow_the_vae():
    """A lossless round trip scores what the renderer scores; a VAE that erases everything scores 0."""
    from elbo_lib.toy.check import generation_ceiling
    exact = generation_ceiling(_RoundTripVAE(flat=False), n_prompts=12)
    assert exact["vae"] == exact["rendered"] and exact["rendered"] >= 0.5
    erased = generation_ceiling(_RoundTripVAE(flat=True), n_prompts=12)
    assert erased["vae"] == 0.0 and erased["rendered"] == exact["rendered"]
    assert set(exact["vae_by_shape"]) <= set(WorldConfig().common_shapes)


def test_self_attention_locality_extremes():
    """Identity attention is fully local (entropy 0, all mass on the own object); uniform attention has
    entropy fraction 1 and puts exactly the object's area share on it; a bad shape is refused."""
    from elbo_lib.toy.check import self_attention_locality
    inst = np.zeros((8, 8), dtype=np.int64); inst[0:4, 0:4] = 1  # a 2x2-cell object on a 4x4 grid
    ident = self_attention_locality(np.eye(16), inst)
    assert ident["entropy_fraction"] == pytest.approx(0.0, abs=1e-9) and ident["own_object_mass"] == pytest.approx(1.0)
    uni = self_attention_locality(np.ones((16, 16)), inst)
    assert uni["entropy_fraction"] == pytest.approx(1.0) and uni["own_object_mass"] == pytest.approx(4 / 16)
    assert uni["own_object_mass_if_uniform"] == pytest.approx(4 / 16)
    with pytest.raises(ValueError, match="square"):
        self_attention_locality(np.ones((16, 15)), inst)
    with pytest.raises(ValueError, match="multiple"):
        self_attention_locality(np.ones((16, 16)), np.zeros((9, 9), dtype=np.int64))


def test_training_set_cache_is_keyed_by_world_and_seed(tmp_path, monkeypatch):
    import elbo_lib.toy.train as tr
    images, classes = tr.cached_training_set(TINY_WORLD, 6, 0, tmp_path)
    ref_images, ref_classes = tr.render_training_set(TINY_WORLD, 6, 0)
    np.testing.assert_array_equal(images, ref_images)
    assert classes == ref_classes

    def no_render(*a, **k):
        raise AssertionError("rendered again although the cache matches")
    monkeypatch.setattr(tr, "render_training_set", no_render)
    cached_images, cached_classes = tr.cached_training_set(TINY_WORLD, 6, 0, tmp_path)
    np.testing.assert_array_equal(cached_images, ref_images)
    assert cached_classes == ref_classes
    with pytest.raises(AssertionError, match="rendered again"):  # another seed must not reuse the cache
        tr.cached_training_set(TINY_WORLD, 6, 1, tmp_path)


def test_init_from_an_exported_pipeline(tmp_path):
    """``--init-from``: zero UNet steps reproduce the source pipeline's weights exactly; training moves them;
    the source is recorded; a pipeline of another architecture, or a directory that is no pipeline, is refused."""
    import dataclasses
    from safetensors.torch import load_file
    out_a = train(tmp_path / "a", tmp_path / "wa", TINY_TRAIN, TINY_WORLD, TINY_ARCH)
    out_b = train(tmp_path / "b", tmp_path / "wb", dataclasses.replace(TINY_TRAIN, unet_steps=0), TINY_WORLD,
                  TINY_ARCH, init_from=out_a)
    for sub in ("unet", "text_encoder", "vae"):
        fa = next((out_a / sub).glob("*.safetensors"))
        a, b = load_file(fa), load_file(out_b / sub / fa.name)
        assert a.keys() == b.keys()
        for k in a:
            torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)
    meta = json.loads((out_b / "training.json").read_text())
    assert meta["init_from"]["path"] == str(out_a) and meta["init_from"]["unet_steps_done"] == TINY_TRAIN.unet_steps
    out_c = train(tmp_path / "c", tmp_path / "wc", dataclasses.replace(TINY_TRAIN, unet_steps=2), TINY_WORLD,
                  TINY_ARCH, init_from=out_a)
    fa = next((out_a / "unet").glob("*.safetensors"))
    a, c = load_file(fa), load_file(out_c / "unet" / fa.name)
    assert any(not torch.equal(a[k], c[k]) for k in a)
    other = ToyArchitecture(image_size=32, vae_channels=(16, 16), unet_channels=(16, 16, 32), text_width=32)
    with pytest.raises(ValueError, match="architecture differs"):
        train(tmp_path / "d", tmp_path / "wd", TINY_TRAIN, TINY_WORLD, other, init_from=out_a)
    with pytest.raises(ValueError, match="no training.json"):
        train(tmp_path / "e", tmp_path / "we", TINY_TRAIN, TINY_WORLD, TINY_ARCH, init_from=tmp_path / "wa")


def test_v_prediction_model_shares_vae_and_text_encoder(tmp_path):
    """``--share-from`` with ``prediction_type="v_prediction"``: the VAE and text encoder are the source's, bit
    for bit (the text encoder is not trained), the UNet is new, the scheduler predicts v, and the pipeline
    loads with ``StableDiffusionPipeline``."""
    import dataclasses
    from diffusers import StableDiffusionPipeline
    from safetensors.torch import load_file
    out_a = train(tmp_path / "a", tmp_path / "wa", TINY_TRAIN, TINY_WORLD, TINY_ARCH)
    v_arch = dataclasses.replace(TINY_ARCH, prediction_type="v_prediction")
    out_v = train(tmp_path / "v", tmp_path / "wv", dataclasses.replace(TINY_TRAIN, share_from=str(out_a)), TINY_WORLD,
                  v_arch)
    for sub in ("text_encoder", "vae"):
        fa = next((out_a / sub).glob("*.safetensors"))
        a, v = load_file(fa), load_file(out_v / sub / fa.name)
        assert all(torch.equal(a[k], v[k]) for k in a)
    fa = next((out_a / "unet").glob("*.safetensors"))
    assert any(not torch.equal(load_file(fa)[k], load_file(out_v / "unet" / fa.name)[k]) for k in load_file(fa))
    meta = json.loads((out_v / "training.json").read_text())
    assert meta["shared"]["path"] == str(out_a) and meta["arch"]["prediction_type"] == "v_prediction"
    pipe = StableDiffusionPipeline.from_pretrained(out_v)
    assert pipe.scheduler.config.prediction_type == "v_prediction"
    with pytest.raises(ValueError, match="prediction_type"):
        train(tmp_path / "x", tmp_path / "wx", TINY_TRAIN, TINY_WORLD,
              dataclasses.replace(TINY_ARCH, prediction_type="sample"))


def test_mmdit_model_is_an_sd3_pipeline_conditioned_as_it_is_trained(tmp_path):
    """``denoiser="mmdit"``: the VAE and text encoder are the shared pipeline's bit for bit (the pooled projection
    is the identity), the saved directory loads with ``StableDiffusion3Pipeline`` (no T5, SD 3's shifted
    flow-matching scheduler), its denoiser is the trained transformer, and the pipeline generates an image."""
    import dataclasses
    from diffusers import StableDiffusion3Pipeline
    from safetensors.torch import load_file
    from elbo_lib.toy.train import flow_noising
    out_a = train(tmp_path / "a", tmp_path / "wa", TINY_TRAIN, TINY_WORLD, TINY_ARCH)
    arch = dataclasses.replace(TINY_ARCH, denoiser="mmdit", prediction_type="flow_matching", mmdit_layers=2,
                               mmdit_heads=2, mmdit_head_dim=8, t5_tokens=5)
    with pytest.raises(ValueError, match="--share-from"):
        train(tmp_path / "x", tmp_path / "wx", TINY_TRAIN, TINY_WORLD, arch)
    out = train(tmp_path / "m", tmp_path / "wm", dataclasses.replace(TINY_TRAIN, share_from=str(out_a)), TINY_WORLD,
                arch)
    pipe = StableDiffusion3Pipeline.from_pretrained(out, text_encoder_3=None, tokenizer_3=None)  # SD 3 without T5
    assert isinstance(load_pipeline(out, device="cpu"), StableDiffusion3Pipeline)
    assert pipe.text_encoder_3 is None and pipe.scheduler.config.shift == arch.flow_shift
    src = load_file(next((out_a / "text_encoder").glob("*.safetensors")))
    for te in (pipe.text_encoder, pipe.text_encoder_2):
        st = te.text_model.state_dict()
        assert src.keys() <= st.keys() and all(torch.equal(src[k], st[k]) for k in src)
        assert torch.equal(te.text_projection.weight, torch.eye(arch.text_width))
    embeds, _, pooled, _ = pipe.encode_prompt("red circle", "red circle", "red circle", do_classifier_free_guidance=False,
                                              max_sequence_length=arch.t5_tokens)
    assert embeds.shape == (1, arch.max_length + arch.t5_tokens, 2 * arch.text_width)
    img = pipe("red circle", num_inference_steps=2, height=32, width=32, max_sequence_length=arch.t5_tokens,
               output_type="np").images
    assert img.shape == (1, 32, 32, 3) and np.isfinite(img).all()
    # the noising: a sigma of the shifted grid, z between x0 and eps, target eps - x0, timestep 1000 sigma
    z0, eps = torch.randn(64, 4, 2, 2), torch.randn(64, 4, 2, 2)
    sched = type(pipe.scheduler).from_config(pipe.scheduler.config)  # the training grid (sampling rewrote the pipe's)
    zt, t, target = flow_noising(z0, eps, sched, torch.Generator().manual_seed(0))
    sigma = (t / 1000).view(-1, 1, 1, 1)
    torch.testing.assert_close(zt, (1 - sigma) * z0 + sigma * eps)
    torch.testing.assert_close(target, eps - z0)
    assert set(t.tolist()) <= set(sched.timesteps.tolist()) and len(set(t.tolist())) > 10
    with pytest.raises(ValueError, match="prediction_type for the mmdit"):
        dataclasses.replace(arch, prediction_type="epsilon")
