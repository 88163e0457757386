"""The background threshold a model's heatmaps are cut at, and where it came from.

An evaluation that chooses the held-out threshold on ``toy-val`` (Table II, Table III, ``python -m elbo_lib
evaluate``) records it next to the weights, in ``<model>/thresholds.json``, one entry per preset:

    {"official": {"threshold": 0.7, "variant": "calibrated", "split": "toy-val", "images": 200,
                  "miou_on_split": 0.41, "seed": 0, "model_key": "toy-sd-...", "config": {...AlignConfig...}}}

``segment`` then cuts at ``--threshold`` when given; else at the recorded threshold when the entry's
configuration and weights are the run's own; else at DAAM's 0.4, and says why in one line.
"""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path

from ..ablations import PAPER_ATT, PAPER_ELBO, SUPERSET, Variant, is_superset, paper_config
from ..aligner import PRESETS, AlignConfig
from ..paths import atomic_write_json
from .cache import model_key

FILE = "thresholds.json"
SPLIT = "toy-val"  # the only threshold split recorded: the toy models' held-out split
DEFAULT = 0.4
DEFAULT_SOURCE = "default 0.4 (DAAM's)"
GIVEN_SOURCE = "--threshold"
# what the paper's timesteps are within a superset measurement (ablations.SUPERSET): the paper config's own values
PAPER_TIMESTEPS = {k: getattr(AlignConfig(), k) for k in SUPERSET}
# how the work is batched, and the ELBO passes' attention kernel (SDPA or explicit: the same losses to float
# tolerance), change no heatmap
NOT_A_FIELD = ("batch_size", "elbo_attention")


@dataclass(frozen=True)
class Threshold:
    """A threshold, its source as ``segment`` reports it, and, for the default, the line that announces it."""

    value: float
    source: str
    note: str | None = None


def config_record(cfg: AlignConfig) -> dict:
    """The configuration fields that shape the heatmaps, as JSON values (what a recorded threshold was chosen for)."""
    fields = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in NOT_A_FIELD}
    return json.loads(json.dumps(fields, default=repr))


def paper_setting(v: Variant) -> AlignConfig | None:
    """The configuration a variant's heatmaps are those of, when it is the paper's timestep setting: its own on a
    paper-config measurement, the paper's timesteps in place of the superset's on a superset measurement;
    None for any other timestep subset (an ablation) or a variant with its own heatmap function (a baseline)."""
    if v.heatmaps is not None:
        return None
    if v.elbo_idx is None and v.attention_idx is None and not is_superset(v.config):
        return v.config
    if is_superset(v.config) and v.elbo_idx == PAPER_ELBO and v.attention_idx == PAPER_ATT:
        return dataclasses.replace(v.config, **PAPER_TIMESTEPS)
    return None


def preset_of(model: str | os.PathLike, cfg: AlignConfig) -> str | None:
    """The preset whose configuration for ``model`` ``cfg`` is, or None."""
    rec = config_record(cfg)
    return next((p for p in PRESETS if config_record(paper_config(model, p)) == rec), None)


def read(model: str | os.PathLike) -> dict:
    """``<model>/thresholds.json`` ({} when absent); a file that is not the recorded form is a ValueError."""
    path = Path(model) / FILE
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is not valid JSON ({e}); delete it, or pass --threshold") from e
    bad = [k for k, e in data.items() if not isinstance(e, dict) or not isinstance(e.get("threshold"), (int, float))
           or not 0 <= e["threshold"] <= 1] if isinstance(data, dict) else ["(top level)"]
    if bad:
        raise ValueError(f"{path}: entries {bad} have no threshold in [0, 1]; delete the file, or pass --threshold")
    return data


def record_heldout(model: str | os.PathLike, variants: list[Variant], metrics: dict, split: str | None,
                   seed: int) -> str | None:
    """Record the held-out threshold of the variant named 'calibrated' in ``<model>/thresholds.json`` (atomically),
    when it was chosen on ``toy-val`` for a local model directory and the variant is a preset's configuration at
    the paper's timesteps. An entry chosen on more images stays, whatever it was chosen for: a quick run (the
    test suite's) never replaces a full-size one, and a stale entry is refused by ``segment`` with its reason
    until a run of at least its size replaces it. Returns the preset recorded, or None."""
    path = Path(model)
    entry = metrics.get("variants", {}).get("calibrated", {}).get("heldout")
    v = next((v for v in variants if v.name == "calibrated"), None)
    if split != SPLIT or entry is None or v is None or not (path / "model_index.json").is_file():
        return None
    cfg = paper_setting(v)
    preset = preset_of(model, cfg) if cfg is not None else None
    if preset is None:
        return None
    new = {"threshold": float(entry["threshold"]), "variant": "calibrated", "split": split,
           "images": int(metrics["n_images_threshold_split"]), "miou_on_split": float(entry["miou_on_calibration_split"]),
           "seed": int(seed), "model_key": model_key(path), "config": config_record(cfg)}
    data = read(path)
    old = data.get(preset)
    if old and old.get("images", 0) > new["images"]:
        return None
    atomic_write_json(path / FILE, {**data, preset: new})
    return preset


def _mismatch(entry: dict, model: str | os.PathLike, cfg: AlignConfig) -> str | None:
    """Why a recorded entry does not apply to a run of ``cfg`` on ``model`` (None when it does)."""
    if entry.get("model_key") != model_key(model):
        return "it was chosen for other weights (the model changed since)"
    rec, own = entry.get("config", {}), config_record(cfg)
    diff = [f"{k}={own[k]!r} (recorded {rec.get(k)!r})" for k in own if rec.get(k) != own[k]]
    return f"this run's {', '.join(diff)}" if diff else None


def choose(given: float | None, model: str | os.PathLike, cfg: AlignConfig, preset: str) -> Threshold:
    """``--threshold`` when given; else the held-out threshold recorded for ``preset`` when it applies to ``cfg`` on
    ``model``; else DAAM's 0.4 with a note saying why."""
    if given is not None:
        if not 0 <= given <= 1:
            raise ValueError(f"--threshold must be in [0, 1], got {given}")
        return Threshold(float(given), GIVEN_SOURCE)
    path = Path(model) / FILE
    entry = read(model).get(preset)
    if entry is None:
        why = f"{path} records none for preset {preset!r}" if path.exists() else f"{model} has no {FILE}"
    else:
        why = _mismatch(entry, model, cfg)
        if why is None:
            return Threshold(float(entry["threshold"]), f"held-out on {entry.get('split', SPLIT)} ({path})")
        why = f"the threshold in {path} does not apply: {why}"
    return Threshold(DEFAULT, DEFAULT_SOURCE, f"warning: background threshold {DEFAULT} (DAAM's default): {why}; "
                                              "pass --threshold to choose one")
