"""Table V's reweighted sampler against the authors' own ``run_generation.py``, step by step.

``tests/fixtures/parity/generation/`` holds their sampler's outputs on four cases (see its README.md): the tiny
SD 1.5 layout of ``tests/fixtures/parity/tiny-sd15`` and ``data/toy-sd``, 10 steps on their grid. Given the same
initial latent, :func:`elbo_lib.generation.generate` with ``grid="authors"`` must choose the same phrase weights
at every step and land on the same latents and images up to float rounding (tolerances measured in the README:
about 10x the change from 1 to 2 threads).
"""
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline
from safetensors.torch import load_file

from elbo_lib import generation as G
from elbo_lib.models import adapter_for, load_pipeline

PARITY = Path(__file__).parent / "fixtures" / "parity"
FIXTURES = PARITY / "generation"
REPO = Path(__file__).resolve().parents[1]
CASES = json.loads((FIXTURES / "cases.json").read_text())


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else "missing"


def _weights_mismatch(root: Path, spec: dict) -> str | None:
    want = {**{f"{k}/diffusion_pytorch_model.safetensors": v for k, v in spec["model_files_sha256"].items()},
            "text_encoder/model.safetensors": spec["text_encoder_sha256"]}
    for rel, digest in want.items():
        got = _sha(root / rel)
        if got != digest:
            return f"{root.name}/{rel} is {got[:12]}, the reference was made with {digest[:12]}"
    return None


def _pipeline(spec: dict):
    if spec["pipeline"] == "tiny-sd15":
        root = PARITY / "tiny-sd15"
        assert _weights_mismatch(root, spec) is None, _weights_mismatch(root, spec)
        pipe = StableDiffusionPipeline.from_pretrained(root, safety_checker=None, requires_safety_checker=False)
    else:
        root = REPO / "data" / "toy-sd"
        mismatch = _weights_mismatch(root, spec)
        if mismatch:
            pytest.skip(f"{spec['case']} is keyed to other toy weights: {mismatch}")
        pipe = load_pipeline(root, device="cpu")
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module", params=CASES)
def case(request):
    spec = json.loads((FIXTURES / f"{request.param}.json").read_text())
    ref = load_file(FIXTURES / f"{request.param}.safetensors")
    pipe = _pipeline(spec)
    st = spec["settings"]
    assert (st["elbo_timesteps"], st["negative_prompt"], st["dtype"]) == (50, "", "float32")
    out = G.generate(pipe, [spec["prompt"]], [spec["phrases"]], [spec["seed"]], steps=st["infer_timesteps"],
                     guidance=st["guidance_scale"], strength=st["elbo_strength"], grid="authors",
                     latents=ref["initial_latent"], keep_trajectory=True, progress=False)
    return spec, ref, pipe, out


def test_grid_and_initial_latent(case):
    """Their timesteps and step targets; their seeded draw, bit for bit."""
    spec, ref, pipe, out = case
    ad = adapter_for(pipe)
    pairs = G.sampling_grid(ad, spec["settings"]["infer_timesteps"], "authors")
    assert [t for t, _ in pairs] == spec["timesteps"] == ref["timesteps"].tolist()
    assert [n for _, n in pairs] == spec["next_timesteps"] == ref["next_timesteps"].tolist()
    assert torch.equal(G.initial_latents(ad, [spec["seed"]]), ref["initial_latent"])


def test_weights_at_every_step(case):
    """The weights as numbers, exactly (their floats come from float32 ``.tolist()``: 1.2000000476837158)."""
    spec, ref, pipe, out = case
    assert out.weights[0].dtype == np.float32 and out.weights[0].shape == tuple(ref["weights"].shape)
    assert out.weights[0].tolist() == spec["weights"]
    assert np.array_equal(out.weights[0], ref["weights"].numpy())
    # the weighted prompt of each step, spelled with their float32 weights, is the text their compel received
    for k, text in enumerate(spec["weight_prompts"]):
        assert G.weighted_prompt(spec["prompt"], spec["phrases"], out.weights[0][k].tolist()) == text


def test_losses(case):
    """Where a divergence would start: the per-phrase losses, rtol as the README measures."""
    spec, ref, pipe, out = case
    rtol = spec["suggested_tolerance"]["losses_rtol"]
    np.testing.assert_allclose(out.losses[0], ref["losses"].numpy(), rtol=rtol, atol=0)


def test_latents_at_every_step(case):
    spec, ref, pipe, out = case
    atol = spec["suggested_tolerance"]["latent_atol"]
    assert out.trajectory.shape == ref["latents"].shape
    per_step = (out.trajectory - ref["latents"]).abs().flatten(1).amax(1)
    assert (per_step <= atol).all(), f"max |dz| per step {per_step.tolist()} > {atol}"
    assert torch.equal(out.trajectory[-1], out.latents)
    assert (out.latents - ref["final_latent"]).abs().max().item() <= atol


def test_decoded_image(case):
    spec, ref, pipe, out = case
    tol = spec["suggested_tolerance"]
    diff = np.abs(out.images[0].astype(int) - ref["image"].numpy().astype(int))
    assert out.images[0].shape == tuple(ref["image"].shape) and out.images.dtype == np.uint8
    assert diff.max() <= tol["image_max_abs"]
    assert (diff > 0).mean() <= tol["image_max_frac_differing"]
