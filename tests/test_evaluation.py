import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from elbo_lib import AlignConfig
from elbo_lib.datasets import get_dataset
from elbo_lib.ablations import paper_variants
from elbo_lib.evaluation import evaluate, options
from elbo_lib.evaluation.cache import load_measurement, measurement_files
from elbo_lib.evaluation.metrics import (best_threshold, bootstrap_miou, confusion, intersection_union, miou,
                                         per_image_iu)

from fixtures_datasets import make_tree

FAST = AlignConfig(elbo_steps=2, attention_steps=2)
ROOT = Path(__file__).resolve().parents[1]


def test_confusion_by_hand():
    gt = np.array([[0, 1, 1], [2, 2, 255]])
    pr = np.array([[0, 1, 2], [2, 0, 1]])
    c = confusion(pr, gt, 3)
    np.testing.assert_array_equal(c, [[1, 0, 0], [0, 1, 1], [1, 0, 1]])  # the 255 pixel is dropped
    inter, union = intersection_union(c)
    np.testing.assert_array_equal(inter, [1, 1, 1])
    np.testing.assert_array_equal(union, [2, 2, 3])
    assert miou(inter, union) == pytest.approx((0.5 + 0.5 + 1 / 3) / 3)
    assert miou(np.array([1, 0]), np.array([2, 0])) == 0.5  # absent classes do not count


def test_per_image_iu_thresholds():
    heat = np.array([[[0.9, 0.2], [0.6, 0.1]], [[0.1, 0.7], [0.3, 0.05]]])  # 2 classes, global ids 1 and 3
    label = np.array([[1, 3], [0, 255]])
    inter, union = per_image_iu(heat, label, [1, 3], np.array([0.5, 0.8]), n_global=3)
    # t = 0.5: pred [[1, 3], [1, .]] -> bg: I 0 U 1; class 1: I 1 U 2; class 3: I 1 U 1
    np.testing.assert_array_equal(inter[0], [0, 1, 0, 1])
    np.testing.assert_array_equal(union[0], [1, 2, 0, 1])
    # t = 0.8: pred [[1, 0], [0, .]]
    np.testing.assert_array_equal(inter[1], [1, 1, 0, 0])
    np.testing.assert_array_equal(union[1], [2, 1, 0, 1])
    t, k, m = best_threshold(inter, union, np.array([0.5, 0.8]))
    assert (t, k) == (0.5, 0) and m == pytest.approx((0 + 0.5 + 1) / 3)


def test_bootstrap_known_cases():
    inter = np.tile([[5, 5]], (20, 1))
    union = np.tile([[10, 10]], (20, 1))
    b = bootstrap_miou(inter, union, 200, 0, inter, union)
    assert b["ci95"] == [0.5, 0.5] and b["diff_ci95"] == [0.0, 0.0]
    rng = np.random.default_rng(0)
    inter = rng.integers(0, 10, (50, 2)); union = inter + rng.integers(1, 10, (50, 2))
    b = bootstrap_miou(inter, union, 500, 0)
    point = miou(inter.sum(0), union.sum(0))
    assert b["ci95"][0] < point < b["ci95"][1]


@pytest.mark.parametrize("layout", ["voc", "context", "coco-object", "ade20k", "folder"])
def test_fixture_layouts_evaluate(layout, tmp_path, pipes):
    root = make_tree(tmp_path / "data", layout)
    name = f"folder:{root}" if layout == "folder" else layout
    ds = get_dataset(name, root)
    s = ds.load(0)
    assert s.image.shape[:2] == s.label.shape and s.class_ids
    if layout == "ade20k":
        assert (s.label == 0).sum() == 0  # unlabelled pixels are ignored, not background
    m = evaluate("tiny-sd", ds, config=FAST, out=tmp_path / "out",  # the project protocol on every layout
                 **options(limit=3, cache_dir=tmp_path / "cache", pipe=pipes["sd1"], n_boot=50, heldout=0.34,
                           real="project"))
    assert set(m["variants"]) == {"uncalibrated", "calibrated"}
    for f in ("metrics.json", "per_class.csv", "size_buckets.csv", "summary.md"):
        assert (tmp_path / "out" / f).exists()
    assert m["n_images"] == 2 and m["split"]["calibration_ids"]
    if layout != "folder":  # a real dataset: the table says how each column is scored
        assert m["protocol"] == {"oracle": "project", "heldout": "project"}


def test_corrupt_and_bad_inputs(tmp_path):
    root = make_tree(tmp_path / "d", "voc", n=2)
    base = root / "VOCdevkit" / "VOC2012"
    (base / "JPEGImages" / "img_0000.jpg").write_bytes(b"not a jpeg")
    ds = get_dataset("voc", root)
    with pytest.raises(ValueError, match="img_0000.jpg"):
        ds.load(0)
    Image.fromarray(np.full((64, 64), 42, np.uint8)).save(base / "SegmentationClass" / "img_0001.png")
    with pytest.raises(ValueError, match=r"img_0001.png.*\[42\]"):
        ds.load(1)
    (base / "SegmentationClass" / "img_0001.png").unlink()
    with pytest.raises(FileNotFoundError, match="img_0001.png"):
        ds.load(1)
    with pytest.raises(FileNotFoundError, match="VOC 2012"):
        get_dataset("voc", tmp_path / "nowhere")
    with pytest.raises(ValueError, match="data-root"):
        get_dataset("voc")
    with pytest.raises(ValueError, match="unknown dataset"):
        get_dataset("imagenet")


def test_cache_reuse_no_denoiser_calls(tmp_path, pipes, monkeypatch):
    root = make_tree(tmp_path / "f", "folder", n=3)
    kw = dict(config=FAST, **options(limit=3, cache_dir=tmp_path / "cache", pipe=pipes["sd1"], n_boot=20, heldout=None))
    a = evaluate("tiny", f"folder:{root}", **kw)
    from elbo_lib.models.stable_diffusion import StableDiffusionAdapter

    def boom(*args, **kwargs):
        raise AssertionError("denoiser called on a warm cache")
    monkeypatch.setattr(StableDiffusionAdapter, "predict", boom)
    b = evaluate("tiny", f"folder:{root}", variants=paper_variants(FAST, [0.5, 0.25]), **kw)  # a gamma sweep: cache only
    assert a["variants"]["calibrated"] == b["variants"]["calibrated"]
    assert "gamma=0.25" in b["variants"]
    # an image changed under the same id is measured afresh, never served from the cache
    img = root / "images" / "img_0001.png"
    Image.fromarray(255 - np.asarray(Image.open(img))).save(img)
    with pytest.raises(AssertionError, match="warm cache"):
        evaluate("tiny", f"folder:{root}", **kw)


def _run_cli(model_dir, data, cache, out, env):
    return subprocess.Popen([sys.executable, "-m", "elbo_lib", "evaluate", "--model", str(model_dir), "--dataset",
                             f"folder:{data}", "--cache-dir", str(cache), "--out", str(out), "--heldout", "none",
                             "--n-boot", "50", "--elbo-steps", "4", "--attention-steps", "2"],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


@pytest.mark.slow
def test_kill_and_resume(tmp_path, pipes):
    model_dir = tmp_path / "tiny"
    pipes["sd1"].save_pretrained(model_dir)
    data = make_tree(tmp_path / "data", "folder", n=40)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    cache = tmp_path / "cache"
    p = _run_cli(model_dir, data, cache, tmp_path / "out1", env)
    deadline = time.time() + 120
    while time.time() < deadline and len(measurement_files(cache)) < 5:
        time.sleep(0.05)
    p.send_signal(signal.SIGKILL)
    p.wait()
    n_before = len(measurement_files(cache))
    assert 5 <= n_before < 40, n_before
    for f in measurement_files(cache):  # a killed write leaves at most a temp file, never a truncated file
        load_measurement(f)
    assert _run_cli(model_dir, data, cache, tmp_path / "out1", env).wait() == 0
    assert _run_cli(model_dir, data, tmp_path / "cache2", tmp_path / "out2", env).wait() == 0
    m1 = json.loads((tmp_path / "out1" / "metrics.json").read_text())
    m2 = json.loads((tmp_path / "out2" / "metrics.json").read_text())
    for m in (m1, m2):
        m.pop("seconds")
    assert m1["variants"] == m2["variants"]


def test_model_key_follows_configs_not_reports(tmp_path):
    from elbo_lib.evaluation.cache import model_key
    d = tmp_path / "m"; (d / "unet").mkdir(parents=True)
    (d / "unet" / "config.json").write_text('{"a": 1}')
    (d / "unet" / "w.safetensors").write_bytes(b"1234")
    k = model_key(d)
    (d / "quality.json").write_text('{"pointing": 0.9}')
    assert model_key(d) == k  # a report next to the weights changes no measurement
    (d / "training.json").write_text('{"lr": 0.001}')
    k2 = model_key(d)
    assert k2 != k
    (d / "unet" / "config.json").write_text('{"a": 2}')
    assert model_key(d) != k2
    (d / "unet" / "w.safetensors").write_bytes(b"12345")
    k3 = model_key(d)
    assert len({k, k2, k3}) == 3
    (d / "unet" / "w.safetensors").write_bytes(b"12346")  # same size, new weights: a fine-tune saved in place
    assert model_key(d) != k3


def test_cache_stores_no_pickle_and_refuses_a_crafted_file(tmp_path, pipes):
    """Measurements are safetensors + JSON; a pickle dropped where a cache file belongs is refused
    without running its payload."""
    from elbo_lib import Aligner
    from elbo_lib.evaluation.cache import MeasurementCache, input_bytes, load_measurement
    img = (np.random.default_rng(0).random((32, 32, 3)) * 255).astype(np.uint8)
    m = Aligner(pipes["sd1"], FAST).measure(img, ["red circle", "cat"], seed=0)
    cache = MeasurementCache(tmp_path, "tiny", {"k": 1})
    inputs = input_bytes(img, m.caption)
    cache.put("img", m, inputs)
    back = cache.get("img", inputs)
    assert back.classes == m.classes and back.caption == m.caption and back.image_hw == m.image_hw
    for k in ("elbo", "cross", "self_attn"):
        assert torch.equal(getattr(back, k), getattr(m, k))
    path = cache._path("img", inputs)
    assert path.suffix == ".safetensors"
    marker = tmp_path / "payload-ran"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))
    torch.save({"elbo": Payload()}, path)
    with pytest.raises(ValueError, match="not a measurement file"):
        cache.get("img", inputs)
    with pytest.raises(ValueError, match="not a measurement file"):
        load_measurement(path)
    assert not marker.exists()


def test_training_checkpoints_load_weights_only(tmp_path):
    from elbo_lib.toy.train import atomic_save, load_checkpoint
    atomic_save({"model": {"w": torch.ones(2)}, "step": 3, "seconds": 1.5}, tmp_path / "ok.pt")
    assert load_checkpoint(tmp_path / "ok.pt")["step"] == 3

    class Payload:
        def __reduce__(self):
            return (os.system, ("true",))
    torch.save({"x": Payload()}, tmp_path / "bad.pt")
    with pytest.raises(Exception, match="Weights only load failed"):
        load_checkpoint(tmp_path / "bad.pt")
