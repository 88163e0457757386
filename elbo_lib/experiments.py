"""The paper's ablations as variants of one cached superset measurement.

Every notebook measures with :data:`SUPERSET` (100 even ELBO timesteps, 30 attention timesteps
up to t = 0.6) and picks subsets, so one cold pass serves Tables II, VI-IX and Fig. 7:
- the paper's 20 "even" ELBO timesteps (1, 51, ..., 951) are every 5th superset timestep;
- the paper's 10 attention timesteps (t = 0.02 ... 0.2) are the first 10.
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np
import pandas as pd

from .aligner import AlignConfig
from .elbo import attention_timesteps, elbo_timesteps
from .evaluation.runner import Variant, evaluate

# the self-attention is averaged over the paper's 10 attention timesteps (t <= 0.2), as the authors'
SUPERSET = dict(elbo_steps=100, elbo_strategy="even", attention_steps=30, attention_t_max=0.6,
                self_attention_t_max=0.2)
SUPERSET_ELBO_T = elbo_timesteps(100, "even")
SUPERSET_ATT_T = attention_timesteps(30, 0.6)


REPO_ROOT = Path(__file__).resolve().parents[1]


def use_repo_root() -> Path:
    """Make relative paths ('data/toy-sd', 'figures') resolve from the repository root, wherever the
    notebook kernel started."""
    os.chdir(REPO_ROOT)
    return REPO_ROOT


def output_dir(out: str | Path = "figures") -> str:
    """Where a notebook writes its figures and tables: ``out``, unless ELBO_WORKBOOK_OUT redirects it
    (``make test`` does, so that validating notebooks never overwrites the reproduced figures/)."""
    out = Path(os.environ.get("ELBO_WORKBOOK_OUT", out))
    out.mkdir(parents=True, exist_ok=True)
    return str(out)


def paper_config(model: str = "data/toy-sd", **overrides) -> AlignConfig:
    """The paper's defaults plus the prompt templates a model directory recommends (toy model)."""
    from .models import dir_hints
    return AlignConfig(**{**dir_hints(model), **overrides})


def superset_config(model: str = "data/toy-sd", **overrides) -> AlignConfig:
    return paper_config(model, **{**SUPERSET, **overrides})


def is_superset(cfg: AlignConfig) -> bool:
    return all(getattr(cfg, k) == v for k, v in SUPERSET.items())


def elbo_subset(n: int = 20, strategy: str = "even", seed: int = 0) -> tuple[int, ...]:
    """Indices into the superset ELBO timesteps for ``n`` timesteps of a Table VII strategy."""
    if strategy == "even":
        if 100 % n:
            raise ValueError(f"'even' subsets of the 100-step superset need n dividing 100, got {n}")
        return tuple(range(0, 100, 100 // n)) if n > 1 else (50,)
    if strategy == "random":
        return tuple(sorted(np.random.default_rng([seed, 11]).choice(100, n, replace=False).tolist()))
    lo, hi = {"small": (0.0, 0.2), "middle": (0.4, 0.6), "large": (0.7, 0.9)}[strategy]
    inside = [k for k, t in enumerate(SUPERSET_ELBO_T) if lo <= t < hi]
    pick = np.linspace(0, len(inside) - 1, n).round().astype(int)
    return tuple(inside[i] for i in pick)


def attention_subset(count: int = 10, t_max: float = 0.2, t_min: float = 0.0) -> tuple[int, ...]:
    """Indices of ``count`` superset attention timesteps spread over (t_min, t_max]."""
    inside = [k for k, t in enumerate(SUPERSET_ATT_T) if t_min < t <= t_max + 1e-9]
    if count > len(inside):
        raise ValueError(f"only {len(inside)} superset attention timesteps lie in ({t_min}, {t_max}]")
    if len(inside) % count == 0:  # evenly spaced, ending at the range's end (0.04, 0.08, ... for 5 of 10)
        step = len(inside) // count
        return tuple(inside[i] for i in range(step - 1, len(inside), step))
    pick = np.linspace(len(inside) - 1, 0, count).round().astype(int)
    return tuple(inside[i] for i in sorted(set(pick.tolist())))


DIFFPNG_NOTE = ("not run: DiffPNG localises with the Segment Anything Model (SAM), whose weights cannot be "
                "downloaded on these machines; its row stays empty rather than filled with a guess")
PAPER_ELBO = elbo_subset(20, "even")
PAPER_ATT = attention_subset(10, 0.2)


def variant(name: str, cfg: AlignConfig, elbo_idx=PAPER_ELBO, attention_idx=PAPER_ATT, **overrides) -> Variant:
    """A finalize setting; on a superset measurement the default subsets are the paper's timesteps, on a
    measurement made with the paper's config they are all of its timesteps."""
    if not is_superset(cfg):
        if elbo_idx is not PAPER_ELBO or attention_idx is not PAPER_ATT:
            raise ValueError("timestep subsets need a superset measurement (experiments.superset_config)")
        return Variant(name, dataclasses.replace(cfg, **overrides))
    return Variant(name, dataclasses.replace(cfg, **overrides), tuple(elbo_idx), tuple(attention_idx))


def paper_variants(cfg: AlignConfig) -> list[Variant]:
    return [variant("uncalibrated", cfg, calibrate=False), variant("calibrated", cfg)]


def run(variants: list[Variant], model: str = "data/toy-sd", dataset: str = "toy-test", limit: int | None = None,
        seed: int = 0, cfg: AlignConfig | None = None, **kw) -> dict:
    """Evaluate variants of one measurement (default: the superset; the first call per dataset fills the cache)."""
    cfg = cfg or superset_config(model)
    mixed = [v.name for v in variants if (v.elbo_idx is not None) != is_superset(cfg)]
    if mixed:
        raise ValueError(f"variants {mixed} were built for a different measurement config than the one given")
    if not any(v.name == "uncalibrated" for v in variants):
        variants = [variant("uncalibrated", cfg, calibrate=False)] + list(variants)
    return evaluate(model, dataset, limit=limit, config=cfg, seed=seed, variants=variants, **kw)


def table(metrics: dict) -> pd.DataFrame:
    """One row per variant: oracle and held-out mIoU (with thresholds and CIs) and the paired
    held-out difference against 'uncalibrated'."""
    rows = []
    for name, e in metrics["variants"].items():
        r = {"variant": name, "oracle_mIoU": e["oracle"]["miou"], "oracle_thr": e["oracle"]["threshold"]}
        if "heldout" in e:
            h = e["heldout"]
            r.update(heldout_mIoU=h["miou"], heldout_thr=h["threshold"],
                     heldout_ci95=f"[{h['ci95'][0]:.3f}, {h['ci95'][1]:.3f}]")
            if "diff_ci95" in h:
                r.update(delta_vs_uncal=h["minus_uncalibrated"],
                         delta_ci95=f"[{h['diff_ci95'][0]:+.3f}, {h['diff_ci95'][1]:+.3f}]")
        rows.append(r)
    return pd.DataFrame(rows)


def save_table(df: pd.DataFrame, name: str, figures: str | Path = "figures") -> None:
    """figures/<name>.csv and figures/<name>.md."""
    figures = Path(figures)
    figures.mkdir(parents=True, exist_ok=True)
    df.to_csv(figures / f"{name}.csv", index=False)
    (figures / f"{name}.md").write_text(df.to_markdown(index=False, floatfmt=".3f") + "\n")


def results(model: str = "data/toy-sd", dataset="toy-test", limit: int | None = None, seed: int = 0,
            cfg: AlignConfig | None = None, elbo_idx=PAPER_ELBO, attention_idx=PAPER_ATT, data_root=None,
            **overrides):
    """(dataset, [(sample, AlignmentResult)]) for the first ``limit`` images, from the measurement cache."""
    from .aligner import finalize
    from .datasets import get_dataset
    from .evaluation.runner import measure_dataset
    cfg = cfg or superset_config(model)
    if not is_superset(cfg):
        elbo_idx = attention_idx = None
    ds = get_dataset(dataset, data_root) if isinstance(dataset, str) else dataset
    fin = dataclasses.replace(cfg, **overrides)
    return ds, [(s, finalize(m, fin, elbo_idx, attention_idx)) for s, m in measure_dataset(model, ds, cfg, seed, limit)]


def conditions_table(metrics: dict) -> pd.DataFrame:
    """Target IoU per study level (Fig. 1 curves), one column per variant."""
    rows = []
    for name, e in metrics["variants"].items():
        rows += [{"variant": name, **c} for c in e.get("conditions", [])]
    return pd.DataFrame(rows)


def method_heatmaps(model: str = "data/toy-sd", dataset="toy-test", limit: int | None = None, seed: int = 0,
                    baselines=("DAAM", "DiffSegmenter", "OVAM", "Semantic DiffSeg"), cfg: AlignConfig | None = None,
                    data_root=None):
    """{method: [(sample, heatmaps (N, H, W))]} for ELBO-T2IAlign, the uncalibrated maps and each
    baseline, on the same images (from the measurement cache)."""
    from .baselines import get_baseline
    from .datasets import get_dataset
    from .evaluation.runner import measure_dataset
    cfg = cfg or superset_config(model)
    ds = get_dataset(dataset, data_root) if isinstance(dataset, str) else dataset
    out = {"ELBO-T2IAlign": [], "uncalibrated": []}
    for s, m in measure_dataset(model, ds, cfg, seed, limit):
        out["ELBO-T2IAlign"].append((s, variant("c", cfg).heatmaps_of(m)))
        out["uncalibrated"].append((s, variant("u", cfg, calibrate=False).heatmaps_of(m)))
    for name in baselines:
        b = get_baseline(name)
        bcfg = dataclasses.replace(cfg, **b.measure_overrides)
        out[name] = [(s, b.heatmaps(m, bcfg)) for s, m in
                     measure_dataset(model, ds, bcfg, seed, limit, measure_fn=b.measure, method=b.method, elbo=b.elbo)]
    return out
