"""The zero-shot referring segmentation harness: measure (cached, resumable) -> finalize variants
(no denoiser calls) -> per-threshold intersections/unions -> oracle and held-out thresholds, CI,
per-class, size-bucket and condition tables.

``python -m elbo_lib evaluate --model data/toy-sd --dataset toy-test --out runs/toy-test``
"""
from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from ..ablations import Variant, paper_config, paper_subsets, paper_variants
from ..aligner import AlignConfig, Aligner
from ..baselines import Baseline, get_baseline
from ..datasets import SegmentationDataset, get_dataset
from ..models import load_pipeline
from ..tokens import default_caption
from ..paths import atomic_write_json
from .cache import MeasurementCache, input_bytes
from .metrics import best_threshold, bootstrap_miou, miou, paired_drop, per_image_iu

THRESHOLDS = np.round(np.arange(0.05, 1.0, 0.05), 2)


def _caption(sample, phrases: list[str], cfg: AlignConfig) -> str:
    return sample.caption or default_caption(phrases, cfg.caption_template, cfg.caption_item)


def measure_dataset(model: str | os.PathLike, dataset: SegmentationDataset, cfg: AlignConfig, seed: int = 0,
                    limit: int | None = None, cache_dir: str | os.PathLike | None = None, pipe=None,
                    nouns_only_elbo: bool = False, desc: str | None = None, device: str | None = None,
                    baseline: Baseline | None = None):
    """Yield (sample, measurement) for the first ``limit`` images, from the cache where present;
    the pipeline is loaded only on the first cache miss. A ``baseline`` with its own ``measure``
    replaces Aligner.measure (its ``method`` names it in the cache key, its ``elbo`` says whether the
    ELBO losses are measured)."""
    settings = {"align": cfg.measurement_key(), "seed": seed, "nouns_only_elbo": False}
    method, elbo = (baseline.method, baseline.elbo) if baseline is not None else ("aligner", True)
    if method != "aligner" or not elbo:
        settings.update(method=method, elbo=elbo)
    cache = MeasurementCache(cache_dir, model, settings)
    noun_idx, noun_cache = None, None
    if nouns_only_elbo:  # the noun-phrase measurement with the single nouns' ELBO at the paper's timesteps
        if baseline is not None:
            raise ValueError("nouns_only_elbo applies to ELBO-T2IAlign's measurement, not to a baseline's")
        noun_idx, _ = paper_subsets(cfg)
        noun_cache = MeasurementCache(cache_dir, model, {**settings, "nouns_only_elbo": True,
                                                         "elbo_idx": None if noun_idx is None else list(noun_idx)})
    aligner = None
    n = len(dataset) if limit is None else min(limit, len(dataset))
    for i in tqdm(range(n), desc=desc or f"measure {dataset.name}"):
        sample = dataset.load(i)
        if not sample.class_ids:
            continue
        phrases = dataset.phrases(sample.class_ids)
        caption = _caption(sample, phrases, cfg)
        inputs = input_bytes(sample.image, caption)
        m = noun_cache.get(sample.id, inputs) if noun_cache is not None else None
        if m is not None and m.classes == phrases:
            yield sample, m
            continue
        m = cache.get(sample.id, inputs)
        if m is None or m.classes != phrases or noun_cache is not None:
            if aligner is None:
                aligner = Aligner(pipe if pipe is not None else load_pipeline(model, device=device), cfg)
        if m is None or m.classes != phrases:
            if baseline is not None and baseline.measure is not None:
                m = baseline.measure(aligner, sample.image, phrases, caption, seed, cfg)
            else:
                m = aligner.measure(sample.image, phrases, caption, seed=seed, cfg=cfg, elbo=elbo)
            cache.put(sample.id, m, inputs)
        if noun_cache is not None:
            losses = aligner.elbo_losses(sample.image, [p.split()[-1] for p in phrases], seed, cfg, noun_idx)
            m = dataclasses.replace(m, elbo=losses)
            noun_cache.put(sample.id, m, inputs)
        yield sample, m


@dataclass
class Scored:
    """Per-image, per-threshold intersections/unions of one variant, plus per-(image, class) rows."""

    inter: np.ndarray   # (I, T, C + 1)
    union: np.ndarray   # (I, T, C + 1)
    pairs: pd.DataFrame  # image, class_id, area, study, level, target + I/U per threshold (columns i_k, u_k)


def score(pairs_sm, dataset: SegmentationDataset, variants: list[Variant], thresholds=THRESHOLDS) -> dict[str, Scored]:
    n_global = len(dataset.class_names)
    acc = {v.name: ([], [], []) for v in variants}
    for img_idx, (sample, m) in enumerate(pairs_sm):
        for v in variants:
            inter, union = per_image_iu(v.heatmaps_of(m), sample.label, sample.class_ids, thresholds, n_global,
                                        dataset.ignore_index)
            acc[v.name][0].append(inter.astype(np.int32))
            acc[v.name][1].append(union.astype(np.int32))
            meta = sample.meta or {}
            for gid in sample.class_ids:
                row = {"image": sample.id, "image_idx": img_idx, "class_id": gid, "class": dataset.class_names[gid - 1],
                       "area": int((sample.label == gid).sum()), "study": meta.get("study", ""),
                       "level": meta.get("level", -1), "knob": meta.get("knob", np.nan),
                       "is_target": dataset.class_names[gid - 1] == meta.get("target")}
                row.update({f"i_{k}": int(inter[k, gid]) for k in range(len(thresholds))})
                row.update({f"u_{k}": int(union[k, gid]) for k in range(len(thresholds))})
                acc[v.name][2].append(row)
    return {name: Scored(np.stack(i), np.stack(u), pd.DataFrame(rows)) for name, (i, u, rows) in acc.items()}


def _iou_at(df: pd.DataFrame, k: int) -> float:
    u = df[f"u_{k}"].sum()
    return float(df[f"i_{k}"].sum() / u) if u > 0 else float("nan")


def summarize(scored: dict[str, Scored], cal_scored: dict[str, Scored] | None, dataset: SegmentationDataset,
              thresholds=THRESHOLDS, n_boot: int = 1000, seed: int = 0) -> dict:
    """Oracle and held-out thresholds, mIoU with bootstrap CIs, paired differences against
    'uncalibrated', per-class IoU, IoU by ground-truth-area decile and by condition."""
    out: dict = {"thresholds": thresholds.tolist(), "variants": {}}
    base = scored.get("uncalibrated")
    for name, sc in scored.items():
        I, U = sc.inter.sum(0), sc.union.sum(0)  # (T, C + 1)
        t_or, k_or, m_or = best_threshold(I, U, thresholds)
        entry = {"oracle": {"threshold": t_or, "miou": m_or}}
        if cal_scored is not None:
            cI, cU = cal_scored[name].inter.sum(0), cal_scored[name].union.sum(0)
            t_ho, k_ho, m_cal = best_threshold(cI, cU, thresholds)
            entry["heldout"] = {"threshold": t_ho, "miou": miou(I[k_ho], U[k_ho]), "miou_on_calibration_split": m_cal}
        else:
            k_ho = None
        for which, k in (("oracle", k_or), ("heldout", k_ho)):
            if k is None:
                continue
            kb = None
            if base is not None and name != "uncalibrated":
                kb = best_threshold(base.inter.sum(0), base.union.sum(0), thresholds)[1] if which == "oracle" else \
                    best_threshold(cal_scored["uncalibrated"].inter.sum(0), cal_scored["uncalibrated"].union.sum(0),
                                   thresholds)[1]
            boot = bootstrap_miou(sc.inter[:, k], sc.union[:, k], n_boot, seed,
                                  None if kb is None else base.inter[:, kb], None if kb is None else base.union[:, kb])
            entry[which].update(boot)
            if kb is not None:
                entry[which]["minus_uncalibrated"] = entry[which]["miou"] - miou(base.inter[:, kb].sum(0),
                                                                                 base.union[:, kb].sum(0))
        k_rep = k_ho if k_ho is not None else k_or
        ious = np.where(U[k_rep] > 0, I[k_rep] / np.maximum(U[k_rep], 1), np.nan)
        entry["per_class_iou"] = {("background" if c == 0 else dataset.class_names[c - 1]): float(ious[c])
                                  for c in range(len(ious)) if U[k_rep, c] > 0}
        pairs = sc.pairs
        if len(pairs):
            edges = np.unique(np.percentile(pairs.area, np.linspace(0, 100, 11)))
            bucket = np.clip(np.searchsorted(edges, pairs.area, side="right") - 1, 0, len(edges) - 2)
            entry["size_buckets"] = [{"bucket": int(b), "area_min": float(edges[b]), "area_max": float(edges[b + 1]),
                                      "n": int((bucket == b).sum()), "iou": _iou_at(pairs[bucket == b], k_rep)}
                                     for b in range(len(edges) - 1) if (bucket == b).any()]
            tgt = pairs[pairs.is_target]
            if len(tgt):
                entry["conditions"] = [{"study": s, "level": int(lv), "knob": float(g.knob.mean()), "n": len(g),
                                        "target_iou": _iou_at(g, k_rep)} for (s, lv), g in tgt.groupby(["study", "level"])]
                per_target = tgt.assign(id=tgt.image, iou=tgt[f"i_{k_rep}"] / tgt[f"u_{k_rep}"].clip(lower=1))
                entry["condition_drops"] = {s: paired_drop(g, "iou", n_boot, seed) for s, g in per_target.groupby("study")}
        entry["reported_threshold"] = "heldout" if k_ho is not None else "oracle"
        out["variants"][name] = entry
    out["n_images"] = int(next(iter(scored.values())).inter.shape[0])
    return out


def heldout_default(name: str):
    return "toy-val" if name.startswith("toy-") and name != "toy-val" else ("toy-test" if name == "toy-val" else 0.2)


@dataclass(frozen=True)
class Protocol:
    """How results are scored: where the background threshold is chosen (``"auto"``: ``toy-val`` for a toy
    split, else a recorded 20% of the images; a dataset name; a fraction; None: oracle only), the
    thresholds searched, and the bootstrap resamples."""

    heldout: str | float | None = "auto"
    thresholds: tuple[float, ...] = tuple(THRESHOLDS.tolist())
    n_boot: int = 1000


@dataclass(frozen=True)
class Source:
    """Where measurements come from: the dataset root, image list (one name a line) and limit, the class
    words ("official": the authors' category keys, "project": the project's names; None: the dataset's
    default), the cache directory, a loaded pipeline or the device to load one on, and the single-noun ELBO
    prompt variant (Table IV)."""

    data_root: str | None = None
    image_list: str | os.PathLike | None = None
    class_words: str | None = None
    limit: int | None = None
    cache_dir: str | os.PathLike | None = None
    pipe: object = None
    device: str | None = None
    nouns_only_elbo: bool = False

    def __post_init__(self):
        if self.limit is not None and (isinstance(self.limit, bool) or not isinstance(self.limit, int) or self.limit < 1):
            raise ValueError(f"limit (--limit) must be a whole number of images >= 1, or None for all; got {self.limit!r}")


def options(**kw) -> dict:
    """``protocol=`` and ``source=`` for :func:`evaluate` from their fields by name (``limit=3, n_boot=50``)."""
    fields = {"protocol": Protocol, "source": Source}
    names = {f.name: group for group, cls in fields.items() for f in dataclasses.fields(cls)}
    unknown = sorted(set(kw) - set(names))
    if unknown:
        raise TypeError(f"unknown evaluation options {unknown}; known: {sorted(names)}")
    return {group: cls(**{k: v for k, v in kw.items() if names[k] == group}) for group, cls in fields.items()}


def evaluate(model: str | os.PathLike = "data/toy-sd", dataset: str | SegmentationDataset = "toy-test",
             config: AlignConfig | None = None, variants: list[Variant] | None = None, baselines=(), seed: int = 0,
             protocol: Protocol = Protocol(), source: Source = Source(), out: str | os.PathLike | None = None) -> dict:
    """Run the protocol; returns the metrics dict (and writes metrics.json, per_class.csv,
    size_buckets.csv, summary.md under ``out``)."""
    t0 = time.time()
    ds = dataset if isinstance(dataset, SegmentationDataset) else get_dataset(
        dataset, source.data_root, cache_dir=None, image_list=source.image_list, class_words=source.class_words)
    if config is None:
        config = Aligner(source.pipe).config if source.pipe is not None else paper_config(model)
    variants = variants or paper_variants(config)
    thresholds = np.asarray(protocol.thresholds)
    heldout = heldout_default(ds.name) if protocol.heldout == "auto" else protocol.heldout
    # one measurement per method: ELBO-T2IAlign's, then each baseline's (shared where settings coincide)
    groups = [(config, None, variants)]
    for name in baselines:
        b = get_baseline(name)
        bcfg = dataclasses.replace(config, **b.measure_overrides)
        groups.append((bcfg, b, [Variant(b.name, bcfg, heatmaps=b.heatmaps)]))
    split_note = {"evaluated": ds.name}
    scored, cal_scored = {}, ({} if heldout else None)
    cal_ds = (get_dataset(heldout, source.data_root, class_words=source.class_words)
              if isinstance(heldout, str) and heldout else None)
    for gcfg, baseline, gvars in groups:
        method = baseline.method if baseline is not None else "aligner"
        kw = dict(cache_dir=source.cache_dir, pipe=source.pipe, device=source.device, baseline=baseline,
                  nouns_only_elbo=source.nouns_only_elbo and baseline is None)  # baselines use no ELBO phrases
        eval_pairs = list(measure_dataset(model, ds, gcfg, seed, source.limit, desc=f"measure {ds.name} [{method}]", **kw))
        if cal_ds is not None:
            cal_pairs = list(measure_dataset(model, cal_ds, gcfg, seed, source.limit,
                                             desc=f"measure {heldout} (threshold split) [{method}]", **kw))
            cal_scored.update(score(cal_pairs, cal_ds, gvars, thresholds))
            split_note["threshold_split"] = heldout
        elif isinstance(heldout, float) and 0 < heldout < 1:
            perm = np.random.default_rng([seed, 31337]).permutation(len(eval_pairs))
            n_cal = max(1, int(round(heldout * len(eval_pairs))))
            cal_idx, ev_idx = sorted(perm[:n_cal]), sorted(perm[n_cal:])
            cal_scored.update(score([eval_pairs[i] for i in cal_idx], ds, gvars, thresholds))
            split_note.update(threshold_split=f"fraction {heldout} of {ds.name}",
                              calibration_ids=[eval_pairs[i][0].id for i in cal_idx])
            eval_pairs = [eval_pairs[i] for i in ev_idx]
        scored.update(score(eval_pairs, ds, gvars, thresholds))
    metrics = summarize(scored, cal_scored, ds, thresholds, protocol.n_boot, seed)
    metrics.update(model=str(model), dataset=ds.name, seed=seed, limit=source.limit, split=split_note,
                   config={k: (v if not callable(v) else repr(v)) for k, v in dataclasses.asdict(config).items()},
                   seconds=round(time.time() - t0, 1))
    if out is not None:
        write_outputs(metrics, Path(out))
    return metrics


def metrics_table(metrics: dict) -> pd.DataFrame:
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


def write_outputs(metrics: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "metrics.json", metrics, default=float)
    per_class = pd.DataFrame({n: e["per_class_iou"] for n, e in metrics["variants"].items()})
    per_class.index.name = "class"
    per_class.to_csv(out / "per_class.csv")
    buckets = []
    for n, e in metrics["variants"].items():
        buckets += [{"variant": n, **b} for b in e.get("size_buckets", [])]
    pd.DataFrame(buckets).to_csv(out / "size_buckets.csv", index=False)
    table = metrics_table(metrics)
    md = [f"# {metrics['dataset']} — {metrics['model']}", "",
          f"{metrics['n_images']} images; threshold split: {metrics['split'].get('threshold_split', 'none')}; "
          f"seed {metrics['seed']}.", "", table.to_markdown(index=False, floatfmt=".3f"), ""]
    if buckets:
        b = pd.DataFrame(buckets).pivot_table(index=["bucket", "area_min", "area_max"], columns="variant", values="iou")
        md += ["## IoU by ground-truth area decile (reported threshold)", "", b.reset_index().to_markdown(index=False, floatfmt=".3f"), ""]
    (out / "summary.md").write_text("\n".join(md))
