import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from elbo_lib import workbook
from elbo_lib.evaluation.thresholds import read as read_thresholds
from elbo_lib.toy.world import ToyObject, render

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_segment_cli_on_toy_image(tmp_path):
    """The issue's scene: result.json and the figure say which threshold cut the mask and where it came from, the
    key of the mask colours, and which map each panel shows."""
    scene = render([ToyObject("red", "square", 18, 18, 10), ToyObject("yellow", "triangle", 46, 20, 11),
                    ToyObject("purple", "square", 30, 46, 10)], 64, np.random.default_rng(0))
    img = tmp_path / "scene.png"
    Image.fromarray(scene.image).save(img)
    classes = ["red square", "yellow triangle", "purple square"]
    r = subprocess.run([sys.executable, "-m", "elbo_lib", "segment", str(img), "--classes", ",".join(classes),
                        "--out", str(tmp_path / "out")], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert not foreign_lines(r.stderr), foreign_lines(r.stderr)
    out = tmp_path / "out"
    for f in ("mask.png", "mask_color.png", "overlay.png", "overlay.json", "result.json", "heatmap_00_red_square.png",
              "heatmap_01_yellow_triangle.png", "overlay_00_red_square.png", "raw_02_purple_square.png", "unrefined_01_yellow_triangle.png"):
        assert (out / f).exists(), f
    res = json.loads((out / "result.json").read_text())
    assert len(res["scores"]) == 3 and min(res["scores"]) >= 1 / 3 - 1e-9 and max(res["scores"]) == 1.0
    recorded = read_thresholds(ROOT / "data" / "toy-sd")["official"]["threshold"]  # the held-out one, recorded
    assert res["threshold"] == recorded and "warning: background threshold" not in r.stderr
    assert res["threshold_source"] == "held-out on toy-val (data/toy-sd/thresholds.json)"
    assert [e["label"] for e in res["legend"]] == ["background", *classes]
    mask = np.asarray(Image.open(out / "mask.png"))
    colour = np.asarray(Image.open(out / "mask_color.png"))
    assert mask.shape == (64, 64) and set(np.unique(mask)) <= {0, 1, 2, 3}
    for e in res["legend"]:  # mask_color.png is drawn in the legend's colours
        assert (colour[mask == e["mask_value"]] == e["rgb"]).all(), e
    fig = json.loads((out / "overlay.json").read_text())
    titles = [p["title"] for p in fig["panels"]]
    for c in classes:
        for what in ("raw cross-attention", "refined, uncalibrated", "calibrated\nS = "):
            assert sum(t.startswith(f"{c}: {what}") for t in titles) == 1, (c, what, titles)
    masks = [p for p in fig["panels"] if p["title"].startswith("mask")]
    assert len(masks) == 2 and all(p["legend"] == ["background", *classes] for p in masks)
    assert all(f"threshold {recorded:.2f}" in p["title"] and "held-out on toy-val" in p["title"] for p in masks)
    assert any(p["ylabel"].startswith("heatmap value") for p in fig["panels"])  # the colour bar


# a tqdm bar as the workbook's loops draw it: "desc:  50%|#####     | 1/2 [00:02<00:02,  2.34s/it]"
PROGRESS_BAR = re.compile(r"^[^|]*\d+%\|[^|]*\| *\d+/\d+ \[[^\]]*\]$")


def foreign_lines(stderr: str) -> list[str]:
    """Lines on stderr that are neither a progress bar nor the workbook's own 'warning:' / 'error:' line."""
    lines = [ln.strip() for ln in re.split(r"[\r\n]", stderr) if ln.strip()]
    return [ln for ln in lines if not PROGRESS_BAR.match(ln) and not ln.startswith(("warning: ", "error: "))]


def test_progress_bar_pattern():
    assert not foreign_lines("measure toy-test [aligner]:  50%|█████     | 1/2 [00:02<00:02,  2.34s/it]\r"
                             "measure toy-test [aligner]: 100%|██████████| 2/2 [00:17<00:00, 10.15s/it]\n"
                             "warning: the toy model was never trained on 'cat'\n")
    notice = ("Cannot initialize model with low cpu memory usage because `accelerate` was not found in the "
              "environment. Defaulting to `low_cpu_mem_usage=False`.")
    assert foreign_lines(f"Loading pipeline components...: 100%|##| 6/6 [00:00<00:00, 9.1it/s]\n{notice}") == [notice]


@pytest.mark.slow
def test_evaluate_cli_prints_only_its_own_lines(tmp_path):
    """`evaluate` on the toy model: the table on stdout; on stderr only its progress bars (no library notices)."""
    r = subprocess.run([sys.executable, "-m", "elbo_lib", "evaluate", "--limit", "1", "--n-boot", "10", "--cache-dir",
                        str(tmp_path / "cache"), "--out", str(tmp_path / "run")], cwd=ROOT, capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "| calibrated" in r.stdout
    assert "measure toy-test" in r.stderr and not foreign_lines(r.stderr), foreign_lines(r.stderr)


def test_segment_cli_bad_input(tmp_path):
    r = subprocess.run([sys.executable, "-m", "elbo_lib", "segment", str(tmp_path / "nope.png"), "--classes", "cat",
                        "--out", str(tmp_path / "o")], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode != 0 and "no image file" in r.stderr


def test_workbook_index(tmp_path):
    pd.DataFrame({"variant": ["uncalibrated", "calibrated"], "oracle_mIoU": [0.4, 0.5],
                  "heldout_mIoU": [0.35, 0.45]}).to_csv(tmp_path / "table8_fixed_score.csv", index=False)
    import nbformat
    (tmp_path / "notebooks").mkdir()
    nb = nbformat.v4.new_notebook(metadata={"papermill": {"duration": 40.04}})  # a notebook run earlier
    nbformat.write(nb, tmp_path / "notebooks" / "fig7_gamma.ipynb")
    nbformat.write(nbformat.v4.new_notebook(metadata={"papermill": {"duration": 1500.0}}),
                   tmp_path / "notebooks" / "effect_size.ipynb")  # a notebook `make reproduce` leaves out
    md = workbook.write_index([{"notebook": "table8_fixed_score", "seconds": 3.0}], figures=tmp_path)
    assert "best calibrated: 0.450" in md and "not run" in md
    assert re.search(r"\|\s+40 \|", md) and "Total notebook time: 43 s (2 of" in md, md
    assert "Run separately: effect_size 1500 s." in md
    default = {e.name for e in workbook.NOTEBOOKS if workbook.selected(e, None)}
    assert "effect_size" not in default and "table2_segmentation" in default
    assert all(workbook.selected(e, None, quick=True) for e in workbook.NOTEBOOKS)  # make notebooks remakes all
    assert [e.name for e in workbook.NOTEBOOKS if workbook.selected(e, ["effect_size"])] == ["effect_size"]
    assert not any(f.dataset.startswith("toy-fresh") for f in workbook.notebook_fills())
    sized = workbook.notebook_fills(["effect_size"])  # its own run: the splits + toy-val per toy model, paper config
    fresh = {m: {f.dataset for f in sized if f.model == m} - {"toy-val"} for m in workbook.EFFECT_SPLITS}
    assert fresh == {m: set(s) for m, s in workbook.EFFECT_SPLITS.items()}
    assert len(fresh["data/toy-sd"]) == 9 and len(fresh["data/toy-sd-v"]) == len(fresh["data/toy-sd3"]) == 3
    assert {(f.limit, f.paper) for f in sized} == {(300, True)} and {f.dataset for f in sized} >= {"toy-val"}
    assert (tmp_path / "README.md").read_text() == md
    for e in workbook.NOTEBOOKS:
        assert (ROOT / "notebooks" / f"{e.name}.ipynb").exists()
        assert (ROOT / "notebooks" / f"{e.name}.py").exists()
        assert set(e.full) <= workbook.parameters_of(ROOT / "notebooks" / f"{e.name}.ipynb")


@pytest.mark.slow
def test_real_model_path_end_to_end(tmp_path, pipes):
    """`make reproduce MODEL=... DATA_ROOT=... DATASETS=voc` with a tiny random SD pipeline and a VOC fixture
    tree: every notebook runs and writes its files, and the committed notebooks are left untouched."""
    from fixtures_datasets import make_tree
    model = tmp_path / "tiny-sd"
    pipes["sd1"].save_pretrained(model)
    root = make_tree(tmp_path / "data", "voc", n=6)
    out = tmp_path / "figs"
    before = {p.name: p.read_bytes() for p in (ROOT / "notebooks").glob("*.ipynb")}
    env = {**__import__("os").environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "ELBO_LIB_CACHE": str(tmp_path / "cache")}
    # explore_toy is toy-only (it builds toy scenes for the toy model); every other notebook takes MODEL/DATA_ROOT
    names = [e.name for e in workbook.NOTEBOOKS if e.name != "explore_toy" and e.in_default]
    r = subprocess.run([sys.executable, "-m", "elbo_lib.workbook", "--quick", "--model", str(model), "--data-root",
                        str(root), "--datasets", "voc", "--out", str(out), "--only", ",".join(names)], cwd=ROOT,
                       env=env, capture_output=True, text=True, timeout=1500)
    assert r.returncode == 0, r.stderr[-3000:]
    for e in (e for e in workbook.NOTEBOOKS if e.name in names):
        assert (out / "notebooks" / f"{e.name}.ipynb").exists()
        if e.name not in ("explore_toy", "fig3_fig4_qualitative"):
            assert (out / f"{e.name}.csv").exists(), e.name
    t2 = pd.read_csv(out / "table2_segmentation.csv")
    assert set(t2.dataset) == {"voc"} and "ELBO-T2IAlign" in set(t2.variant) and "DiffPNG" in set(t2.variant)
    assert (out / "README.md").exists()
    assert before == {p.name: p.read_bytes() for p in (ROOT / "notebooks").glob("*.ipynb")}


@pytest.mark.parametrize("argv,message", [
    (["evaluate", "--model", "no/such/dir", "--out", "o"], "no pipeline directory"),
    (["evaluate", "--dataset", "imagenet", "--out", "o"], "unknown dataset 'imagenet'"),
    (["evaluate", "--dataset", "voc", "--out", "o"], "needs --data-root"),
    (["evaluate", "--gamma", "7", "--out", "o"], "--gamma values must be in (0, 1]"),
    (["evaluate", "--class-words", "project", "--out", "o"], "class_words apply to voc, context, coco-object"),
    (["score", "--heatmaps", "h", "--dataset", "toy-test", "--data-root", "."], "unknown dataset 'toy-test'"),
    (["segment", "img.png", "--classes", "a_b", "--save-heatmaps", "h", "--out", "o"], "cannot name a heatmap"),
    (["segment", "nope.png", "--classes", "cat", "--out", "o"], "no image file"),
    (["segment", "img.png", "--classes", " , ", "--out", "o"], "--classes must name"),
    (["evaluate", "--limit", "0", "--out", "o"], "--limit) must be a whole number of images >= 1"),
    (["evaluate", "--limit", "-3", "--out", "o"], "--limit) must be a whole number of images >= 1"),
    (["segment", "img.png", "--classes", "red circle", "--device", "gpu0", "--out", "o"], "is not a torch device name"),
    pytest.param(["segment", "img.png", "--classes", "red circle", "--device", "cuda", "--out", "o"],
                 "no CUDA device is available",
                 marks=pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has CUDA")),
])
def test_cli_errors_are_one_line(argv, message, tmp_path, capsys, monkeypatch):
    """A mistake ends with one 'error: ...' line on stderr and exit status 2, no traceback."""
    from elbo_lib.cli import main
    monkeypatch.chdir(tmp_path)
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(tmp_path / "img.png")
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and message in err[-1] and not any("Traceback" in ln for ln in err)


def test_cli_corrupt_image_and_debug(tmp_path, capsys):
    from elbo_lib.cli import main
    png = tmp_path / "cut.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(png)
    png.write_bytes(png.read_bytes()[:400])  # truncated
    argv = ["segment", str(png), "--classes", "red circle", "--out", str(tmp_path / "o")]
    assert main(argv) == 2
    assert "corrupt or truncated" in capsys.readouterr().err
    (tmp_path / "text.png").write_text("not an image")
    assert main(["segment", str(tmp_path / "text.png"), "--classes", "cat", "--out", str(tmp_path / "o")]) == 2
    assert "is not an image" in capsys.readouterr().err
    with pytest.raises(ValueError, match="corrupt or truncated"):
        main(["--debug", *argv])


def test_toy_vocabulary_warning(tmp_path, capsys):
    from elbo_lib.cli import warn_untrained
    from elbo_lib.toy.world import untrained_words
    assert untrained_words(["purple unicorn", "red circle", "Unicorn cat"]) == ["unicorn", "cat"]
    (tmp_path / "training.json").write_text("{}")
    warn_untrained(str(tmp_path), ["purple unicorn"])
    assert "never trained on 'unicorn'" in capsys.readouterr().err
    warn_untrained(str(tmp_path), ["purple circle"])
    warn_untrained(str(tmp_path / "not-toy"), ["purple unicorn"])  # not a toy model: no vocabulary to check
    assert capsys.readouterr().err == ""


def test_notebooks_are_written_clean(tmp_path):
    """Executed notebooks keep results, not widget state, progress bars or per-cell timings."""
    import nbformat
    nb = nbformat.v4.new_notebook(metadata={"widgets": {"state": {}}, "papermill": {"duration": 3.0}})
    cell = nbformat.v4.new_code_cell("x", metadata={"papermill": {"duration": 1.0}, "execution": {"iopub.status.busy": "2026-01-01T00:00:00Z"}})
    cell.outputs = [nbformat.v4.new_output("stream", name="stderr", text="50%|###"),
                    nbformat.v4.new_output("display_data", data={workbook.WIDGET_VIEW: {"model_id": "x"},
                                                                 "text/plain": "HBox()"}),
                    nbformat.v4.new_output("stream", name="stdout", text="result 0.5\n")]
    nb.cells.append(cell)
    nbformat.write(nb, tmp_path / "n.ipynb")
    workbook.clean_notebook(tmp_path / "n.ipynb")
    out = nbformat.read(tmp_path / "n.ipynb", as_version=4)
    assert "widgets" not in out.metadata and out.metadata.papermill.duration == 3.0
    assert [o.get("text") for o in out.cells[0].outputs] == ["result 0.5\n"] and not out.cells[0].metadata
    for path in (ROOT / "notebooks").glob("*.ipynb"):  # the committed ones
        committed = nbformat.read(path, as_version=4)
        assert "widgets" not in committed.metadata, path.name
        assert not any(workbook.WIDGET_VIEW in o.get("data", {}) for c in committed.cells if c.cell_type == "code"
                       for o in c.outputs), path.name


def test_index_verdict_is_computed_from_the_mechanism_and_effect_tables(tmp_path):
    assert workbook.verdict(tmp_path) == ""  # no mechanism run: no paragraph
    models = ["data/a", "data/b"]
    rows = []
    for m, (lo, hi) in zip(models, ((-0.2, 0.1), (0.05, 0.3))):
        rows += [{"model": m, "x": "S", "y": "iou", "rho": (lo + hi) / 2, "ci95": f"[{lo:+.3f}, {hi:+.3f}]"},
                 {"model": m, "x": "elbo_loss_a", "y": "elbo_loss_b", "rho": 0.7, "ci95": "[+0.600, +0.800]"}]
    pd.DataFrame(rows).to_csv(tmp_path / "mechanism_correlation.csv", index=False)
    pd.DataFrame([{"model": m, "variant": v, "minus none": g} for m in models for v, g in
                  (("ELBO S", 0.004), ("S permuted within image", 0.009), ("oracle (per-image best on grid)", 0.07))]
                 ).to_csv(tmp_path / "mechanism.csv", index=False)
    pd.DataFrame({"model": models, "own-object mass": [0.073, 0.2], "uniform baseline": [0.058, 0.05]}).to_csv(
        tmp_path / "mechanism_self_attention.csv", index=False)
    pd.DataFrame([{"model": m, "maps": "uncalibrated", "bucket": 0, "refined minus not": d} for m, d in
                  zip(models, (-0.338, 0.02))]).to_csv(tmp_path / "mechanism_refinement.csv", index=False)
    text = workbook.verdict(tmp_path)
    assert "holds on **1 of 2**" in text and "-0.05 [-0.200, +0.100], +0.17 [+0.050, +0.300]" in text
    assert "1.3x, 4.0x chance" in text and "-0.338, +0.020" in text and "Effect size" not in text
    pd.DataFrame([{"model": m, "split": s, "arm": a, "images": 900, "minus uncalibrated": d, "ci_lo": d - 0.006,
                   "ci_hi": d + 0.006} for m in models for s in ("toy-fresh-1", "pooled")
                  for a, d in (("ELBO S (paper)", 0.01), ("constant S=1/3 (Table VIII)", 0.02))]).to_csv(
        tmp_path / "effect_size.csv", index=False)
    text = workbook.verdict(tmp_path)
    assert "Effect size (held-out mIoU minus uncalibrated on 900, 900 images" in text
    assert "ELBO S (paper): +0.010 [+0.004, +0.016], +0.010 [+0.004, +0.016]; constant S=1/3" in text
    assert text in workbook.write_index([], figures=tmp_path)
