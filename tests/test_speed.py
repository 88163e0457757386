"""The speed levers (issue 28): the ELBO passes' attention (fused SDPA against the capture path's explicit
probabilities), the denoiser's precision, memory format and compilation, and the options' validation."""
import collections
import time

import numpy as np
import pytest
import torch
from diffusers.models.attention_processor import AttnProcessor

from elbo_lib import AlignConfig, Aligner, speed_up
from elbo_lib.attention import AttentionStore, capture_attention, uncaptured_attention
from elbo_lib.elbo import class_losses, elbo_timesteps, shared_noise
from elbo_lib.models import adapter_for
from elbo_lib.models.random_init import tiny_sd_pipeline, tiny_sdxl_pipeline
from elbo_lib.timing import Levers, PeakMemory, lever_speed, resident_bytes

CAPTURE_PROCESSORS = {"CaptureProcessor", "JointCaptureProcessor", "FluxCaptureProcessor"}
# diffusers' processors that call F.scaled_dot_product_attention (FLUX's through its attention dispatcher)
SDPA_PROCESSORS = {"AttnProcessor2_0", "JointAttnProcessor2_0", "FluxAttnProcessor"}


def _setup(pipe, n_t=3):
    ad = adapter_for(pipe)
    h, w = ad.resolution
    x = torch.rand((1, 3, h, w), generator=torch.Generator().manual_seed(1)) * 2 - 1
    x0 = ad.encode_image(x)
    cond = ad.encode_text(["a photo of a red circle", "a photo of a cat", "a photo of a blue star"])
    t = torch.as_tensor(elbo_timesteps(n_t), dtype=torch.float64)
    eps = shared_noise(x0.shape[1:], n_t, seed=3, device=ad.device, dtype=torch.float32)
    return ad, x0, cond, t, eps


def _processor_spy(denoiser) -> tuple[collections.Counter, list]:
    """Counts the processor class each attention layer runs, per call (a forward pre-hook: nothing is replaced)."""
    seen = collections.Counter()
    handles = [m.register_forward_pre_hook(lambda mod, args: seen.update([type(mod.processor).__name__]))
               for m in denoiser.modules() if hasattr(m, "set_processor")]
    return seen, handles


def test_elbo_on_sdpa_equals_the_capture_path(family_pipe):
    """The ELBO passes run on fused SDPA by default, give the capture path's losses to fp32 tolerance, and leave
    the pipeline's processors as they were; the same seed gives the same losses."""
    name, pipe = family_pipe
    ad, x0, cond, t, eps = _setup(pipe)
    before = dict(ad.denoiser.attn_processors)
    seen, handles = _processor_spy(ad.denoiser)
    try:
        fused = class_losses(ad, x0, cond, t, eps, batch_size=4)
        assert seen and set(seen) <= SDPA_PROCESSORS, (name, seen)
        seen.clear()
        explicit = class_losses(ad, x0, cond, t, eps, batch_size=4, attention="explicit")
        assert seen and set(seen) <= CAPTURE_PROCESSORS, (name, seen)
    finally:
        for h in handles:
            h.remove()
    torch.testing.assert_close(fused, explicit, rtol=1e-5, atol=1e-7)
    assert all(ad.denoiser.attn_processors[n] is p for n, p in before.items())
    assert torch.equal(fused, class_losses(ad, x0, cond, t, eps, batch_size=4))


@pytest.mark.parametrize("make", [tiny_sd_pipeline, tiny_sdxl_pipeline], ids=["sd15-layout", "sdxl-layout"])
def test_sdpa_replaces_classic_processors_for_the_elbo_passes(make):
    """A pipeline left on diffusers' classic AttnProcessor (probabilities in Python) gets the fused processor for
    the ELBO passes only, with the classic path's losses to fp32 tolerance; its processors are restored."""
    pipe = make()
    ad, x0, cond, t, eps = _setup(pipe)
    ad.denoiser.set_attn_processor(AttnProcessor())
    classic = dict(ad.denoiser.attn_processors)
    seen, handles = _processor_spy(ad.denoiser)
    try:
        with torch.no_grad():
            ref = ad.predict(shared_noise(x0.shape[1:], 1, 0, "cpu", torch.float32), t[:1], cond.index(torch.tensor([0])))
        assert set(seen) == {"AttnProcessor"}
        seen.clear()
        fused = class_losses(ad, x0, cond, t, eps)
        assert set(seen) == {"AttnProcessor2_0"}
    finally:
        for h in handles:
            h.remove()
    assert all(ad.denoiser.attn_processors[n] is p for n, p in classic.items())
    assert torch.isfinite(ref).all()
    torch.testing.assert_close(fused, class_losses(ad, x0, cond, t, eps, attention="explicit"), rtol=1e-5, atol=1e-7)


def test_aligner_elbo_attention_option(pipes):
    """AlignConfig.elbo_attention reaches the ELBO passes; the attention passes are the same either way."""
    image = (np.random.default_rng(0).random((32, 32, 3)) * 255).astype(np.uint8)
    kw = dict(elbo_steps=3, attention_steps=2)
    fused = Aligner(pipes["sd1"], **kw).measure(image, ["red circle", "cat"], seed=0)
    explicit = Aligner(pipes["sd1"], elbo_attention="explicit", **kw).measure(image, ["red circle", "cat"], seed=0)
    torch.testing.assert_close(fused.elbo, explicit.elbo, rtol=1e-5, atol=1e-7)
    assert torch.equal(fused.cross, explicit.cross)
    assert AlignConfig(elbo_attention="explicit").measurement_key() == AlignConfig().measurement_key()


@pytest.mark.parametrize("kw,match", [
    (dict(elbo_attention="flash"), r"elbo_attention must be one of \('sdpa', 'explicit'\), got 'flash'"),
    (dict(batch_size=0), "batch_size must be a whole number >= 1"),
    (dict(batch_size=2.5), "batch_size must be a whole number >= 1"),
    (dict(batch_size=True), "batch_size must be a whole number >= 1"),
])
def test_config_speed_options_validated(kw, match):
    with pytest.raises(ValueError, match=match):
        AlignConfig(**kw)


def test_speed_options_validated(pipes):
    pipe = pipes["sd1"]
    ad, x0, cond, t, eps = _setup(pipe)
    with pytest.raises(ValueError, match=r"must be one of \('sdpa', 'explicit'\), got 'fast'"):
        class_losses(ad, x0, cond, t, eps, attention="fast")
    with pytest.raises(ValueError, match=r"precision must be one of \['fp32', 'fp16', 'bf16'\]"):
        speed_up(pipe, dtype="fp8")
    with pytest.raises(ValueError, match=r"precision must be one of"):
        speed_up(pipe, dtype=torch.int8)
    with pytest.raises(ValueError, match=r"compile must be True, False, None or one of \('default'"):
        speed_up(pipe, compile="fastest")
    with pytest.raises(ValueError, match="channels_last must be True or False, got 'yes'"):
        speed_up(pipe, channels_last="yes")
    assert adapter_for(pipe).dtype == torch.float32  # a refused call changed nothing


def test_precision_and_channels_last_dtypes_and_formats():
    """bf16 + channels_last: denoiser and text encoder in bf16, the VAE in float32, the denoiser's 4-D weights
    and its activations in NHWC; the ELBO still runs and returns float32 losses."""
    pipe = speed_up(tiny_sd_pipeline(), dtype="bf16", channels_last=True)
    ad = adapter_for(pipe)
    assert {p.dtype for p in pipe.unet.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in pipe.text_encoder.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in pipe.vae.parameters()} == {torch.float32}
    convs = [p for p in pipe.unet.parameters() if p.ndim == 4]
    assert convs and all(p.is_contiguous(memory_format=torch.channels_last) for p in convs)
    assert not all(p.is_contiguous() for p in convs)  # NHWC is not the default layout for these shapes
    formats = []
    handle = pipe.unet.conv_out.register_forward_hook(
        lambda m, i, o: formats.append((i[0].is_contiguous(memory_format=torch.channels_last), o.dtype)))
    try:
        _, x0, cond, t, eps = _setup(pipe)
        assert x0.dtype == torch.bfloat16 and cond.embeds.dtype == torch.bfloat16
        losses = class_losses(ad, x0, cond, t, eps)
    finally:
        handle.remove()
    assert formats and all(f == (True, torch.bfloat16) for f in formats)
    assert losses.dtype == torch.float32 and losses.shape == (3, 3) and torch.isfinite(losses).all()
    assert speed_up(pipe, dtype=torch.float32) is pipe and ad.dtype == torch.float32


def test_channels_last_changes_losses_by_float_noise_only(pipes):
    ad, x0, cond, t, eps = _setup(pipes["sd1"])
    ref = class_losses(ad, x0, cond, t, eps)
    pipe = speed_up(tiny_sd_pipeline(), channels_last=True)
    ad2, x0b, cond2, _, _ = _setup(pipe)
    torch.testing.assert_close(class_losses(ad2, x0b, cond2, t, eps), ref, rtol=1e-5, atol=1e-7)


def test_compile_marks_the_denoiser_and_capture_runs_eagerly(monkeypatch):
    """``speed_up(compile=...)`` compiles the denoiser in place; on a compiled denoiser the capture passes run its
    Python code (not a traced graph: their processors record as they run), and give the uncompiled capture's maps."""
    tracing = []
    add_cross = AttentionStore.add_cross
    monkeypatch.setattr(AttentionStore, "add_cross",
                        lambda self, *a: (tracing.append(torch.compiler.is_compiling()), add_cross(self, *a))[1])
    pipe = tiny_sd_pipeline()
    ad = adapter_for(pipe)
    z = torch.randn((2, 4, 16, 16), generator=torch.Generator().manual_seed(0))
    t = torch.tensor([0.05, 0.5], dtype=torch.float64)
    cond = ad.encode_text(["a photo of a red circle and a cat"] * 2)
    with torch.no_grad(), capture_attention(ad.denoiser, (16, 16)) as ref:
        ad.predict(z, t, cond)
    assert speed_up(pipe, compile=True).unet._compiled_call_impl is not None
    ad.denoiser.compile(backend="eager")  # the same in-place wrapper, without the C++ toolchain inductor needs
    with torch.no_grad():
        with uncaptured_attention(ad.denoiser, "sdpa"):
            ad.predict(z, t, cond)
        with capture_attention(ad.denoiser, (16, 16)) as store:
            ad.predict(z, t, cond)
    assert tracing and not any(tracing)
    assert store.cross.keys() == ref.cross.keys()
    for k in ref.cross:
        torch.testing.assert_close(store.cross[k], ref.cross[k])


def test_lever_specs():
    base = Levers("fp32")
    assert base.with_spec("bf16+channels_last+batch=128") == Levers("bf16", True, False, "sdpa", 128)
    assert base.with_spec("compile+explicit").compile and base.with_spec("explicit").elbo_attention == "explicit"
    with pytest.raises(ValueError, match=r"unknown lever 'fp8' in 'fp8\+compile'; levers: fp32 \| fp16"):
        base.with_spec("fp8+compile")
    with pytest.raises(ValueError, match="batch_size must be a whole number >= 1"):
        base.with_spec("batch=0")
    with pytest.raises(ValueError, match="unknown lever 'batch=-1'"):
        base.with_spec("batch=-1")
    with pytest.raises(ValueError, match="lever dtype must be a name"):
        Levers(torch.float16)


def test_peak_memory_sees_a_cpu_allocation():
    with PeakMemory("cpu") as small:
        torch.ones(1000)
    with PeakMemory("cpu") as big:
        x = torch.ones(64 * 2**20 // 4)  # 64 MiB, written so that its pages are resident
        time.sleep(0.02)  # at least one sample while it is held
        del x
    assert big.peak >= 48 * 2**20 > small.peak


def test_lever_speed_reports_each_setting_against_the_baseline():
    image = (np.random.default_rng(0).random((32, 32, 3)) * 255).astype(np.uint8)
    base = Levers("fp32", batch_size=4)
    variants = {"baseline": base, "explicit": base.with_spec("explicit"), "bf16": base.with_spec("bf16")}
    df = lever_speed(tiny_sd_pipeline, variants, ["red circle", "cat"], image, elbo_steps=2, repeats=1, device="cpu")
    assert list(df["levers"]) == list(variants)
    row = df.set_index("levers")
    assert row.loc["baseline", "speedup"] == 1.0 and row.loc["baseline", "elbo_rel_diff"] == 0.0
    assert row.loc["explicit", "elbo_rel_diff"] < 1e-5 and row.loc["explicit", "cross_abs_diff"] == 0.0
    assert row.loc["bf16", "elbo_rel_diff"] > 1e-5  # bf16 rounding moves the losses beyond float32 noise
    assert (df["peak_gib"] > 0).all()
    pipe = tiny_sd_pipeline()
    fp32, vae = resident_bytes(pipe), sum(t.numel() * 4 for t in pipe.vae.state_dict().values())
    bf16 = resident_bytes(speed_up(pipe, "bf16"))  # halved but for the float32 VAE (and integer buffers)
    assert vae + (fp32 - vae) / 2 <= bf16 < fp32
    assert (df[["warmup_s", "s_per_image", "attention_s"]] > 0).all().all()  # timings: no order asserted (shared CPU)


def test_measurement_cache_is_keyed_by_the_denoisers_precision(tmp_path):
    """An fp16 / bf16 run and a float32 run on one cache directory never read each other's measurements; float32
    keeps the key it always had (existing caches stay valid)."""
    from elbo_lib.datasets import get_dataset
    from elbo_lib.evaluation import measure_dataset
    from elbo_lib.evaluation.cache import measurement_caches
    from elbo_lib.models import denoiser_dtype

    cfg = AlignConfig(elbo_steps=2, attention_steps=2)
    dirs = {d: measurement_caches(tmp_path, "m", cfg, 0, dtype=d)[0].dir for d in (None, torch.float32, torch.bfloat16)}
    assert dirs[None] == dirs[torch.float32] != dirs[torch.bfloat16]
    pipe = tiny_sd_pipeline()
    assert denoiser_dtype("m", "cpu") == torch.float32 and denoiser_dtype("m", pipe=pipe) == torch.float32
    ds = get_dataset("toy-test")
    fp32 = [m for _, m in measure_dataset("m", ds, cfg, 0, 1, cache_dir=tmp_path, pipe=pipe)]
    low = speed_up(tiny_sd_pipeline(), dtype="bf16")
    assert denoiser_dtype("m", pipe=low) == torch.bfloat16
    bf16 = [m for _, m in measure_dataset("m", ds, cfg, 0, 1, cache_dir=tmp_path, pipe=low)]
    assert not torch.equal(bf16[0].elbo, fp32[0].elbo)  # measured again in bf16, not read from the fp32 entry
    again = [m for _, m in measure_dataset("m", ds, cfg, 0, 1, cache_dir=tmp_path, pipe=None)]  # fp32 on the CPU
    assert torch.equal(again[0].elbo, fp32[0].elbo)  # read back: "m" is not a pipeline, nothing could be loaded
