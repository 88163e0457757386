import numpy as np
import pytest
import torch
from PIL import Image

import elbo_lib
from elbo_lib import AlignConfig, Aligner, finalize
from elbo_lib.elbo import NonFiniteError

FAST = dict(elbo_steps=3, attention_steps=2)


def _img(h=32, w=32, seed=0):
    return (np.random.default_rng(seed).random((h, w, 3)) * 255).astype(np.uint8)


def test_api_shapes_all_families(family_pipe):
    _, pipe = family_pipe
    res = Aligner(pipe, **FAST)(_img(40, 24), ["red circle", "cat"], seed=0)
    assert res.probs.shape == res.heatmaps.shape == res.raw.shape == (2, 40, 24)
    np.testing.assert_allclose(res.probs.sum(0), 1.0, atol=1e-9)
    assert res.heatmaps.min() >= 0 and res.heatmaps.max() <= 1
    assert res.elbo.shape == (2, 3)
    assert ((res.scores >= 1 / 3 - 1e-12) & (res.scores <= 1)).all()
    m = res.mask(0.3)
    assert m.shape == (40, 24) and set(np.unique(m)) <= {0, 1, 2}


def test_determinism(pipes):
    a = Aligner(pipes["sd1"], **FAST)(_img(), ["red circle", "cat"], seed=5)
    b = Aligner(pipes["sd1"], **FAST)(_img(), ["red circle", "cat"], seed=5)
    for k in ("probs", "heatmaps", "raw", "elbo", "scores"):
        np.testing.assert_array_equal(getattr(a, k), getattr(b, k))
    c = Aligner(pipes["sd1"], **FAST)(_img(), ["red circle", "cat"], seed=6)
    assert not np.array_equal(a.elbo, c.elbo)


def test_calibrated_differs_from_raw_exactly_where_score_below_one(pipes):
    res = Aligner(pipes["sd1"], **FAST)(_img(), ["red circle", "cat", "blue star"], seed=0)
    for i, s in enumerate(res.scores):
        if s == 1.0:
            np.testing.assert_array_equal(res.heatmaps[i], res.raw[i])
        else:
            assert not np.allclose(res.heatmaps[i], res.raw[i])
    assert (res.scores < 1).any() and (res.scores == 1).any()


def test_finalize_switches(pipes):
    al = Aligner(pipes["sd1"], **FAST)
    m = al.measure(_img(), ["red circle", "cat"], seed=0)
    off = finalize(m, AlignConfig(calibrate=False))
    np.testing.assert_array_equal(off.heatmaps, off.raw)
    g1 = finalize(m, AlignConfig(gamma=1.0))
    np.testing.assert_array_equal(g1.heatmaps, g1.raw)
    fixed = finalize(m, AlignConfig(fixed_score=0.5))
    np.testing.assert_array_equal(fixed.scores, [0.5, 0.5])
    sub = finalize(m, AlignConfig(), elbo_idx=[0], attention_idx=[1])
    assert sub.elbo.shape == (2, 1)
    np.testing.assert_array_equal(finalize(m, AlignConfig()).heatmaps, al(_img(), ["red circle", "cat"], seed=0).heatmaps)
    st = elbo_lib.Measurement.from_parts(*m.parts())
    np.testing.assert_array_equal(finalize(st, AlignConfig()).heatmaps, finalize(m, AlignConfig()).heatmaps)


def test_single_class_unchanged(pipes):
    res = Aligner(pipes["sd1"], **FAST)(_img(), ["cat"], seed=0)
    assert res.scores.tolist() == [1.0]
    np.testing.assert_array_equal(res.heatmaps, res.raw)
    np.testing.assert_allclose(res.probs, 1.0)


@pytest.mark.parametrize("image", [
    Image.fromarray(_img()[..., 0]),                        # grayscale
    Image.fromarray(np.dstack([_img(), np.full((32, 32), 200, np.uint8)]), "RGBA"),
    _img(20, 50),                                           # non-square
    _img(300, 260),                                         # large
    torch.rand(3, 16, 16),                                  # tensor CHW in [0, 1]
    _img()[..., :1],                                        # (H, W, 1)
])
def test_image_kinds_return_input_size(pipes, image):
    res = Aligner(pipes["sd1"], **FAST)(image, ["cat"], seed=0)
    if isinstance(image, Image.Image):
        assert res.probs.shape[1:] == (image.size[1], image.size[0])
    elif isinstance(image, torch.Tensor):
        assert res.probs.shape[1:] == tuple(image.shape[1:])
    else:
        assert res.probs.shape[1:] == image.shape[:2]


@pytest.mark.parametrize("image,err,match", [
    (_img(6, 30), ValueError, "smallest usable side"),
    ("photo.png", TypeError, "open it first"),
    ([1, 2, 3], TypeError, "expected an image"),
    (np.zeros((4, 4, 5, 2)), ValueError, "shape"),
    (np.full((16, 16, 3), np.nan), ValueError, "NaN"),
    (np.full((16, 16, 3), 3.0), ValueError, r"\[0, 1\]"),
])
def test_bad_images(pipes, image, err, match):
    with pytest.raises(err, match=match):
        Aligner(pipes["sd1"], **FAST)(image, ["cat"])


def test_bad_classes(pipes):
    al = Aligner(pipes["sd1"], **FAST)
    with pytest.raises(ValueError, match="empty"):
        al(_img(), [])
    with pytest.raises(TypeError, match="list of phrases"):
        al(_img(), "cat")
    with pytest.raises(ValueError, match="does not appear"):
        al(_img(), ["cat"], caption="a photo of a dog")


def test_classes_sharing_a_word(pipes):
    """Two dataset classes may share a word (ADE20K ids 131 "screen" and 142 "crt screen" -> "screen" in the
    project's names): the set is accepted, the copies get the same heatmap and the mask gives them to the first."""
    res = Aligner(pipes["sd1"], **FAST)(_img(), ["screen", "cat", "screen"], seed=0)
    assert res.caption == "a photo of screen, cat, screen"
    np.testing.assert_array_equal(res.heatmaps[0], res.heatmaps[2])
    np.testing.assert_array_equal(res.elbo[0], res.elbo[2])
    assert 3 not in np.unique(res.mask(0.0))


def test_bad_config():
    with pytest.raises(ValueError, match="gamma"):
        AlignConfig(gamma=0)
    with pytest.raises(ValueError, match="strategy"):
        AlignConfig(elbo_strategy="nope")
    with pytest.raises(ValueError, match="'{}'"):
        AlignConfig(elbo_template="a photo")


def test_nan_from_denoiser_is_an_error(pipes, monkeypatch):
    al = Aligner(pipes["sd1"], **FAST)
    orig = al.adapter.predict
    monkeypatch.setattr(al.adapter, "predict", lambda *a, **k: orig(*a, **k) * float("nan"))
    with pytest.raises(NonFiniteError, match="float32"):
        al(_img(), ["cat"])


def test_unsupported_pipeline():
    class FancyPipeline:
        pass
    with pytest.raises(ValueError, match="StableDiffusionPipeline"):
        Aligner(FancyPipeline())


def test_load_pipeline_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="model_index.json"):
        elbo_lib.load_pipeline(tmp_path)
    with pytest.raises(FileNotFoundError, match="download"):
        elbo_lib.load_pipeline("nobody-here/no-such-model-xyz")


def test_load_pipeline_roundtrip(pipes, tmp_path):
    pipes["sd2v"].save_pretrained(tmp_path / "p")
    pipe = elbo_lib.load_pipeline(tmp_path / "p", device="cpu")
    assert pipe.unet.dtype == torch.float32 and pipe.scheduler.config.prediction_type == "v_prediction"
    a = Aligner(pipe, **FAST)(_img(), ["cat"], seed=0)
    b = Aligner(pipes["sd2v"], **FAST)(_img(), ["cat"], seed=0)
    np.testing.assert_allclose(a.elbo, b.elbo, rtol=1e-5)


def test_presets_and_bad_options():
    assert AlignConfig.official() == AlignConfig()
    proj = AlignConfig.preset("project", gamma=0.5)
    assert proj.self_rule == "finest" and proj.layer_weights == "levels" and proj.gamma == 0.5
    with pytest.raises(ValueError, match="unknown preset 'paper'.*official"):
        AlignConfig.preset("paper")
    for bad, match in ((dict(self_rule="three_hop"), "self_rule"), (dict(noise="fresh"), "noise"),
                       (dict(weighting="plain"), "weighting"), (dict(token_occurrence="last"), "token_occurrence"),
                       (dict(resize="nearest"), "resize"), (dict(layer_weights="paper"), "layer_weights"),
                       (dict(self_attention_t_max=0.5), "self_attention_t_max")):
        with pytest.raises(ValueError, match=match):
            AlignConfig(**bad)


def test_measurement_key_separates_the_aggregations():
    assert AlignConfig().measurement_key() != AlignConfig.preset("project").measurement_key()
    assert AlignConfig().measurement_key()["version"] >= 2


def test_noise_and_latent_inputs(pipes):
    from elbo_lib.aligner import Noise
    al = Aligner(pipes["sd1"], **FAST)
    x0, _ = al.encode(_img(), al.config)
    shape = tuple(x0.shape[1:])
    noise = Noise.draw(shape, 2, 3, seed=11)
    m1 = al.measure(_img(), ["red circle", "cat"], seed=11)
    m2 = al.measure(_img(), ["red circle", "cat"], seed=0, noise=noise, latent=x0)
    torch.testing.assert_close(m1.elbo, m2.elbo)  # same noise and latent as seed 11 draws
    torch.testing.assert_close(m1.cross, m2.cross)
    g = torch.Generator().manual_seed(11)  # "stream": attention noise first, then the ELBO's
    assert torch.equal(noise.attention, torch.randn((2, *shape), generator=g))
    assert torch.equal(noise.elbo, torch.randn((3, *shape), generator=g))
    bad = [(Noise(noise.attention[:1], noise.elbo), "attention noise has shape"),
           (Noise(noise.attention, noise.elbo[..., :-1]), "elbo noise has shape"),
           (Noise(noise.attention.double(), noise.elbo), "float32"),
           (Noise(noise.attention, noise.elbo.to(torch.float16)), "float32"),
           (Noise(noise.attention.to("meta"), noise.elbo), "device"),
           (Noise(noise.attention.numpy(), noise.elbo), "torch.Tensor")]
    for n, match in bad:
        with pytest.raises(ValueError, match=match):
            al.measure(_img(), ["red circle", "cat"], noise=n)
    with pytest.raises(ValueError, match="latent must be a"):
        al.measure(_img(), ["red circle", "cat"], latent=x0[0])
    with pytest.raises(ValueError, match="floating-point"):
        al.measure(_img(), ["red circle", "cat"], latent=x0.long())
    with pytest.raises(ValueError, match="noise rule"):
        Noise.draw(shape, 2, 3, rule="fresh")


def test_renormalized_heatmaps_span_unit_range(pipes):
    res = Aligner(pipes["sd1"], **FAST)(_img(), ["red circle", "cat"], seed=0)
    assert np.allclose(res.heatmaps.reshape(2, -1).max(1), 1) and np.allclose(res.heatmaps.reshape(2, -1).min(1), 0)
    off = Aligner(pipes["sd1"], **FAST, renormalize=False)(_img(), ["red circle", "cat"], seed=0)
    assert off.heatmaps.max() <= 1


def test_sd3_noise_levels_follow_the_shifted_scheduler(pipes):
    """flow_shift=True: t names the integer timestep and sigma is the scheduler's shifted sigma there."""
    from elbo_lib.models import adapter_for
    ad = adapter_for(pipes["sd3"])
    shift = pipes["sd3"].scheduler.config.shift
    t = torch.tensor([0.001, 0.2, 0.951], dtype=torch.float64)
    k1 = (torch.round(t * 1000) + 1) / 1000
    want = shift * k1 / (1 + (shift - 1) * k1)
    a, s = ad.alpha_sigma(t)
    torch.testing.assert_close(s.double(), want, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(ad.model_timestep(t).double(), want * 1000, rtol=1e-6, atol=1e-4)
    lin = ad.configured(False)
    torch.testing.assert_close(lin.alpha_sigma(t)[1].double(), t, rtol=1e-6, atol=1e-7)
    assert ad.flow_shift  # configured() copies; the original keeps its rule
