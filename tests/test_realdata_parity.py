"""The official real-data protocol against the authors' evaluate_segmentation.py: the loaders, the prompts
and ``score`` on the fixtures in tests/fixtures/realdata (see its README), one per dataset layout."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from elbo_lib import AlignConfig
from elbo_lib import cli
from elbo_lib.cli import main
from elbo_lib.datasets import get_dataset
from elbo_lib.evaluation.official import (STEPS, binary_search, combine, image_counts, level_cutoffs, list_heatmaps,
                                          official_prompts, read_heatmap, resolve_class_id, score_heatmaps,
                                          write_heatmaps)
from elbo_lib.evaluation.runner import _caption

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "realdata"
DATASETS = {"voc": "voc", "context": "context", "coco": "coco-object", "ade20k": "ade20k"}  # fixture -> dataset


def _ref(folder: str) -> dict:
    return json.loads((FIXTURES / folder / "reference.json").read_text())


def _dataset(folder: str, **kw):
    return get_dataset(DATASETS[folder], FIXTURES / folder / "data", image_list=FIXTURES / folder / "val_id.txt",
                       labels="official", **kw)


def _score(folder: str, **kw) -> dict:
    d = FIXTURES / folder
    return score_heatmaps(d / "heatmaps", DATASETS[folder], d / "data", d / "val_id.txt", **kw)


@pytest.mark.parametrize("folder", list(DATASETS))
def test_loaders_read_every_fixture_image(folder):
    ref = _ref(folder)
    ds = _dataset(folder)
    assert Path(ds.label_dir) == FIXTURES / folder / ref["layout"]["gt_path"].format(
        data_root=ref["layout"]["data_root"], img_name="x").rsplit("/", 1)[0]
    assert ["background"] + ds.class_names == ref["class_names"] and len(ds) == len(ref["images"])
    for k, im in enumerate(ref["images"]):
        s = ds.load(k)
        raw = np.asarray(Image.open(ds.label_path(k)))
        assert s.id == im["name"] and s.image.shape == (im["height"], im["width"], 3)
        assert s.label.shape == raw.shape and np.unique(raw).tolist() == im["gt_raw_values"]
        assert s.class_ids == [c + 1 for c in im["cls_labels"]] and ds.phrases(s.class_ids) == im["classes"]
        if folder == "coco":  # uint8 gt + 1 (255 wraps to 0), ids > 80 -> background
            expect = (raw.astype(np.uint8) + np.uint8(1)).astype(np.int64)
            np.testing.assert_array_equal(s.label, np.where(expect > 80, 0, expect))
        elif folder == "voc":  # void kept as 255 (ignored)
            np.testing.assert_array_equal(s.label, raw)
        else:  # context 0..59, ADE20K 0 scored as background: read as they are
            np.testing.assert_array_equal(s.label, raw)
            assert 255 not in s.label


def test_project_reading_of_the_same_files():
    """The project's reading (the default) of the same layouts: ADE20K 0 and COCO unlabelled are ignored,
    COCO stuff is background; the project's class words are an option."""
    ade = get_dataset("ade20k", FIXTURES / "ade20k" / "data", image_list=FIXTURES / "ade20k" / "val_id.txt")
    assert 0 not in ade.label(0) and 255 in ade.label(0)
    coco = get_dataset("coco-object", FIXTURES / "coco" / "data", image_list=FIXTURES / "coco" / "val_id.txt",
                       class_words="project")
    lab = coco.label(0)
    raw = np.asarray(Image.open(coco.label_path(0)))
    assert (lab[raw == 255] == 255).all() and (lab[raw == 118] == 0).all() and (lab[raw == 0] == 1).all()
    assert coco.class_names[:4] == ["person", "bicycle", "car", "motorcycle"]
    with pytest.raises(ValueError, match="class_words must be one of"):
        get_dataset("voc", FIXTURES / "voc" / "data", class_words="authors")


@pytest.mark.parametrize("folder", list(DATASETS))
def test_official_prompts_equal_reference(folder):
    ref, ds, cfg = _ref(folder), _dataset(folder), AlignConfig.official()
    for k, im in enumerate(ref["images"]):
        s = ds.load(k)
        if not s.class_ids:  # COCO's image without an object: no prompt, no heatmap
            assert im["elbo_prompts"] == {} and im["caption"] is None and im["heatmaps"] == []
            continue
        texts, caption = official_prompts(ds.class_names, s.class_ids)
        assert texts == list(im["elbo_prompts"].values()) and caption == im["caption"]
        # the evaluation harness builds the same caption and ELBO texts from the dataset's words
        phrases = ds.phrases(s.class_ids)
        assert _caption(s, phrases, cfg) == im["caption"]
        assert [cfg.elbo_template.format(p) for p in phrases] == texts


@pytest.mark.parametrize("folder", list(DATASETS))
def test_score_reproduces_reference(folder):
    ref = _ref(folder)
    res = _score(folder)
    assert res["thresholds"] == ref["thresholds"]
    dev = np.abs(np.array(res["curve"]) - np.array(ref["miou_curve"])).max()
    assert dev <= 1e-6, dev
    s, b = res["searched"], ref["binary_search"]
    assert s["threshold"] == b["best_threshold"] and s["probes"] == b["probes"]
    assert s["miou"] == pytest.approx(b["best_miou"], abs=1e-6)
    assert res["grid_maximum"]["thresholds"] == ref["curve_global_max"]["thresholds"]
    assert res["grid_maximum"]["miou"] == pytest.approx(ref["curve_global_max"]["miou"], abs=1e-6)
    got = {c["id"]: c for c in res["per_class"]}
    want = {c["id"]: c for c in ref["at_best"]["per_class"]}
    assert sorted(got) == sorted(want)
    for cid, w in want.items():
        g = got[cid]
        assert (g["name"], g["P"], g["T"], g["TP"], g["instances"]) == (w["name"], w["P"], w["T"], w["TP"],
                                                                       w["instances"])
        assert g["IoU"] == pytest.approx(w["IoU"], abs=1e-9)
    for probe_t in (30, 50, 70):  # the README's probes
        assert res["curve"][STEPS.index(probe_t)] == pytest.approx(ref["miou_curve"][probe_t - 1], abs=1e-6)


def test_voc_search_stops_at_a_local_maximum():
    res = _score("voc")
    assert res["searched"]["threshold"] == 0.60 and res["searched"]["miou"] == pytest.approx(49.8132, abs=1e-4)
    assert res["grid_maximum"]["thresholds"] == [0.63] and res["grid_maximum"]["miou"] == pytest.approx(50.0255,
                                                                                                         abs=1e-4)


@pytest.mark.parametrize("folder", list(DATASETS))
def test_per_image_statistics_and_name_search(folder):
    """Their per-(image, class) tuples (P, T, TP, h, w, class, image) at the searched threshold, and the class id
    each heatmap file is scored as."""
    ref = _ref(folder)
    ds = _dataset(folder)
    files = list_heatmaps(FIXTURES / folder / "heatmaps", len(ds))
    step = round(ref["at_best"]["threshold"] * 100)
    cutoff = level_cutoffs([step])
    rows = []
    for k, im in enumerate(ref["images"]):
        label = ds.label(k)
        scored = {f.path.name: resolve_class_id(f.word, ds.categories) for f in files.get(k, [])}
        assert scored == im["heatmap_scored_as"] and sorted(scored) == sorted(im["heatmaps"])
        levels = {scored[f.path.name]: read_heatmap(f.path, label.shape) for f in files.get(k, [])}
        c = image_counts(*combine(levels, label.shape), label, 255 if folder == "voc" else None, cutoff)
        h, w = label.shape
        rows += [[int(c.P[0, j]), int(c.T[j]), int(c.TP[0, j]), h, w, int(cid), k]
                 for j, cid in enumerate(c.ids) if c.present[0, j]]
    assert sorted(rows) == sorted(ref["at_best"]["instance_statistics"])


def test_ade20k_own_class_ids():
    """The project option: 'stool', 'pot', 'screen' scored as their own ids (111, 126, 131), not 66 / 59."""
    ref = _ref("ade20k")
    res = _score("ade20k", class_ids="own")
    assert res["scored_as_other_class"] == {}
    named = _score("ade20k")
    assert named["scored_as_other_class"] == {"pot": {"own": 126, "scored_as": 66},
                                              "screen": {"own": 131, "scored_as": 59},
                                              "stool": {"own": 111, "scored_as": 66}}
    own = {c["id"]: c for c in res["per_class"]}
    assert own[111]["P"] > 0 and own[111]["TP"] > 0 and own[126]["TP"] > 0 and own[131]["TP"] > 0
    assert 66 not in own  # no toilet labelled or predicted without the name search
    assert res["searched"]["miou"] > ref["binary_search"]["best_miou"]


def test_binary_search_and_cutoffs_by_hand():
    curve = np.array([1.0, 2.0, 3.0, 2.0, 5.0, 6.0, 1.0])  # steps 1..7: mid 4 < 5 -> right half -> 6
    assert binary_search(curve, range(1, 8)) == (6, [[1, 7], [4, 5], [6, 7], [5, 6]])
    assert binary_search(np.ones(5), range(1, 6)) == (1, [[1, 5], [3, 4], [2, 3], [1, 2]])  # ties go left
    assert binary_search(np.ones(1), [5]) == (5, [[5, 5]])
    # float32 v / 255 < float32 t / 100 is the exact rule 100 v < 255 t (v = 51, 102, 153, 204 equal t = 20..80)
    np.testing.assert_array_equal(level_cutoffs(), [sum(100 * v < 255 * t for v in range(256)) for t in STEPS])


def test_image_counts_against_a_direct_count():
    rng = np.random.default_rng(0)
    label = rng.choice([0, 3, 7, 255], (30, 40))
    levels = {3: rng.integers(0, 256, (30, 40), dtype=np.uint8), 9: rng.integers(0, 256, (30, 40), dtype=np.uint8)}
    levels[9][:5] = levels[3][:5]  # ties go to the lower id
    best, arg = combine(levels, label.shape)
    steps = [1, 25, 50, 99]
    c = image_counts(best, arg, label, 255, level_cutoffs(steps))
    keep = label != 255
    for i, t in enumerate(steps):
        pred = np.where(best.astype(np.float32) / 255 < np.float32(t / 100), 0,
                        np.array([0, 3, 9])[np.argmax(np.stack([np.zeros_like(best), levels[3], levels[9]]), 0)])
        for j, cid in enumerate(c.ids):
            p, g = pred[keep] == cid, label[keep] == cid
            assert (c.P[i, j], c.T[j], c.TP[i, j]) == (p.sum(), g.sum(), (p & g).sum())
            assert c.present[i, j] == (p.any() or g.any())


def test_write_heatmaps_round_trip(tmp_path):
    h = np.stack([np.linspace(0, 1, 12).reshape(3, 4), np.full((3, 4), 0.5)])
    paths = write_heatmaps(tmp_path, 4, ["traffic light", "cat"], h)
    assert [p.name for p in paths] == ["4_traffic light.png", "4_cat.png"]
    back = read_heatmap(paths[0], (3, 4))
    np.testing.assert_array_equal(back, np.rint(h[0] * 255).astype(np.uint8))
    assert read_heatmap(paths[1], (3, 4))[0, 0] == 128  # 127.5 rounds half to even, as their cv2.imwrite
    assert list(list_heatmaps(tmp_path, 5)) == [4]
    for words, msg in ((["traffic_light", "cat"], "cannot name a heatmap file"), (["cat", "cat"], "repeat")):
        with pytest.raises(ValueError, match=msg):
            write_heatmaps(tmp_path, 0, words, h)
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        write_heatmaps(tmp_path, 0, ["a", "b"], h * 2)


def test_score_cli_writes_json_and_csv(tmp_path, capsys):
    d = FIXTURES / "voc"
    out = tmp_path / "out"
    assert main(["score", "--heatmaps", str(d / "heatmaps"), "--dataset", "voc", "--data-root", str(d / "data"),
                 "--image-list", str(d / "val_id.txt"), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "mIoU 49.8132 at threshold 0.60" in printed and "grid maximum 50.0255 at 0.63" in printed
    saved = json.loads((out / "official_score.json").read_text())
    assert saved["searched"]["threshold"] == 0.6 and len(saved["curve"]) == 99
    per_class = (out / "official_per_class.csv").read_text().splitlines()
    assert per_class[0] == "id,name,P,T,TP,instances,IoU"
    assert per_class[1].startswith("0,background,16586,17565,15204,8,")
    assert len((out / "official_curve.csv").read_text().splitlines()) == 100


def _bad_heatmaps(tmp_path, change) -> Path:
    folder = tmp_path / "heatmaps"
    shutil.copytree(FIXTURES / "voc" / "heatmaps", folder)
    change(folder)
    return folder


@pytest.mark.parametrize("case,message", [
    ("missing dir", "no heatmap directory"),
    ("unknown dataset", "unknown dataset 'imagenet' for official scoring; choose from voc, context"),
    ("class not in image", "heatmap 0_cat.png: class 'cat' (id 8) is not labelled in image 0 (fixture_0001)"),
    ("unknown word", "'kitten' is not a category key"),
    ("missing heatmap", "image 0 (fixture_0001) has no heatmap for its labelled classes ['dog']"),
    ("bad file name", "is not a heatmap file {k}_{class}.png"),
    ("index past list", "heatmap 8_cat.png: image index 8, but the image list has 8 images"),
    ("not grayscale", "is a RGB image"),
    ("bad class ids", "class_ids must be one of ['name-search', 'own']"),
    ("no image list", "no split list"),
])
def test_score_bad_inputs_are_one_line(case, message, tmp_path, capsys):
    d = FIXTURES / "voc"
    dog = d / "heatmaps" / "0_dog.png"
    changes = {
        "class not in image": lambda f: shutil.copy(dog, f / "0_cat.png"),
        "unknown word": lambda f: shutil.copy(dog, f / "0_kitten.png"),
        "missing heatmap": lambda f: (f / "0_dog.png").unlink(),
        "bad file name": lambda f: shutil.copy(dog, f / "0_dog_1.png"),
        "index past list": lambda f: shutil.copy(dog, f / "8_cat.png"),
        "not grayscale": lambda f: Image.open(dog).convert("RGB").save(f / "0_dog.png"),
    }
    heatmaps = _bad_heatmaps(tmp_path, changes.get(case, lambda f: None))
    argv = ["score", "--heatmaps", str(heatmaps), "--dataset", "voc", "--data-root", str(d / "data"),
            "--image-list", str(d / "val_id.txt"), "--out", str(tmp_path / "out")]
    if case == "missing dir":
        argv[2] = str(tmp_path / "nowhere")
    elif case == "unknown dataset":
        argv[4] = "imagenet"
    elif case == "bad class ids":
        argv += ["--class-ids", "authors"]
    elif case == "no image list":
        argv = argv[:7] + argv[9:]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and message in err[-1], err[-1]
    assert not any("Traceback" in ln for ln in err) and not (tmp_path / "out").exists()


def test_label_values_outside_the_convention(tmp_path):
    root = tmp_path / "data"
    shutil.copytree(FIXTURES / "context" / "data", root)
    lab = root / "VOCdevkit" / "VOC2010" / "SegmentationClassContext" / "fixture_0001.png"
    raw = np.asarray(Image.open(lab)).copy()
    raw[0, 0] = 255
    Image.fromarray(raw).save(lab)
    official = get_dataset("context", root, image_list=FIXTURES / "context" / "val_id.txt", labels="official")
    with pytest.raises(ValueError, match=r"fixture_0001.png has values \[255\] outside .*allowed 0\.\.59\)"):
        official.label(0)
    project = get_dataset("context", root, image_list=FIXTURES / "context" / "val_id.txt")
    assert project.label(0)[0, 0] == 255  # the project's reading ignores it


def test_layout_alternatives(tmp_path):
    """SegmentationClass instead of SegmentationClassAug, ADEChallengeData2016 directly under the root, and
    the default image lists (ImageSets for VOC, every label file for ADE20K)."""
    voc = tmp_path / "voc"
    shutil.copytree(FIXTURES / "voc" / "data", voc)
    base = voc / "VOCdevkit" / "VOC2012"
    (base / "SegmentationClassAug").rename(base / "SegmentationClass")
    (base / "ImageSets" / "Segmentation").mkdir(parents=True)
    (base / "ImageSets" / "Segmentation" / "val.txt").write_text("fixture_0002\nfixture_0001\n")
    ds = get_dataset("voc", voc, labels="official")
    assert ds.ids == ["fixture_0002", "fixture_0001"] and Path(ds.label_dir).name == "SegmentationClass"
    assert ds.load(1).class_ids == [12, 15]
    ade = tmp_path / "ade"
    shutil.copytree(FIXTURES / "ade20k" / "data" / "ade" / "ADEChallengeData2016", ade / "ADEChallengeData2016")
    ds = get_dataset("ade20k", ade, labels="official")
    assert ds.ids == [f"fixture_{i:04d}" for i in range(1, 9)]
    (tmp_path / "list.txt").write_text("fixture_0001\n\nfixture_0002\n")
    with pytest.raises(ValueError, match="line 2 is blank"):
        get_dataset("ade20k", ade, image_list=tmp_path / "list.txt")
    with pytest.raises(FileNotFoundError, match="none of .*coco_stuff164k.*coco_object"):
        get_dataset("coco-object", ade)


def test_segment_saves_heatmaps_in_the_authors_format(tmp_path, pipes, monkeypatch, capsys):
    monkeypatch.setattr(cli, "load_pipeline", lambda *a, **k: pipes["sd1"])
    img = tmp_path / "img.png"
    Image.fromarray((np.random.default_rng(0).random((32, 48, 3)) * 255).astype(np.uint8)).save(img)
    argv = ["segment", str(img), "--classes", "red circle,blue star", "--out", str(tmp_path / "out"),
            "--save-heatmaps", str(tmp_path / "heatmaps"), "--heatmap-index", "3"]
    assert main(argv) == 0
    files = list_heatmaps(tmp_path / "heatmaps", 4)
    assert [f.path.name for f in files[3]] == ["3_blue star.png", "3_red circle.png"]
    for i, word in enumerate(["red circle", "blue star"]):  # the same 8-bit maps as the project's own heatmap PNGs
        ours = np.asarray(Image.open(tmp_path / "out" / f"heatmap_{i:02d}_{word.replace(' ', '_')}.png"))
        np.testing.assert_array_equal(read_heatmap(tmp_path / "heatmaps" / f"3_{word}.png", (32, 48)), ours)
    capsys.readouterr()
    argv[3] = "traffic_light"
    assert main(argv) == 2  # refused before any model work
    assert "cannot name a heatmap file" in capsys.readouterr().err
