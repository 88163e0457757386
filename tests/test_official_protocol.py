"""Real-data evaluation with the authors' protocol (evaluate's default on voc, context, coco-object, ade20k): the
reference fixtures through evaluate's scoring, evaluate against `score` on written heatmaps, cross-fitting by
hand, the plan line, captions past the text encoder's window, the VAE's precision, and the workbook's real runs."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from elbo_lib import AlignConfig, Aligner
from elbo_lib import workbook
from elbo_lib.ablations import paper_variants
from elbo_lib.cli import main
from elbo_lib.datasets import authors_image_list, get_dataset, official_categories
from elbo_lib.datasets.base import present_ids
from elbo_lib.evaluation import evaluate, measure_dataset, options
from elbo_lib.evaluation.metrics import miou
from elbo_lib.evaluation.official import (CROSS_FITTED, OFFICIAL, STEPS, binary_search, halves,
                                          score_heatmaps, score_measurements, summarize_official, write_heatmaps)
from elbo_lib.evaluation.runner import Protocol, metrics_table
from elbo_lib.models import adapter_for, load_pipeline
from elbo_lib.models.random_init import tiny_sd_pipeline
from elbo_lib.tokens import CaptionTooLong, default_caption, token_positions

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures" / "realdata"
DATASETS = {"voc": "voc", "context": "context", "coco": "coco-object", "ade20k": "ade20k"}  # fixture -> dataset
FAST = AlignConfig(elbo_steps=2, attention_steps=2)
VOC_WORDS = tuple(k for k, _ in official_categories("voc"))


def _fixture(folder: str, **kw):
    return get_dataset(DATASETS[folder], FIXTURES / folder / "data", image_list=FIXTURES / folder / "val_id.txt",
                       labels="official", **kw)


class FileVariant:
    """A 'variant' whose heatmaps are the fixture's 8-bit heatmap files (value / 255), in the image's class order."""

    name = "fixture heatmaps"

    def __init__(self, folder: str, ds):
        self.folder, self.ds = folder, ds

    def heatmaps_of(self, k: int) -> np.ndarray:
        keys = [self.ds.categories[c - 1][0] for c in self.ds.load(k).class_ids]
        return np.stack([np.asarray(Image.open(FIXTURES / self.folder / "heatmaps" / f"{k}_{w}.png"), np.float64) / 255
                         for w in keys])


@pytest.mark.parametrize("folder", list(DATASETS))
def test_evaluate_scoring_reproduces_the_authors_reference(folder):
    """evaluate's official scoring (heatmaps -> 8-bit -> their counts -> their search) on the fixtures' heatmaps
    gives the numbers of the authors' evaluate_segmentation.py (reference.json), name search included."""
    ref = json.loads((FIXTURES / folder / "reference.json").read_text())
    ds = _fixture(folder)
    pairs = [(ds.load(k), k if ds.load(k).class_ids else None) for k in range(len(ds))]
    scored, info = score_measurements(pairs, ds, [FileVariant(folder, ds)])
    m = summarize_official(scored, ds.class_names, heldout=False, n_boot=20)
    e = m["variants"]["fixture heatmaps"]
    assert m["n_images"] == len(ref["images"]) and "heldout" not in e
    assert np.abs(np.array(e["curve"]) * 100 - np.array(ref["miou_curve"])).max() <= 1e-6
    assert e["oracle"]["threshold"] == ref["binary_search"]["best_threshold"]
    assert e["oracle"]["probes"] == ref["binary_search"]["probes"]
    assert e["oracle"]["miou"] * 100 == pytest.approx(ref["binary_search"]["best_miou"], abs=1e-6)
    assert e["grid_maximum"]["thresholds"] == ref["curve_global_max"]["thresholds"]
    lo, hi = e["oracle"]["ci95"]
    assert e["oracle"]["protocol"] == OFFICIAL and lo <= e["oracle"]["miou"] <= hi
    if folder == "ade20k":  # the name search: 'stool' and 'pot' scored as 'toilet', 'screen' as 'screen door'
        assert set(info["scored_as_other_class"]) == {"stool", "pot", "screen"}


def test_cross_fitting_by_hand():
    """Halves drawn by the seed; each half's threshold is searched on the other; P/T/TP pooled. Checked against a
    direct pixel count at the chosen thresholds."""
    rng = np.random.default_rng(3)
    ds = SimpleNamespace(name="voc", labels="official", ignore_index=255, categories=official_categories("voc"),
                         class_names=list(VOC_WORDS))
    samples = []
    for k in range(9):
        label = rng.choice([0, 3, 8, 12], size=(12, 10)).astype(np.int64)
        label[0, :2] = 255
        ids = present_ids(label, 255)
        heat = rng.random((len(ids), 12, 10))
        samples.append((SimpleNamespace(id=f"im{k}", label=label, class_ids=ids), heat))
    variant = SimpleNamespace(name="v", heatmaps_of=lambda h: h)
    scored, _ = score_measurements(samples, ds, [variant])
    m = summarize_official(scored, ds.class_names, heldout=True, n_boot=50, seed=7)
    a, b = halves(9, 7)
    assert len(a) == 4 and sorted(np.r_[a, b]) == list(range(9)) and (halves(9, 7)[0] == a).all()
    assert not (halves(9, 8)[0] == a).all() or not (halves(9, 9)[0] == a).all()  # another seed, another split

    def direct(idx, step):  # P, T, TP summed over images idx at threshold step / 100, by counting pixels
        n = len(ds.class_names) + 1
        p, t, tp = np.zeros(n), np.zeros(n), np.zeros(n)
        for i in idx:
            s, heat = samples[i]
            lv = np.rint(heat * 255).astype(np.uint8)
            best, arg = lv.max(0), np.asarray(s.class_ids)[lv.argmax(0)]
            pred = np.where(best.astype(np.float32) / 255 < np.float32(step / 100), 0, arg)
            keep = s.label != 255
            p += np.bincount(pred[keep], minlength=n)
            t += np.bincount(s.label[keep], minlength=n)
            tp += np.bincount(s.label[keep][pred[keep] == s.label[keep]], minlength=n)
        return p, t, tp

    def search(idx):
        curve = []
        for step in STEPS:
            p, t, tp = direct(idx, step)
            curve.append(miou(tp, t + p - tp, eps=1e-10) * 100)
        return binary_search(np.array(curve))[0]

    sa, sb = search(a), search(b)
    e = m["variants"]["v"]["heldout"]
    assert e["threshold"] == [sa / 100, sb / 100] and e["protocol"] == CROSS_FITTED
    pb, tb, tpb = direct(b, sa)  # half B scored at A's threshold, half A at B's
    pa, ta, tpa = direct(a, sb)
    p, t, tp = pa + pb, ta + tb, tpa + tpb
    assert e["miou"] == pytest.approx(miou(tp, t + p - tp, eps=1e-10), abs=1e-12)
    assert e["ci95"][0] <= e["miou"] <= e["ci95"][1]
    assert m["variants"]["v"]["oracle"]["threshold"] == search(range(9)) / 100


@pytest.fixture(scope="module")
def voc_pipe():
    return tiny_sd_pipeline(words=VOC_WORDS)


def test_evaluate_official_equals_score_on_its_heatmaps(tmp_path, voc_pipe, capsys):
    """All 8 images of the list, the oracle = `score` on the same heatmaps written in the authors' format, the
    cross-fitted column beside it, each labelled; the plan line before the first image; a rerun measures nothing."""
    data, lst = FIXTURES / "voc" / "data", FIXTURES / "voc" / "val_id.txt"
    kw = options(data_root=str(data), image_list=str(lst), cache_dir=tmp_path / "cache", pipe=voc_pipe, n_boot=50)
    m = evaluate("tiny-voc", "voc", config=FAST, out=tmp_path / "run", **kw)
    out = capsys.readouterr().out
    assert "[plan] voc: 8 images, 21 (image, class) pairs; 1 measurement(s) per image (ELBO-T2IAlign): 8 of 8 to make" \
           in out and "benchmarks/README.md" in out and "[measure] voc [ELBO-T2IAlign]: first image" in out
    assert m["n_images"] == 8 and m["protocol"] == {"oracle": OFFICIAL, "heldout": CROSS_FITTED}
    assert m["split"]["threshold_split"] == "cross-fitted halves of voc (seed 0)"
    assert sorted(sum(m["split"]["halves"], [])) == [f"fixture_{i:04d}" for i in range(1, 9)]
    tab = metrics_table(m)
    assert set(tab.oracle_protocol) == {OFFICIAL} and set(tab.heldout_protocol) == {CROSS_FITTED}
    assert {"grid_max_mIoU", "grid_max_thr", "heldout_ci95", "delta_ci95"} <= set(tab.columns)
    for f in ("metrics.json", "per_class.csv", "size_buckets.csv", "summary.md", "official_curves.csv"):
        assert (tmp_path / "run" / f).exists(), f
    assert "official (authors' evaluation)" in (tmp_path / "run" / "summary.md").read_text()
    # a rerun measures nothing; its heatmaps (from the cache, as below) written as the authors' run script writes
    # them and scored by `score` give its numbers. (A fresh measurement's heatmaps can differ from the cached
    # one's in the 4th decimal: float32 matmul on the differently aligned memory of a loaded file.)
    m = evaluate("tiny-voc", "voc", config=FAST, **kw)
    assert "nothing to measure" in capsys.readouterr().out
    ds = get_dataset("voc", data, image_list=lst, labels="official")
    variant = next(v for v in paper_variants(FAST) if v.name == "calibrated")
    heat = tmp_path / "heatmaps"
    for k, (s, meas) in enumerate(measure_dataset("tiny-voc", ds, FAST, 0, cache_dir=tmp_path / "cache",
                                                  pipe=voc_pipe, keep_empty=True)):
        if meas is not None:
            write_heatmaps(heat, k, ds.phrases(s.class_ids), variant.heatmaps_of(meas))
    res = score_heatmaps(heat, "voc", data, lst)
    e = m["variants"]["calibrated"]
    assert e["oracle"]["threshold"] == res["searched"]["threshold"]
    assert e["oracle"]["miou"] * 100 == pytest.approx(res["searched"]["miou"], abs=1e-9)
    assert np.allclose(np.array(e["curve"]) * 100, res["curve"], atol=1e-9)
    assert e["grid_maximum"]["thresholds"] == res["grid_maximum"]["thresholds"]
    # without the measurements, the rate of the first run is what the next estimate uses
    (model_dir,) = (tmp_path / "cache" / "measurements").iterdir()
    for settings_dir in (d for d in model_dir.iterdir() if d.is_dir()):  # the measurements go, the rate record stays
        shutil.rmtree(settings_dir)
    evaluate("tiny-voc", "voc", config=FAST, **kw)
    out = capsys.readouterr().out
    assert "earlier measured images on cpu" in out and "first image" not in out


def test_official_protocol_options_are_checked(tmp_path, voc_pipe):
    data, lst = FIXTURES / "voc" / "data", FIXTURES / "voc" / "val_id.txt"
    with pytest.raises(ValueError, match="cross-fitted"):
        evaluate("t", "voc", config=FAST, **options(data_root=str(data), image_list=str(lst), heldout=0.2))
    with pytest.raises(ValueError, match="labels='official'"):
        evaluate("t", get_dataset("voc", data, image_list=lst), config=FAST, **options(pipe=voc_pipe))
    with pytest.raises(ValueError, match="must be one of"):
        Protocol(real="authors")
    with pytest.raises(ValueError, match="class_ids"):
        Protocol(class_ids="search")
    m = evaluate("tiny-voc", "voc", config=FAST, **options(data_root=str(data), image_list=str(lst), heldout=None,
                                                           cache_dir=tmp_path / "c", pipe=voc_pipe, n_boot=20))
    assert "heldout" not in m["variants"]["calibrated"] and m["split"]["threshold_split"] == "none (oracle only)"
    assert authors_image_list(FIXTURES, "coco-object") == FIXTURES / "coco" / "val_id.txt"
    assert authors_image_list(FIXTURES, "toy-test") is None and authors_image_list(None, "voc") is None
    with pytest.raises(FileNotFoundError, match="val_id.txt"):
        authors_image_list(tmp_path, "voc")


# ---- captions longer than the text encoder's window ---------------------------------------------------------------

def test_a_class_straddling_the_window_is_an_error():
    """Before: a class whose tokens straddled the limit was cut to the tokens inside it, silently."""
    tok = tiny_sd_pipeline().tokenizer
    words = ["cat", "dog", "sky", "tree", "grass", "car", "road", "person", "red", "green"]
    classes = [f"{a} {b}" for a in ("red", "green", "blue") for b in words][:24] + ["windowpane"]
    cap = default_caption(classes)
    n = len(tok(cap).input_ids)
    assert n > 77 and token_positions(tok, cap, "red cat") == [4, 5]
    with pytest.raises(CaptionTooLong, match=rf"the caption has {n} tokens, more than the text encoder's 77-token "
                                             r"limit: class 'windowpane'"):
        token_positions(tok, cap, "windowpane")


@pytest.fixture(scope="module")
def short_window_pipe():
    pipe = tiny_sd_pipeline()
    pipe.tokenizer.model_max_length = 12  # a 12-token window: the fixture's ADE20K captions do not fit
    return pipe


def test_long_captions_stop_before_any_model_work(tmp_path, short_window_pipe, monkeypatch):
    data, lst = FIXTURES / "ade20k" / "data", FIXTURES / "ade20k" / "val_id.txt"
    calls = []
    monkeypatch.setattr(adapter_for(short_window_pipe).__class__, "predict", lambda *a, **k: calls.append(1))
    with pytest.raises(CaptionTooLong, match=r"^image fixture_0001 \(line 1 of the image list of ade20k\): the "
                                             r"caption has 19 tokens, more than the text encoder's 12-token limit: "
                                             r"class 'floor'.*; 7 of the 8 images to measure have a caption too long"):
        evaluate("tiny", "ade20k", config=FAST, **options(data_root=str(data), image_list=str(lst),
                                                          cache_dir=tmp_path / "c", pipe=short_window_pipe))
    assert calls == []
    ds = get_dataset("ade20k", data, image_list=lst, labels="official")  # measuring directly: the image is named too
    with pytest.raises(CaptionTooLong, match=r"^image fixture_0001 \(image 0 of ade20k\): the caption has"):
        next(measure_dataset("tiny", ds, FAST, cache_dir=tmp_path / "c", pipe=short_window_pipe))


def test_long_caption_is_one_cli_line(tmp_path, short_window_pipe, capsys):
    model = tmp_path / "tiny"
    short_window_pipe.save_pretrained(model)
    argv = ["evaluate", "--model", str(model), "--dataset", "ade20k", "--data-root", str(FIXTURES / "ade20k" / "data"),
            "--image-list", str(FIXTURES / "ade20k" / "val_id.txt"), "--cache-dir", str(tmp_path / "c"), "--out",
            str(tmp_path / "o"), "--elbo-steps", "2", "--attention-steps", "2"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: image fixture_0001") and "12-token limit" in err[-1]


# ---- precision -----------------------------------------------------------------------------------------------------

def test_vae_stays_float32_when_the_denoiser_is_fp16(tmp_path):
    """As the authors run it: the VAE in fp32, the denoiser and text encoder in the load dtype; the image enters
    the VAE in fp32 and the latent leaves in the denoiser's dtype. On the CPU by default everything is fp32."""
    tiny_sd_pipeline().save_pretrained(tmp_path / "m")
    pipe = load_pipeline(tmp_path / "m", device="cpu", dtype=torch.float16)
    dtypes = {k: next(v.parameters()).dtype for k, v in pipe.components.items() if isinstance(v, torch.nn.Module)}
    assert dtypes == {"vae": torch.float32, "text_encoder": torch.float16, "unet": torch.float16}
    ad = adapter_for(pipe)
    img = np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)
    x = ad.preprocess(img)
    z = ad.encode_image(x)
    assert x.dtype == torch.float32 and z.dtype == torch.float16 and torch.isfinite(z).all()
    res = Aligner(pipe, elbo_steps=2, attention_steps=2)(img, ["cat", "dog"])
    assert np.isfinite(res.heatmaps).all()
    cpu = load_pipeline(tmp_path / "m", device="cpu")
    assert {next(v.parameters()).dtype for v in cpu.components.values() if isinstance(v, torch.nn.Module)} == {
        torch.float32}


# ---- the workbook on real data -------------------------------------------------------------------------------------

def test_full_real_runs_score_every_image(monkeypatch, tmp_path):
    """`make reproduce` with real DATASETS: no image cap for the notebooks that score (Figs. 3-4 keep their subset)."""
    seen = {}
    monkeypatch.setenv("ELBO_WORKBOOK_OUT", str(tmp_path))  # run_notebooks sets it; restored afterwards
    monkeypatch.setattr(workbook.pm, "execute_notebook", lambda nb, target, parameters, **kw: seen.update(
        {Path(nb).stem: parameters}))
    monkeypatch.setattr(workbook, "clean_notebook", lambda path: None)
    names = ["table2_segmentation", "table6_elbo_timesteps", "fig3_fig4_qualitative", "table5_generation"]
    extra = {"datasets": ["voc"], "dataset": "voc", "data_root": "/d", "image_lists": "/m"}
    workbook.run_notebooks(names, quick=False, extra=extra, figures=tmp_path, executed_dir=tmp_path / "nb")
    assert seen["table2_segmentation"]["limit"] is None and seen["table2_segmentation"]["image_lists"] == "/m"
    assert seen["table6_elbo_timesteps"]["limit"] is None
    assert seen["fig3_fig4_qualitative"]["limit"] == 200 and "data_root" not in seen["table5_generation"]
    workbook.run_notebooks(["table2_segmentation"], quick=False, extra={"datasets": ["toy-test"]}, figures=tmp_path,
                           executed_dir=tmp_path / "nb")
    assert seen["table2_segmentation"]["limit"] == 200  # the toy splits keep their sizes


@pytest.mark.slow
def test_real_layout_workbook_run_uses_the_official_protocol(tmp_path):
    """`python -m elbo_lib.workbook --quick --model <tiny> --data-root <VOC fixture> --datasets voc --image-lists
    <fixtures>` runs every notebook that takes real data (the fixture tree has no val.txt: each must read the
    authors' list), Table II on every image of the list with the official protocol and the cross-fitted column,
    and the notebook's output says which protocol each column uses."""
    real = [e.name for e in workbook.NOTEBOOKS
            if "data_root" in workbook.parameters_of(ROOT / "notebooks" / f"{e.name}.ipynb") and not e.toy_only]
    assert "table2_segmentation" in real and len(real) >= 9, real
    model = tmp_path / "tiny-voc"
    tiny_sd_pipeline(words=VOC_WORDS).save_pretrained(model)
    out = tmp_path / "figs"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "ELBO_LIB_CACHE": str(tmp_path / "cache")}
    r = subprocess.run([sys.executable, "-m", "elbo_lib.workbook", "--quick", "--model", str(model), "--data-root",
                        str(FIXTURES / "voc" / "data"), "--datasets", "voc", "--image-lists", str(FIXTURES), "--out",
                        str(out), "--only", ",".join(real)], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    for name in real:  # each ran on the list's 8 images
        assert (out / "notebooks" / f"{name}.ipynb").is_file(), name
    assert set(pd.read_csv(out / "table8_fixed_score.csv").heldout_protocol) == {CROSS_FITTED}
    t2 = pd.read_csv(out / "table2_segmentation.csv")
    rows = t2[t2.variant != "DiffPNG"]
    assert set(rows.dataset) == {"voc"} and {"ELBO-T2IAlign", "DAAM", "Semantic DiffSeg"} <= set(rows.variant)
    assert set(rows.oracle_protocol) == {OFFICIAL} and set(rows.heldout_protocol) == {CROSS_FITTED}
    assert rows.oracle_mIoU.notna().all() and rows.heldout_mIoU.notna().all() and rows.grid_max_mIoU.notna().all()
    nb = (out / "notebooks" / "table2_segmentation.ipynb").read_text()
    for text in ("8 images of voc; threshold split: cross-fitted halves of voc (seed 0)",
                 "official (authors' evaluation)", "cross-fitted held-out",
                 "[plan] voc: 8 images, 21 (image, class) pairs"):
        assert text in nb, text
    assert "official (authors' evaluation), oracle mIoU" in (out / "README.md").read_text()
