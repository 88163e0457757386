"""DAAM and OVAM against their own code, and their layer rules.

``tests/fixtures/parity/daam/`` holds the ``daam`` package's (0.2.0) word heat maps and ``.../ovam/`` the
official OVAM's (vpulab/ovam) maps for the first 10 toy-test images on ``data/toy-sd``, with the exact inputs
(see each README). The project's baselines, measured as the Table II harness measures them (seed 0, the
paper's 10 attention timesteps), must reproduce every map to 1e-3.
"""
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from elbo_lib import Aligner, load_pipeline
from elbo_lib.ablations import paper_config
from elbo_lib.aligner import Noise
from elbo_lib.baselines import get_baseline
from elbo_lib.baselines.daam import contributing_layers, expand_as, is_daam_layer, spatial_factor, token_maps
from elbo_lib.baselines.ovam import attribution_embedding, maxnorm, ovam_layer_filter
from elbo_lib.datasets import get_dataset
from elbo_lib.models.random_init import tiny_sd_pipeline
from elbo_lib.tokens import token_positions
from test_parity import FIXTURES, REPO, _pipeline, _toy_weights_mismatch

TOL = 1e-3


def _spec(name: str) -> tuple[dict, dict]:
    root = FIXTURES / name
    return json.loads((root / "inputs.json").read_text()), load_file(root / "heatmaps.safetensors")


@pytest.fixture(scope="module")
def toy():
    mismatch = _toy_weights_mismatch()
    if mismatch:
        pytest.skip(f"the baseline parity fixtures are keyed to other toy weights: {mismatch}")
    pipe = load_pipeline(REPO / "data" / "toy-sd", device="cpu")
    return pipe, get_dataset("toy-test")


def _run(name: str, toy):
    """(spec, reference maps, aligner, config, [(image spec, sample, measurement, heatmaps)])."""
    pipe, ds = toy
    spec, ref = _spec(name.lower())
    b = get_baseline(name)
    cfg = dataclasses.replace(paper_config(REPO / "data" / "toy-sd"), **b.measure_overrides)
    al = Aligner(pipe, cfg)
    rows = []
    for im in spec["images"]:
        s = ds.load(im["index"])
        m = b.measure(al, s.image, ds.phrases(s.class_ids), im["caption"], 0, cfg)
        rows.append((im, s, m, b.heatmaps(m, cfg)))
    return spec, ref, al, cfg, rows


@pytest.fixture(scope="module")
def daam_run(toy):
    return _run("DAAM", toy)


@pytest.fixture(scope="module")
def ovam_run(toy):
    return _run("OVAM", toy)


def _check_inputs(spec, al, cfg, rows):
    """The images, latents, noise and timesteps are the fixture's."""
    noise = Noise.draw((4, 16, 16), cfg.attention_steps, cfg.elbo_steps, seed=0, rule=cfg.noise).attention
    for im, s, m, _ in rows:
        assert s.id == im["id"] and m.classes == im["classes"]
        x0, _ = al.encode(s.image, cfg)
        np.testing.assert_allclose([x0.double().sum().item(), x0.double().abs().sum().item()],
                                   [im["latent_checksum"]["sum"], im["latent_checksum"]["abs_sum"]], rtol=1e-5)
        np.testing.assert_allclose([noise.double().sum().item(), noise.double().abs().sum().item()],
                                   [im["attention_noise_checksum"]["sum"], im["attention_noise_checksum"]["abs_sum"]],
                                   rtol=1e-9)
    assert np.array_equal(np.round(rows[0][2].attention_t * 1000).astype(int), spec["timesteps"]["unet_timestep"])


def _max_diffs(ref, rows) -> dict[str, float]:
    out = {}
    for im, _, _, h in rows:
        for k, key in enumerate(im["keys"]):
            assert h[k].shape == tuple(ref[key].shape)
            out[key] = float(np.abs(h[k] - ref[key].numpy()).max())
    return out


def test_daam_inputs_and_tokens(daam_run):
    spec, ref, al, cfg, rows = daam_run
    _check_inputs(spec, al, cfg, rows)
    for im, _, m, _ in rows:
        assert list(al.adapter.tokenizer(im["caption"], padding="max_length").input_ids) == im["caption_input_ids"]
        # daam merges every occurrence of the phrase's tokens, +1 for the start token
        want = [im["token_merge_indices"][c] for c in im["classes"]]
        assert al.class_tokens(im["caption"], im["classes"], cfg) == want


def test_daam_matches_the_daam_package(daam_run):
    spec, ref, al, cfg, rows = daam_run
    diffs = _max_diffs(ref, rows)
    assert len(diffs) == len(ref) == 24
    assert max(diffs.values()) <= TOL, {k: v for k, v in diffs.items() if v > TOL}


@torch.no_grad()
def test_daam_layers_are_the_package_s(daam_run):
    """The layers that contribute, and their factors, are the ones daam hooked; the mid block is not among them."""
    spec, ref, al, cfg, rows = daam_run
    x0, _ = al.encode(rows[0][1].image, cfg)
    store = next(al.attention_passes(x0, rows[0][0]["caption"], torch.tensor([0.1], dtype=torch.float64), 0, cfg,
                                     self_attn=False, per_head=True, layer_filter=is_daam_layer))
    got = {n.removesuffix(".processor"): f for n, f in contributing_layers(store.head_sums, (16, 16)).items()}
    assert got == {d["module"]: d["factor"] for d in spec["hooked_layers"]}
    assert {a.shape[0] for a in store.head_sums.values()} == {d["heads"] for d in spec["hooked_layers"]}
    assert not any(is_daam_layer(d["module"] + ".processor") for d in spec["excluded_layers"])


def test_ovam_inputs_and_tokens(ovam_run):
    spec, ref, al, cfg, rows = ovam_run
    _check_inputs(spec, al, cfg, rows)
    ad = al.adapter
    for im, _, _, _ in rows:
        for c in im["classes"]:
            prompt = cfg.elbo_template.format(c)
            assert prompt == im["attribution_prompts"][c]
            assert list(ad.tokenizer(prompt).input_ids) == im["attribution_input_ids"][c]
            assert token_positions(ad.tokenizer, prompt, c) == im["phrase_token_positions"][c]


def test_ovam_matches_the_official_code(ovam_run):
    spec, ref, al, cfg, rows = ovam_run
    diffs = _max_diffs(ref, rows)
    assert len(diffs) == len(ref) == 24
    assert max(diffs.values()) <= TOL, {k: v for k, v in diffs.items() if v > TOL}
    for _, _, _, h in rows:  # OVAM's evaluation divides by the max: every map peaks at exactly 1
        np.testing.assert_allclose(h.max(axis=(1, 2)), 1.0, rtol=0, atol=1e-12)


def test_ovam_layers_are_the_official_code_s(ovam_run, toy):
    spec, ref, al, cfg, rows = ovam_run
    unet = toy[0].unet
    located = ovam_layer_filter(unet)
    got = {n.removesuffix(".processor") for n in unet.attn_processors if located(n)}
    assert got == {d["module"] for d in spec["hooked_layers"]}
    assert not any(located(d["module"] + ".processor") for d in spec["excluded_layers"])


def test_ovam_reads_the_unconditional_branch(toy):
    """The caption does not enter OVAM's maps (its queries are the unconditional pass's)."""
    pipe, ds = toy
    b = get_baseline("OVAM")
    cfg = dataclasses.replace(paper_config(REPO / "data" / "toy-sd"), **b.measure_overrides)
    al = Aligner(pipe, cfg)
    s = ds.load(1)
    ph = ds.phrases(s.class_ids)
    a = b.measure(al, s.image, ph, "a purple square", 0, cfg)
    c = b.measure(al, s.image, ph, s.caption, 0, cfg)
    torch.testing.assert_close(a.cross, c.cross, rtol=0, atol=0)


@torch.no_grad()
def test_ovam_attribution_embedding_is_the_unpadded_encoding(toy):
    """The padded encoding cut to the prompt's own tokens equals the text encoder on the unpadded tokens."""
    pipe, _ = toy
    ad = Aligner(pipe).adapter
    prompt = "a photo of a purple square"
    ids = ad.tokenizer(prompt, return_tensors="pt")
    direct = pipe.text_encoder(ids.input_ids, attention_mask=ids.attention_mask)[0]
    got = attribution_embedding(ad, prompt)
    assert got.shape == direct.shape == (1, 8, direct.shape[-1])
    torch.testing.assert_close(got, direct, rtol=0, atol=1e-5)


# ---- the layer rules on SD 1.5's layout ------------------------------------------------------------------------

@torch.no_grad()
def test_daam_layer_rule_on_tiny_sd15():
    """On SD 1.5's layout (the tiny SD 1.5: cross-attention at 32, 16, 8 | mid 4 | 8, 16, 32 on a 32x32 latent),
    DAAM reads the down and up blocks' layers at factors 1, 2, 4; the mid block, the one map of factor 8, never
    contributes."""
    pipe = _pipeline({"model": "tiny-sd15"})
    cfg = dataclasses.replace(paper_config(FIXTURES / "tiny-sd15"), **get_baseline("DAAM").measure_overrides)
    al = Aligner(pipe, cfg)
    x0, _ = al.encode(np.zeros((64, 64, 3), np.uint8), cfg)
    latent_hw = tuple(x0.shape[-2:])
    assert latent_hw == (32, 32)
    store = next(al.attention_passes(x0, "a cat", torch.tensor([0.1], dtype=torch.float64), 0, cfg,
                                     self_attn=False, per_head=True, layer_filter=is_daam_layer))
    got = {n.split(".attentions")[0]: f for n, f in contributing_layers(store.head_sums, latent_hw).items()}
    assert got == {"down_blocks.0": 1, "down_blocks.1": 2, "down_blocks.2": 4,
                   "up_blocks.1": 4, "up_blocks.2": 2, "up_blocks.3": 1}
    heads = {n: pipe.unet.get_submodule(n.removesuffix('.processor')).heads for n in store.head_sums}
    assert len(store.head_sums) == 9 and all(a.shape[0] == heads[n] for n, a in store.head_sums.items())
    mid = [n for n in pipe.unet.attn_processors if n.startswith("mid_block") and ".attn2." in n]
    assert mid and not any(is_daam_layer(n) for n in mid)
    assert spatial_factor(4 * 4, latent_hw) == 8  # the mid block's map: factor 8, which daam's hooker also skips


def test_daam_factor_rule():
    """Maps of factor 8, or of a factor outside daam's set, do not contribute, wherever they are."""
    name = "up_blocks.{}.attentions.0.transformer_blocks.0.attn2.processor"
    sums = {name.format(0): torch.rand(2, 64 * 64, 5), name.format(1): torch.rand(2, 8 * 8, 5),
            name.format(2): torch.rand(2, 21 * 21, 5)}
    assert [spatial_factor(a.shape[1], (64, 64)) for a in sums.values()] == [1, 8, 3]
    assert contributing_layers(sums, (64, 64)) == {name.format(0): 1}
    with pytest.raises(ValueError, match="not one of daam's layers"):
        contributing_layers({"mid_block.attentions.0.transformer_blocks.0.attn2.processor": sums[name.format(0)]},
                            (64, 64))


def test_daam_aggregation_formula():
    """mean over (layer, head) of clamp0(bicubic(sum_t A)); expand_as: bicubic, then (m - min) / (max - min + 1e-8)."""
    torch.manual_seed(0)
    fine = torch.rand(3, 16, 4)   # (heads, 4x4, tokens)
    coarse = torch.zeros(3, 4, 4)  # a 2x2 layer with one hot pixel: bicubic undershoots below 0 next to it
    coarse[:, 0] = 1.0
    sums = {"down_blocks.0.attentions.0.transformer_blocks.0.attn2.processor": fine,
            "up_blocks.0.attentions.0.transformer_blocks.0.attn2.processor": coarse}
    got = token_maps(sums, (4, 4))
    up = F.interpolate(coarse.transpose(1, 2).reshape(12, 1, 2, 2), size=(4, 4), mode="bicubic", align_corners=False)
    assert up.min() < 0  # the clamp matters here
    want = torch.cat([fine.transpose(1, 2).reshape(3, 4, 4, 4), up.clamp(min=0).reshape(3, 4, 4, 4)]).mean(0)
    torch.testing.assert_close(got, want)
    m = torch.rand(2, 4, 4)
    big = F.interpolate(m[None], size=(8, 8), mode="bicubic", align_corners=False)[0]
    lo, hi = big.amin((1, 2), keepdim=True), big.amax((1, 2), keepdim=True)
    torch.testing.assert_close(expand_as(m, (8, 8)), (big - lo) / (hi - lo + 1e-8))
    assert float(expand_as(torch.ones(1, 4, 4), (8, 8)).abs().max()) == 0  # a flat map: 0, not NaN


def test_ovam_layer_rule():
    """OVAM locates the up blocks and every down block but the last (its names come from
    range(1, len(down_blocks))), never the mid block: on SD 1.5's layout the last down block has no
    cross-attention, so all six down/up levels count; on a UNet whose last down block has it, that one is missed."""
    sd15 = _pipeline({"model": "tiny-sd15"}).unet
    located = ovam_layer_filter(sd15)
    levels = {n.split(".attentions")[0] for n in sd15.attn_processors if located(n)}
    assert levels == {"down_blocks.0", "down_blocks.1", "down_blocks.2", "up_blocks.1", "up_blocks.2", "up_blocks.3"}
    two = tiny_sd_pipeline().unet  # down blocks: 2, both with cross-attention
    located = ovam_layer_filter(two)
    levels = {n.split(".attentions")[0] for n in two.attn_processors if located(n)}
    assert levels == {"down_blocks.0", "up_blocks.0", "up_blocks.1"}


def test_ovam_maxnorm():
    m = torch.tensor([[[0.5, 2.0], [1.0, 0.0]]], dtype=torch.float64)
    torch.testing.assert_close(maxnorm(m), m / 2)
    with pytest.raises(ValueError, match="no positive value"):
        maxnorm(torch.zeros(1, 2, 2))
