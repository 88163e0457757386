"""Table V's reweighted generation: the weight rule, the prompt syntax, the sampler against diffusers' DDIM,
the batched loop against a naive per-prompt loop of the authors' algorithm, bad inputs, and the authors' GPU
path (the latent drawn on the device, the denoiser under autocast) run on the CPU."""
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from compel import Compel
from diffusers import DDIMScheduler

from elbo_lib import generation as G
from elbo_lib.models import adapter_for

PROMPT = "a red circle and a blue square"
PHRASES = ["a red circle", "a blue square"]


def test_phrase_weights_follow_the_authors_rule():
    assert G.phrase_weights([0.1, 0.3, 0.2]) == [1.0, 1.2, round(1.2 ** 0.5, 2)]
    assert G.phrase_weights([0.5, 0.5]) == [1.0, 1.0]       # 0/0 in their code: no reweighting
    assert G.phrase_weights([0.7]) == [1.0]
    assert G.phrase_weights([0.0, 1.0], strength=2.0) == [1.0, 2.0]
    with pytest.raises(ValueError, match="finite"):
        G.phrase_weights([0.1, float("nan")])
    with pytest.raises(ValueError, match="strength"):
        G.phrase_weights([0.1, 0.2], strength=0)


def test_weighted_prompt_syntax_and_errors():
    assert G.weighted_prompt(PROMPT, PHRASES, [1.2, 1.0]) == "(a red circle)1.2 and (a blue square)1.0"
    assert G.weighted_prompt(PROMPT, PHRASES[::-1], [1.0, 1.2]) == "(a red circle)1.2 and (a blue square)1.0"
    with pytest.raises(ValueError, match="not in the prompt"):
        G.weighted_prompt(PROMPT, ["a green star", "a blue square"], [1.0, 1.0])
    with pytest.raises(ValueError, match=r"\(0, 10"):
        G.weighted_prompt(PROMPT, PHRASES, [1.0, -1.0])
    with pytest.raises(ValueError, match="overlap"):
        G.weighted_prompt(PROMPT, ["a red circle", "circle and"], [1.0, 1.0])
    with pytest.raises(ValueError, match="2 weights for 1"):
        G.weighted_prompt(PROMPT, PHRASES[:1], [1.0, 1.0])


@pytest.mark.parametrize("objective", ["epsilon", "v_prediction", "sample", "flow"])
def test_x0_eps_inverts_every_objective(objective):
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g)
    if objective == "flow":
        s = torch.tensor(0.3); a = 1 - s
        target = eps - x0
    else:
        a = torch.tensor(0.6); s = (1 - a ** 2).sqrt()
        target = {"epsilon": eps, "v_prediction": a * eps - s * x0, "sample": x0}[objective]
    z = a * x0 + s * eps
    x0_hat, eps_hat = G.x0_eps(z, target, objective, a, s)
    torch.testing.assert_close(x0_hat, x0, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(eps_hat, eps, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_ddim_step_equals_diffusers(pipes, prediction_type):
    pipe = pipes["sd1" if prediction_type == "epsilon" else "sd2v"]
    ad = adapter_for(pipe)
    sched = DDIMScheduler.from_config(pipe.scheduler.config)
    sched.set_timesteps(10)
    pairs = G.sampling_grid(ad, 10, "scheduler")
    assert [t for t, _ in pairs] == [int(t) for t in sched.timesteps] and pairs[-1][1] == 0
    g = torch.Generator().manual_seed(0)
    z, pred = torch.randn(1, 4, 16, 16, generator=g), torch.randn(1, 4, 16, 16, generator=g)
    T = ad.num_train_timesteps
    for t, nxt in (pairs[0], pairs[-1]):
        a_t, s_t = ad.alpha_sigma(torch.tensor([t / T], dtype=torch.float64))
        a_n, s_n = ad.alpha_sigma(torch.tensor([nxt / T], dtype=torch.float64))
        ours = G.ddim_step(z, pred, ad.objective, a_t, s_t, a_n, s_n)
        ref = sched.step(pred, t, z, eta=0.0).prev_sample
        torch.testing.assert_close(ours, ref, atol=2e-5, rtol=1e-4)


def test_authors_grid():
    assert G.ddim_timesteps(1000, 50)[:3] == [999, 979, 959] and G.ddim_timesteps(1000, 50)[-1] == 19
    assert len(G.ddim_timesteps(1000, 50)) == 50
    with pytest.raises(ValueError, match="steps"):
        G.ddim_timesteps(1000, 0)


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_compel_without_weights_equals_the_pipeline_encoder(pipes, family):
    pipe = pipes[family]
    w = G.PromptWeighting(pipe)
    ours = w([PROMPT])
    ref = adapter_for(pipe).encode_text([PROMPT])
    torch.testing.assert_close(ours.embeds, ref.embeds, atol=1e-5, rtol=1e-5)
    for k in ref.extra:
        torch.testing.assert_close(ours.extra[k], ref.extra[k], atol=1e-5, rtol=1e-5)
    # a weight changes the embedding of the weighted phrase's tokens only through compel
    assert not torch.equal(w(["(a red circle)1.2 and a blue square"]).embeds, ours.embeds)


def _naive_reweighted(pipe, prompt, phrases, seed, steps, guidance, strength=1.2):
    """The authors' loop for one prompt, one denoiser call per prediction, diffusers' DDIM for the step."""
    ad = adapter_for(pipe)
    compel = Compel(tokenizer=pipe.tokenizer, text_encoder=pipe.text_encoder)
    sched = DDIMScheduler.from_config(pipe.scheduler.config)
    sched.set_timesteps(steps)
    z = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(seed))
    unet = pipe.unet
    with torch.no_grad():
        text, neg = compel(prompt), compel("")
        ph = [compel(p) for p in phrases]
        for t in sched.timesteps:
            pred_all = unet(z, t, encoder_hidden_states=text).sample
            losses = torch.stack([torch.nn.functional.mse_loss(pred_all, unet(z, t, encoder_hidden_states=e).sample)
                                  for e in ph])
            losses = (losses - losses.min()) / (losses.max() - losses.min())
            w = torch.round(torch.pow(strength, losses), decimals=2).tolist()
            wp = G.weighted_prompt(prompt, phrases, [round(x, 2) for x in w])
            c = unet(z, t, encoder_hidden_states=compel(wp)).sample
            u = unet(z, t, encoder_hidden_states=neg).sample
            z = sched.step(u + guidance * (c - u), t, z, eta=0.0).prev_sample
    return G.decode(ad, z)[0]


def test_batched_reweighted_generation_equals_a_naive_loop(pipes):
    pipe = pipes["sd1"]
    prompts = [PROMPT, "a green star, a yellow heart and a purple cross", "a red circle"]
    phrases = [PHRASES, ["a green star", "a yellow heart", "a purple cross"], ["a red circle"]]
    out = G.generate(pipe, prompts, phrases, [3, 4, 5], steps=4, guidance=7.5, grid="scheduler", batch_size=3,
                     progress=False)
    assert out.images.shape == (3, 32, 32, 3) and out.images.dtype == np.uint8
    for k in range(2):
        ref = _naive_reweighted(pipe, prompts[k], phrases[k], [3, 4][k], 4, 7.5)
        assert np.abs(out.images[k].astype(int) - ref.astype(int)).max() <= 1
    assert out.weights[1].shape == (4, 3) and np.allclose(sorted(out.weights[0][0]), [1.0, 1.2])
    # one phrase: plain generation, said in the result; equals the baseline arm for that prompt
    assert out.notes[2] == "fewer than two phrases: plain prompt" and out.weights[2].shape == (4, 0)
    base = G.generate(pipe, prompts[2:], phrases[2:], [5], reweight=False, steps=4, guidance=7.5, grid="scheduler",
                      progress=False)
    assert np.abs(base.images[0].astype(int) - out.images[2].astype(int)).max() <= 1


def test_same_seed_same_images(pipes):
    kw = dict(steps=3, guidance=5.0, grid="scheduler", progress=False)
    a = G.generate(pipes["sd1"], [PROMPT], [PHRASES], [7], **kw)
    b = G.generate(pipes["sd1"], [PROMPT], [PHRASES], [7], **kw)
    assert np.array_equal(a.images, b.images)


def test_generate_bad_inputs(pipes):
    pipe = pipes["sd1"]
    with pytest.raises(TypeError, match="list of strings"):
        G.generate(pipe, PROMPT, [PHRASES], [0], progress=False)
    with pytest.raises(ValueError, match="phrases are required"):
        G.generate(pipe, [PROMPT], None, [0], progress=False)
    with pytest.raises(ValueError, match="one seed per prompt"):
        G.generate(pipe, [PROMPT], [PHRASES], [0, 1], progress=False)
    with pytest.raises(ValueError, match="not in the prompt"):
        G.generate(pipe, [PROMPT], [["a purple heart"]], [0], progress=False)
    with pytest.raises(ValueError, match="elbo_steps"):
        G.generate(pipe, [PROMPT], [PHRASES], [0], steps=4, elbo_steps=5, progress=False)
    with pytest.raises(ValueError, match="grid must be one of"):
        G.generate(pipe, [PROMPT], [PHRASES], [0], steps=4, grid="karras", progress=False)
    with pytest.raises(ValueError, match="SD 1.x / 2.x and SDXL"):
        G.generate(pipes["sd3"], [PROMPT], [PHRASES], [0], progress=False)


def test_authors_gpu_path_runs_on_cpu_with_bf16_autocast(pipes):
    """The GPU run as the authors': the seed's latent drawn on the denoiser's device in its dtype, the denoiser
    under autocast, the VAE in float32. Exercised on the CPU with bfloat16 autocast."""
    pipe = pipes["sd1"]
    ad = adapter_for(pipe)
    assert G.authors_device_options(pipe) == {"noise": "cpu", "autocast": None}  # their autocast is CUDA's
    z = G.initial_latents(ad, [3, 4], noise="device")
    assert z.shape == (2, 4, 16, 16) and z.device == ad.device and z.dtype == ad.dtype
    assert torch.equal(z[1:], torch.randn(1, 4, 16, 16, generator=torch.Generator(ad.device).manual_seed(4),
                                          device=ad.device, dtype=ad.dtype))
    seen = {"unet": set(), "vae": set()}
    hooks = [pipe.unet.register_forward_hook(lambda m, i, o: seen["unet"].add(o.sample.dtype)),
             pipe.vae.decoder.register_forward_pre_hook(lambda m, args: seen["vae"].add(args[0].dtype))]
    kw = dict(steps=3, guidance=7.5, grid="authors", progress=False)
    try:
        fast = G.generate(pipe, [PROMPT], [PHRASES], [7], noise="device", autocast=torch.bfloat16, **kw)
    finally:
        for h in hooks:
            h.remove()
    assert seen == {"unet": {torch.bfloat16}, "vae": {torch.float32}}
    assert fast.images.shape == (1, 32, 32, 3) and fast.images.dtype == np.uint8
    assert fast.latents.dtype == torch.float32 and fast.weights[0].shape == (3, 2)
    plain = G.generate(pipe, [PROMPT], [PHRASES], [7], **kw)
    assert not torch.equal(fast.latents, plain.latents)  # autocast was on
    assert (fast.latents - plain.latents).abs().max() < 0.1 * plain.latents.abs().max()  # bf16 rounding only
    again = G.generate(pipe, [PROMPT], [PHRASES], [7], noise="device", autocast=torch.bfloat16, **kw)
    assert torch.equal(again.latents, fast.latents) and np.array_equal(again.images, fast.images)


def test_authors_device_options_on_cuda(monkeypatch, pipes):
    monkeypatch.setattr(G, "adapter_for", lambda pipe: SimpleNamespace(device=torch.device("cuda", 0)))
    assert G.authors_device_options(pipes["sd1"]) == {"noise": "device", "autocast": torch.float16}


def test_given_initial_latents_and_bad_device_options(pipes):
    pipe = pipes["sd1"]
    kw = dict(steps=2, guidance=7.5, grid="authors", progress=False)
    z = G.initial_latents(adapter_for(pipe), [5, 6])
    a = G.generate(pipe, [PROMPT, PROMPT], [PHRASES, PHRASES], [5, 6], **kw)
    b = G.generate(pipe, [PROMPT, PROMPT], [PHRASES, PHRASES], [0, 0], latents=z, **kw)
    assert np.array_equal(a.images, b.images) and torch.equal(a.latents, b.latents)
    with pytest.raises(ValueError, match=r"latents must be a tensor of shape \(2, 4, 16, 16\)"):
        G.generate(pipe, [PROMPT, PROMPT], [PHRASES, PHRASES], [0, 0], latents=z[:1], **kw)
    with pytest.raises(ValueError, match="noise must be one of"):
        G.generate(pipe, [PROMPT], [PHRASES], [0], noise="gpu", **kw)
    with pytest.raises(ValueError, match="autocast must be"):
        G.generate(pipe, [PROMPT], [PHRASES], [0], autocast=torch.float64, **kw)
