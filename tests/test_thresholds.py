"""The held-out threshold recorded with a model (thresholds.json) and how `segment` chooses its threshold."""
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from elbo_lib import cli
from elbo_lib.ablations import elbo_subset, paper_config, paper_variants, superset_config, variant
from elbo_lib.evaluation.cache import model_key
from elbo_lib.evaluation.thresholds import (DEFAULT, DEFAULT_SOURCE, FILE, GIVEN_SOURCE, choose, config_record,
                                            read, record_heldout)
from elbo_lib.experiments import TOY_MODELS

ROOT = Path(__file__).resolve().parents[1]


def fake_model(tmp_path) -> Path:
    d = tmp_path / "model"
    (d / "unet").mkdir(parents=True)
    (d / "model_index.json").write_text('{"_class_name": "StableDiffusionPipeline"}')
    (d / "unet" / "w.safetensors").write_bytes(b"weights")
    return d


def metrics(threshold: float, images: int, miou: float = 0.5) -> dict:
    return {"variants": {"calibrated": {"heldout": {"threshold": threshold, "miou_on_calibration_split": miou}}},
            "n_images_threshold_split": images}


def test_record_then_choose(tmp_path):
    d = fake_model(tmp_path)
    cfg = paper_config(d)
    first = choose(None, d, cfg, "official")
    assert (first.value, first.source) == (DEFAULT, DEFAULT_SOURCE) and f"{d} has no {FILE}" in first.note
    assert record_heldout(d, paper_variants(cfg), metrics(0.65, 50), "toy-val", 0) == "official"
    entry = read(d)["official"]
    assert entry["threshold"] == 0.65 and entry["images"] == 50 and entry["model_key"] == model_key(d)
    got = choose(None, d, cfg, "official")
    assert (got.value, got.source, got.note) == (0.65, f"held-out on toy-val ({d / FILE})", None)
    assert choose(0.3, d, cfg, "official").source == GIVEN_SOURCE and choose(0.3, d, cfg, "official").value == 0.3
    for bad in (1.5, -0.1, float("nan")):
        with pytest.raises(ValueError, match=r"--threshold must be in \[0, 1\]"):
            choose(bad, d, cfg, "official")
    # batching and the ELBO passes' attention kernel change no heatmap: the record applies
    same = dataclasses.replace(cfg, batch_size=3, elbo_attention="explicit")
    assert choose(None, d, same, "official").value == 0.65
    # another configuration, preset or weights: the recorded threshold does not apply, and the default says why
    other = choose(None, d, dataclasses.replace(cfg, gamma=0.5), "official")
    assert other.value == DEFAULT and other.source == DEFAULT_SOURCE and "gamma=0.5 (recorded 0.333" in other.note
    assert "records none for preset 'project'" in choose(None, d, paper_config(d, "project"), "project").note
    (d / "unet" / "w.safetensors").write_bytes(b"retrained")
    assert "chosen for other weights" in choose(None, d, cfg, "official").note


def test_a_smaller_run_never_replaces_a_larger_one(tmp_path):
    d = fake_model(tmp_path)
    cfg = paper_config(d)
    record_heldout(d, paper_variants(cfg), metrics(0.7, 200), "toy-val", 0)
    assert record_heldout(d, paper_variants(cfg), metrics(0.55, 60), "toy-val", 0) is None
    assert read(d)["official"]["threshold"] == 0.7
    assert record_heldout(d, paper_variants(cfg), metrics(0.75, 300), "toy-val", 0) == "official"
    assert read(d)["official"]["threshold"] == 0.75
    # new weights: a smaller run still leaves the entry (the test suite's quick runs never rewrite a shipped
    # record); segment refuses the stale entry with its reason, and a run of at least its size replaces it
    (d / "unet" / "w.safetensors").write_bytes(b"retrained")
    assert record_heldout(d, paper_variants(cfg), metrics(0.6, 10), "toy-val", 0) is None
    assert "chosen for other weights" in choose(None, d, cfg, "official").note
    assert record_heldout(d, paper_variants(cfg), metrics(0.6, 300), "toy-val", 0) == "official"
    assert choose(None, d, cfg, "official").value == 0.6


def test_only_a_presets_paper_setting_on_toy_val_is_recorded(tmp_path):
    d = fake_model(tmp_path)
    cfg, sup = paper_config(d), superset_config(d)
    assert record_heldout(d, paper_variants(cfg), metrics(0.7, 50), "fraction 0.2 of folder", 0) is None
    assert record_heldout(d, paper_variants(cfg), metrics(0.7, 50), None, 0) is None
    assert record_heldout(d, [variant("calibrated", sup, elbo_idx=elbo_subset(5))], metrics(0.7, 50), "toy-val", 0) is None
    assert record_heldout(d, paper_variants(paper_config(d, elbo_steps=5)), metrics(0.7, 50), "toy-val", 0) is None
    assert record_heldout(tmp_path / "not-a-model", paper_variants(cfg), metrics(0.7, 50), "toy-val", 0) is None
    assert not (d / FILE).exists()
    # the superset measurement at the paper's timesteps (Table II) is the paper's configuration
    assert record_heldout(d, paper_variants(sup), metrics(0.7, 50), "toy-val", 0) == "official"
    assert read(d)["official"]["config"] == config_record(cfg)
    assert record_heldout(d, paper_variants(paper_config(d, "project")), metrics(0.6, 50), "toy-val", 0) == "project"
    assert set(read(d)) == {"official", "project"}


def test_thresholds_file_is_no_part_of_the_model_key(tmp_path):
    d = fake_model(tmp_path)
    k = model_key(d)
    record_heldout(d, paper_variants(paper_config(d)), metrics(0.7, 50), "toy-val", 0)
    assert (d / FILE).exists() and model_key(d) == k  # recording a threshold leaves the measurement cache valid


@pytest.mark.parametrize("text,message", [("{not json", "is not valid JSON"),
                                          ('{"official": {"threshold": 7}}', "no threshold in [0, 1]"),
                                          ('[0.7]', "no threshold in [0, 1]")])
def test_a_broken_file_is_a_one_line_error(tmp_path, text, message):
    d = fake_model(tmp_path)
    (d / FILE).write_text(text)
    with pytest.raises(ValueError, match="pass --threshold") as e:
        choose(None, d, paper_config(d), "official")
    assert message in str(e.value) and "\n" not in str(e.value)
    assert choose(0.5, d, paper_config(d), "official").value == 0.5  # --threshold needs no file


@pytest.mark.parametrize("model", TOY_MODELS)
def test_shipped_records_fit_the_shipped_weights(model):
    """Each toy model's recorded held-out threshold was chosen for its current weights and official configuration
    (a retrained model without a fresh Table II / III run would fail here)."""
    d = ROOT / model
    entry = read(d).get("official")
    if entry is None:
        pytest.skip(f"{model} has no recorded threshold")
    got = choose(None, d, paper_config(d), "official")
    assert got.note is None and got.value == entry["threshold"], got.note
    assert entry["split"] == "toy-val" and entry["images"] >= 100


def test_segment_announces_the_default(tmp_path, monkeypatch, capsys):
    """No --threshold and nothing recorded: DAAM's 0.4, said in one 'warning:' line, and written in result.json."""
    from elbo_lib.models.random_init import tiny_sd_pipeline
    pipe = tiny_sd_pipeline()
    monkeypatch.setattr(cli, "load_pipeline", lambda *a, **k: pipe)
    img = tmp_path / "img.png"
    Image.fromarray((np.random.default_rng(0).random((32, 32, 3)) * 255).astype(np.uint8)).save(img)
    argv = ["segment", str(img), "--classes", "red circle,blue star", "--model", str(tmp_path / "m"),
            "--out", str(tmp_path / "out")]
    assert cli.main(argv) == 0
    err = [ln for ln in capsys.readouterr().err.splitlines() if "threshold" in ln]
    assert len(err) == 1 and err[0].startswith("warning: background threshold 0.4") and "--threshold" in err[0]
    res = json.loads((tmp_path / "out" / "result.json").read_text())
    assert (res["threshold"], res["threshold_source"]) == (DEFAULT, DEFAULT_SOURCE)
    assert cli.main([*argv, "--threshold", "0.55"]) == 0
    assert "threshold" not in capsys.readouterr().err
    res = json.loads((tmp_path / "out" / "result.json").read_text())
    assert (res["threshold"], res["threshold_source"]) == (0.55, GIVEN_SOURCE)
    mask = np.asarray(Image.open(tmp_path / "out" / "mask.png"))
    heat = np.stack([np.asarray(Image.open(tmp_path / "out" / f"heatmap_0{i}_{c}.png")) / 255
                     for i, c in enumerate(["red_circle", "blue_star"])])
    clear = np.abs(heat.max(0) - 0.55) > 1 / 255  # pixels the 8-bit rounding cannot move across the threshold
    np.testing.assert_array_equal((mask > 0)[clear], (heat.max(0) >= 0.55)[clear])
    assert cli.main([*argv, "--threshold", "2"]) == 2
    assert "--threshold must be in [0, 1], got 2.0" in capsys.readouterr().err
