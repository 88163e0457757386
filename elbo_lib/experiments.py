"""The notebooks' front end: run the paper's ablations (:mod:`elbo_lib.ablations`) through the evaluation
harness, and the chores every notebook shares (paths, saving tables)."""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pandas as pd

from .ablations import (PAPER_ATT, PAPER_ELBO, SUPERSET, Variant, attention_subset, elbo_subset,  # noqa: F401
                        is_superset, paper_config, paper_subsets, paper_variants, superset_config, variant,
                        weighting_variant)
from .aligner import AlignConfig, finalize
from .baselines import get_baseline
from .datasets import authors_image_list, get_dataset
from .evaluation.runner import evaluate, measure_dataset, options
from .evaluation.runner import metrics_table as table  # noqa: F401  (one table builder, used by every notebook)
from .paths import REPO_ROOT
from .recorded import check  # noqa: F401  (every notebook's nbval-checked cell)

# what the notebooks use through ``import elbo_lib.experiments as ex`` (the ablations are defined in ablations.py)
__all__ = ["PAPER_ATT", "PAPER_ELBO", "SUPERSET", "Variant", "attention_subset", "elbo_subset", "is_superset",
           "paper_config", "paper_subsets", "paper_variants", "superset_config", "variant", "weighting_variant", "table", "use_repo_root",
           "output_dir", "DIFFPNG_NOTE", "run", "save_table", "results", "hardest_images", "conditions_table",
           "condition_drops_table", "method_heatmaps", "TOY_MODELS", "check", "served_as_page"]

# the toy models the workbook trains and ships: epsilon UNet, v-prediction UNet, SD 3-shaped MMDiT (rectified flow)
TOY_MODELS = ["data/toy-sd", "data/toy-sd-v", "data/toy-sd3"]


def use_repo_root() -> Path:
    """Make relative paths ('data/toy-sd', 'figures') resolve from the repository root, wherever the
    notebook kernel started."""
    os.chdir(REPO_ROOT)
    return REPO_ROOT


def served_as_page() -> bool:
    """Whether this kernel runs a notebook served as a Voila page (Voila gives its kernels VOILA_REQUEST_URL):
    the page shows only the app, not the notebook's checks."""
    return "VOILA_REQUEST_URL" in os.environ


def output_dir(out: str | Path = "figures") -> str:
    """Where a notebook writes its figures and tables: ``out``, unless ELBO_WORKBOOK_OUT redirects it
    (``make test`` does, so that validating notebooks never overwrites the reproduced figures/)."""
    out = Path(os.environ.get("ELBO_WORKBOOK_OUT", out))
    out.mkdir(parents=True, exist_ok=True)
    return str(out)


DIFFPNG_NOTE = ("not run: DiffPNG localises with the Segment Anything Model (SAM), whose weights cannot be "
                "downloaded on these machines; its row stays empty rather than filled with a guess")


def run(variants: list[Variant], model: str = "data/toy-sd", dataset: str = "toy-test", limit: int | None = None,
        seed: int = 0, cfg: AlignConfig | None = None, image_lists=None, **kw) -> dict:
    """Evaluate variants of one measurement (default: the superset; the first call per dataset fills the cache).
    ``image_lists``: a folder laid out as the authors' ``metadata/`` (their ``<name>/val_id.txt`` per real dataset),
    or None for each dataset's default list."""
    cfg = cfg or superset_config(model)
    if image_lists is not None:
        kw["image_list"] = authors_image_list(image_lists, dataset)
    mixed = [v.name for v in variants if (v.elbo_idx is not None) != is_superset(cfg)]
    if mixed:
        raise ValueError(f"variants {mixed} were built for a different measurement config than the one given")
    if not any(v.name == "uncalibrated" for v in variants):
        variants = [variant("uncalibrated", cfg, calibrate=False)] + list(variants)
    baselines = kw.pop("baselines", ())
    return evaluate(model, dataset, config=cfg, variants=variants, baselines=baselines, seed=seed,
                    **options(limit=limit, **kw))


def save_table(df: pd.DataFrame, name: str, figures: str | Path = "figures") -> None:
    """figures/<name>.csv and figures/<name>.md."""
    figures = Path(figures)
    figures.mkdir(parents=True, exist_ok=True)
    df.to_csv(figures / f"{name}.csv", index=False)
    (figures / f"{name}.md").write_text(df.to_markdown(index=False, floatfmt=".3f") + "\n")


def dataset_of(dataset, data_root=None, image_lists=None):
    """``dataset`` itself, or the named dataset (under ``data_root`` for a real one) on the authors' image list in
    ``image_lists`` (a folder laid out as their ``metadata/``) when given, else on its default list."""
    if not isinstance(dataset, str):
        return dataset
    return get_dataset(dataset, data_root, image_list=authors_image_list(image_lists, dataset))


def results(model: str = "data/toy-sd", dataset="toy-test", limit: int | None = None, seed: int = 0,
            cfg: AlignConfig | None = None, elbo_idx=PAPER_ELBO, attention_idx=PAPER_ATT, data_root=None,
            image_lists=None, **overrides):
    """(dataset, [(sample, AlignmentResult)]) for the first ``limit`` images, from the measurement cache."""
    cfg = cfg or superset_config(model)
    if not is_superset(cfg):
        elbo_idx = attention_idx = None
    ds = dataset_of(dataset, data_root, image_lists)
    fin = dataclasses.replace(cfg, **overrides)
    return ds, [(s, finalize(m, fin, elbo_idx, attention_idx)) for s, m in measure_dataset(model, ds, cfg, seed, limit)]


def hardest_images(samples, n: int) -> tuple[list[int], list[int]]:
    """Figs. 3-4's choice: the ``n`` images with at least two classes whose smallest object is smallest
    (their indices, smallest first), and each sample's smallest class id."""
    smallest = [min(s.class_ids, key=lambda k: (s.label == k).sum()) for s in samples]
    order = sorted((i for i, s in enumerate(samples) if len(s.class_ids) >= 2),
                   key=lambda i: (samples[i].label == smallest[i]).sum())[:n]
    return order, smallest


def conditions_table(metrics: dict) -> pd.DataFrame:
    """Target IoU per study level (Fig. 1 curves), one column per variant."""
    rows = []
    for name, e in metrics["variants"].items():
        rows += [{"variant": name, **c} for c in e.get("conditions", [])]
    return pd.DataFrame(rows)


def condition_drops_table(metrics: dict) -> pd.DataFrame:
    """Per study and variant: the target IoU's mean easy-minus-hard drop over the same scenes, with its 95%
    bootstrap interval (Fig. 1)."""
    rows = [{"study": s, "variant": name, "drop": d["mean"], "ci95": f"[{d['ci95'][0]:+.3f}, {d['ci95'][1]:+.3f}]",
             "scenes": d["n"]} for name, e in metrics["variants"].items() for s, d in e.get("condition_drops", {}).items()]
    return pd.DataFrame(rows)


def method_heatmaps(model: str = "data/toy-sd", dataset="toy-test", limit: int | None = None, seed: int = 0,
                    baselines=("DAAM", "DiffSegmenter", "OVAM", "Semantic DiffSeg"), cfg: AlignConfig | None = None,
                    data_root=None, image_lists=None):
    """{method: [(sample, heatmaps (N, H, W))]} for ELBO-T2IAlign, the uncalibrated maps and each
    baseline, on the same images (from the measurement cache)."""
    cfg = cfg or superset_config(model)
    ds = dataset_of(dataset, data_root, image_lists)
    out = {"ELBO-T2IAlign": [], "uncalibrated": []}
    for s, m in measure_dataset(model, ds, cfg, seed, limit):
        out["ELBO-T2IAlign"].append((s, variant("c", cfg).heatmaps_of(m)))
        out["uncalibrated"].append((s, variant("u", cfg, calibrate=False).heatmaps_of(m)))
    for name in baselines:
        b = get_baseline(name)
        bcfg = dataclasses.replace(cfg, **b.measure_overrides)
        out[name] = [(s, b.heatmaps(m, bcfg)) for s, m in
                     measure_dataset(model, ds, bcfg, seed, limit, baseline=b)]
    return out
