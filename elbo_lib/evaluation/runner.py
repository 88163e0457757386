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

from ..ablations import Variant, paper_config, paper_variants
from ..aligner import AlignConfig, Aligner
from ..baselines import Baseline, NotRunnable, get_baseline
from ..datasets import DATASETS, SegmentationDataset, get_dataset
from ..models import adapter_for, default_device_dtype, denoiser_dtype, load_pipeline
from ..timing import denoiser_passes
from ..tokens import CaptionTooLong, default_caption
from ..paths import atomic_write_json
from .cache import input_bytes, measurement_caches
from .metrics import best_threshold, bootstrap_miou, iou_at, miou, paired_drop, per_image_iu, size_buckets
from .official import (CLASS_IDS, PROJECT, collect_official, halves, level_cutoffs, score_official_image,
                       summarize_official)
from .plan import check_captions, make_plan
from .scaleout import Processes, processes
from .thresholds import FILE as THRESHOLDS_FILE, record_heldout

THRESHOLDS = np.round(np.arange(0.05, 1.0, 0.05), 2)


def _caption(sample, phrases: list[str], cfg: AlignConfig) -> str:
    return sample.caption or default_caption(phrases, cfg.caption_template, cfg.caption_item)


def measure_dataset(model: str | os.PathLike, dataset: SegmentationDataset, cfg: AlignConfig, seed: int = 0,
                    limit: int | None = None, cache_dir: str | os.PathLike | None = None, pipe=None,
                    nouns_only_elbo: bool = False, desc: str | None = None, device: str | None = None,
                    baseline: Baseline | None = None, keep_empty: bool = False, on_first=None):
    """Yield (sample, measurement) for the first ``limit`` images, from the cache where present;
    the pipeline is loaded only on the first cache miss. A ``baseline`` with its own ``measure``
    replaces Aligner.measure (its ``method`` names it in the cache key, its ``elbo`` says whether the
    ELBO losses are measured). Images without classes are skipped, or yielded as (sample, None) with
    ``keep_empty``. Each image measured adds its time to the model's rate record in the cache;
    ``on_first(seconds, passes, bytes)`` is called after the first. A caption whose classes do not fit the
    text encoder stops the run with an error naming the image (no class is dropped)."""
    n = len(dataset) if limit is None else min(limit, len(dataset))
    for _, sample, m in measure_images(model, dataset, cfg, range(n), seed, cache_dir, pipe, nouns_only_elbo, desc,
                                       device, baseline, keep_empty, on_first):
        yield sample, m


def measure_images(model: str | os.PathLike, dataset: SegmentationDataset, cfg: AlignConfig, indices, seed: int = 0,
                   cache_dir: str | os.PathLike | None = None, pipe=None, nouns_only_elbo: bool = False,
                   desc: str | None = None, device: str | None = None, baseline: Baseline | None = None,
                   keep_empty: bool = False, on_first=None, procs: Processes = Processes(), skip_cached: bool = False):
    """:func:`measure_dataset` over the images ``indices`` of ``dataset``, yielding (index, sample, measurement):
    one process's share of a scaled-out run (``procs``: its rate record, and a progress bar on the main process
    only). ``skip_cached``: an image whose cache files exist is passed over without reading them (filling the
    cache)."""
    elbo = baseline.elbo if baseline is not None else True
    cache, noun_cache, noun_idx = measurement_caches(cache_dir, model, cfg, seed, baseline, nouns_only_elbo,
                                                     denoiser_dtype(model, device, pipe))
    aligner = None
    for i in tqdm(indices, desc=(desc or f"measure {dataset.name}") + procs.label(), disable=not procs.is_main):
        sample = dataset.load(i)
        if not sample.class_ids:
            if keep_empty:
                yield i, sample, None
            continue
        phrases = dataset.phrases(sample.class_ids)
        caption = _caption(sample, phrases, cfg)
        inputs = input_bytes(sample.image, caption)
        if skip_cached and all(c.has(sample.id, inputs) for c in (cache, noun_cache) if c is not None):
            continue
        m = noun_cache.get(sample.id, inputs) if noun_cache is not None else None
        if m is not None and m.classes == phrases:
            yield i, sample, m
            continue
        m = cache.get(sample.id, inputs)
        if m is not None and m.classes == phrases and noun_cache is None:
            yield i, sample, m
            continue
        if aligner is None:  # something to measure: the pipeline loads on the first cache miss
            aligner = Aligner(pipe if pipe is not None else load_pipeline(model, device=device), cfg)
        t0, passes = time.perf_counter(), 0
        try:
            if m is None or m.classes != phrases:
                if baseline is not None and baseline.measure is not None:
                    m = baseline.measure(aligner, sample.image, phrases, caption, seed, cfg)
                else:
                    m = aligner.measure(sample.image, phrases, caption, seed=seed, cfg=cfg, elbo=elbo)
                cache.put(sample.id, m, inputs)
                passes += (baseline.denoiser_passes(cfg, len(phrases)) if baseline is not None
                           else denoiser_passes(cfg, len(phrases), elbo))
        except CaptionTooLong as e:
            raise CaptionTooLong(f"image {sample.id} (image {i} of {dataset.name}): {e}") from e
        if noun_cache is not None:
            losses = aligner.elbo_losses(sample.image, [p.split()[-1] for p in phrases], seed, cfg, noun_idx)
            m = dataclasses.replace(m, elbo=losses)
            noun_cache.put(sample.id, m, inputs)
            passes += len(phrases) * (len(noun_idx) if noun_idx is not None else cfg.elbo_steps)
        seconds = time.perf_counter() - t0
        nbytes = cache.file_size(sample.id, inputs) + (noun_cache.file_size(sample.id, inputs) if noun_cache else 0)
        cache.record_rate(aligner.adapter.device.type, seconds, passes, nbytes, procs.index)
        if on_first is not None:
            on_first(seconds, passes, nbytes)
            on_first = None
        yield i, sample, m


@dataclass
class Scored:
    """Per-image, per-threshold intersections/unions of one variant, plus per-(image, class) rows."""

    inter: np.ndarray   # (I, T, C + 1)
    union: np.ndarray   # (I, T, C + 1)
    pairs: pd.DataFrame  # image, class_id, area, study, level, target + I/U per threshold (columns i_k, u_k)


@dataclass
class ImageScore:
    """One image's intersections/unions (T, C + 1) and per-class rows by variant name (what :func:`score` keeps
    of it; scaled-out runs make these where the image is measured and combine them with :func:`collect`)."""

    id: str
    by_variant: dict[str, tuple[np.ndarray, np.ndarray, list[dict]]]


def score_image(sample, m, dataset: SegmentationDataset, variants: list[Variant], thresholds=THRESHOLDS) -> ImageScore:
    n_global = len(dataset.class_names)
    out = {}
    for v in variants:
        inter, union = per_image_iu(v.heatmaps_of(m), sample.label, sample.class_ids, thresholds, n_global,
                                    dataset.ignore_index)
        meta = sample.meta or {}
        rows = []
        for gid in sample.class_ids:
            row = {"image": sample.id, "image_idx": None, "class_id": gid, "class": dataset.class_names[gid - 1],
                   "area": int((sample.label == gid).sum()), "study": meta.get("study", ""),
                   "level": meta.get("level", -1), "knob": meta.get("knob", np.nan),
                   "is_target": dataset.class_names[gid - 1] == meta.get("target")}
            row.update({f"i_{k}": int(inter[k, gid]) for k in range(len(thresholds))})
            row.update({f"u_{k}": int(union[k, gid]) for k in range(len(thresholds))})
            rows.append(row)
        out[v.name] = (inter.astype(np.int32), union.astype(np.int32), rows)
    return ImageScore(sample.id, out)


def collect(images: list[ImageScore], variants: list[Variant]) -> dict[str, Scored]:
    """The per-image scores of a list of images, in order (a row's ``image_idx`` is its image's position)."""
    acc = {v.name: ([], [], []) for v in variants}
    for img_idx, im in enumerate(images):
        for name, (inter, union, rows) in im.by_variant.items():
            a = acc[name]
            a[0].append(inter)
            a[1].append(union)
            a[2].extend({**row, "image_idx": img_idx} for row in rows)
    return {name: Scored(np.stack(i), np.stack(u), pd.DataFrame(rows)) for name, (i, u, rows) in acc.items()}


def score(pairs_sm, dataset: SegmentationDataset, variants: list[Variant], thresholds=THRESHOLDS) -> dict[str, Scored]:
    return collect([score_image(sample, m, dataset, variants, thresholds) for sample, m in pairs_sm], variants)


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
            entry["size_buckets"] = size_buckets(pairs, k_rep)
            tgt = pairs[pairs.is_target]
            if len(tgt):
                entry["conditions"] = [{"study": s, "level": int(lv), "knob": float(g.knob.mean()), "n": len(g),
                                        "target_iou": iou_at(g, k_rep)}
                                       for (s, lv), g in tgt.groupby(["study", "level"])]
                per_target = tgt.assign(id=tgt.image, iou=tgt[f"i_{k_rep}"] / tgt[f"u_{k_rep}"].clip(lower=1))
                entry["condition_drops"] = {s: paired_drop(g, "iou", n_boot, seed) for s, g in per_target.groupby("study")}
        entry["reported_threshold"] = "heldout" if k_ho is not None else "oracle"
        out["variants"][name] = entry
    out["n_images"] = int(next(iter(scored.values())).inter.shape[0])
    if cal_scored:
        out["n_images_threshold_split"] = int(next(iter(cal_scored.values())).inter.shape[0])
    return out


def heldout_default(name: str):
    return "toy-val" if name.startswith("toy-") and name != "toy-val" else ("toy-test" if name == "toy-val" else 0.2)


REAL_PROTOCOLS = ("official", "project")  # how the four real datasets are scored (toy splits: always the project's)


@dataclass(frozen=True)
class Protocol:
    """How results are scored. On the toy splits and folders, the project's protocol: where the background
    threshold is chosen (``heldout``: ``"auto"`` is ``toy-val`` for a toy split, else a recorded 20% of the
    images; a dataset name; a fraction; None: oracle only), the ``thresholds`` searched, ``n_boot`` bootstrap
    resamples. On voc, context, coco-object and ade20k, ``real`` chooses: ``"official"`` (default), the authors'
    evaluation (labels read as they read them, 8-bit heatmaps, their threshold search on all scored images: the
    oracle column as in the paper, with the grid maximum; ``heldout="auto"`` adds the cross-fitted held-out column,
    None leaves it out; ``class_ids`` their name search or "own", see evaluation.official), or ``"project"``, the
    project's protocol as above (a labelled extra)."""

    heldout: str | float | None = "auto"
    thresholds: tuple[float, ...] = tuple(THRESHOLDS.tolist())
    n_boot: int = 1000
    real: str = "official"
    class_ids: str = "name-search"

    def __post_init__(self):
        if self.real not in REAL_PROTOCOLS:
            raise ValueError(f"the real-data protocol (--protocol) must be one of {list(REAL_PROTOCOLS)}, "
                             f"got {self.real!r}")
        if self.class_ids not in CLASS_IDS:
            raise ValueError(f"class_ids (--class-ids) must be one of {list(CLASS_IDS)}, got {self.class_ids!r}")


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
             protocol: Protocol = Protocol(), source: Source = Source(),
             out: str | os.PathLike | None = None) -> dict | None:
    """Run the protocol; returns the metrics dict (and writes metrics.json, per_class.csv,
    size_buckets.csv, summary.md under ``out``). On a real dataset it first prints the plan (images, pairs,
    measurements to make, estimated time) and checks the captions of the images still to measure. Under
    ``accelerate launch`` with several processes each measures and scores its share of the images and the main
    process combines them and writes the metrics (scaleout.py); the others return None."""
    t0 = time.time()
    name = dataset.name if isinstance(dataset, SegmentationDataset) else dataset
    official = name in DATASETS and protocol.real == "official"
    if official and protocol.heldout not in ("auto", None):
        raise ValueError(f"held-out {protocol.heldout!r}: on {name} the official protocol's held-out column is "
                         "cross-fitted ('auto') or left out (None/'none'); a fraction or a dataset is the project "
                         "protocol's (--protocol project)")
    ds = _dataset(dataset, source, official)
    if config is None:
        config = Aligner(source.pipe).config if source.pipe is not None else paper_config(model)
    variants = variants or paper_variants(config)
    thresholds = np.asarray(protocol.thresholds)
    heldout = heldout_default(ds.name) if protocol.heldout == "auto" else protocol.heldout
    groups = _groups(config, variants, baselines)
    procs = processes(source.device)
    device = procs.device if procs.count > 1 else source.device  # each process of a scaled-out run: its own
    pipe, first = _prepare(model, ds, groups, seed, source, procs, device)
    split_note = {"evaluated": ds.name}
    scored, cal_scored, official_scored, official_info = {}, ({} if heldout else None), {}, {}
    cal_ds = (get_dataset(heldout, source.data_root, class_words=source.class_words)
              if isinstance(heldout, str) and heldout and not official else None)
    cutoffs = level_cutoffs() if official else None

    def shared(d: SegmentationDataset, gcfg, scorer, **kw):
        """Each process measures and scores its share of ``d``'s first ``limit`` images; the main process gets
        every image's score in image order, the others None."""
        n = len(d) if source.limit is None else min(source.limit, len(d))
        return procs.gather([(i, scorer(sample, m)) for i, sample, m in
                             measure_images(model, d, gcfg, procs.shard(n), seed, procs=procs, **kw)])

    for gcfg, baseline, gvars, label in groups:
        method = baseline.method if baseline is not None else "aligner"
        kw = dict(cache_dir=source.cache_dir, pipe=pipe, device=device, baseline=baseline,
                  nouns_only_elbo=source.nouns_only_elbo and baseline is None)  # baselines use no ELBO phrases
        if official:  # one image at a time: the real models' measurements are too large to keep
            images = shared(ds, gcfg, lambda s, m: score_official_image(s, m, ds, gvars, cutoffs, protocol.class_ids),
                            desc=f"measure {ds.name} [{method}]", keep_empty=True, on_first=first.get(label), **kw)
            if images is not None:
                got, info = collect_official(images, ds, gvars, protocol.class_ids)
                official_scored.update(got)
                official_info = official_info or info
            continue
        evals = shared(ds, gcfg, lambda s, m: score_image(s, m, ds, gvars, thresholds),
                       desc=f"measure {ds.name} [{method}]", on_first=first.get(label), **kw)
        cals = (shared(cal_ds, gcfg, lambda s, m: score_image(s, m, cal_ds, gvars, thresholds),
                       desc=f"measure {heldout} (threshold split) [{method}]", **kw) if cal_ds is not None else None)
        if not procs.is_main:
            continue
        if cal_ds is not None:
            cal_scored.update(collect(cals, gvars))
            split_note["threshold_split"] = heldout
        elif isinstance(heldout, float) and 0 < heldout < 1:
            perm = np.random.default_rng([seed, 31337]).permutation(len(evals))
            n_cal = max(1, int(round(heldout * len(evals))))
            cal_idx, ev_idx = sorted(perm[:n_cal]), sorted(perm[n_cal:])
            cal_scored.update(collect([evals[i] for i in cal_idx], gvars))
            split_note.update(threshold_split=f"fraction {heldout} of {ds.name}",
                              calibration_ids=[evals[i].id for i in cal_idx])
            evals = [evals[i] for i in ev_idx]
        scored.update(collect(evals, gvars))
    if not procs.is_main:  # the main process writes the metrics, once
        return None
    if official:
        metrics = summarize_official(official_scored, ds.class_names, heldout is not None, protocol.n_boot, seed)
        metrics["official"] = {"labels": "official", "class_ids": protocol.class_ids, **official_info}
        ids = next(iter(official_scored.values())).images
        if heldout is not None:
            a, b = halves(len(ids), seed)
            split_note.update(threshold_split=f"cross-fitted halves of {ds.name} (seed {seed})",
                              halves=[[ids[i] for i in a], [ids[i] for i in b]])
        else:
            split_note["threshold_split"] = "none (oracle only)"
    else:
        metrics = summarize(scored, cal_scored, ds, thresholds, protocol.n_boot, seed)
        # the held-out threshold of the official (or project) configuration on toy-val goes next to the weights,
        # where `segment` finds it
        preset = record_heldout(model, variants, metrics, split_note.get("threshold_split"), seed)
        if preset is not None:
            metrics["threshold_recorded"] = {"file": str(Path(model) / THRESHOLDS_FILE), "preset": preset}
        if ds.name in DATASETS:
            metrics["protocol"] = {"oracle": PROJECT, "heldout": PROJECT if cal_scored is not None else None}
    metrics.update(model=str(model), dataset=ds.name, seed=seed, limit=source.limit, split=split_note,
                   config={k: (v if not callable(v) else repr(v)) for k, v in dataclasses.asdict(config).items()},
                   seconds=round(time.time() - t0, 1))
    if out is not None:
        write_outputs(metrics, Path(out))
    return metrics


def _dataset(dataset: str | SegmentationDataset, source: Source, official: bool) -> SegmentationDataset:
    ds = dataset if isinstance(dataset, SegmentationDataset) else get_dataset(
        dataset, source.data_root, cache_dir=None, image_list=source.image_list, class_words=source.class_words,
        labels="official" if official else None)
    if official and getattr(ds, "labels", None) != "official":
        raise ValueError(f"the official protocol reads labels as the authors do: load {ds.name!r} with "
                         "labels='official', or score it with the project protocol (real='project')")
    return ds


def _groups(config: AlignConfig, variants: list[Variant], baselines) -> list[tuple]:
    """One measurement per method: ELBO-T2IAlign's, then each baseline's (shared where settings coincide), as
    (config, baseline or None, its variants, label)."""
    groups = [(config, None, variants, "ELBO-T2IAlign")]
    for bname in baselines:
        b = get_baseline(bname)
        bcfg = dataclasses.replace(config, **b.measure_overrides)
        groups.append((bcfg, b, [Variant(b.name, bcfg, heatmaps=b.heatmaps)], b.name))
    return groups


def _prepare(model, ds: SegmentationDataset, groups, seed: int, source: Source, procs: Processes, device):
    """Before any model work on a real dataset, the main process says what will be measured and refuses captions
    that do not fit; with several processes it writes each cache's settings.json (one writer) and nobody measures
    before it is done. Returns the pipeline loaded for the caption check (or ``source.pipe``) and the first-image
    reports by group label."""
    pipe, first = source.pipe, {}
    if ds.name in DATASETS and procs.is_main:
        dev_type = adapter_for(pipe).device.type if pipe is not None else default_device_dtype(device)[0]
        n = len(ds) if source.limit is None else min(source.limit, len(ds))
        plan = make_plan(model, ds, [(g[0], g[1], g[3]) for g in groups], seed, n, source.cache_dir,
                         dev_type.split(":")[0], source.nouns_only_elbo, procs.count,
                         denoiser_dtype(model, device, pipe))
        print(plan.line(), flush=True)
        if plan.to_measure:
            pipe = pipe if pipe is not None else load_pipeline(model, device=device)
            check_captions(Aligner(pipe, groups[0][0]), ds, plan, groups[0][0])
        if not plan.rate_recorded:  # a first run of this model here: say what the first image took
            first = {g[3]: (lambda s, p, b, m=g[3]: tqdm.write(plan.first_image_line(m, s, p, b))) for g in groups}
    if procs.count > 1:
        if procs.is_main:
            for g in groups:
                for cache in measurement_caches(source.cache_dir, model, g[0], seed, g[1],
                                                source.nouns_only_elbo and g[1] is None,
                                                denoiser_dtype(model, device, pipe))[:2]:
                    if cache is not None:
                        cache.write_settings()
        procs.barrier()
    return pipe, first


def fill_cache(model: str | os.PathLike, dataset: str | SegmentationDataset, config: AlignConfig, baselines=(),
               seed: int = 0, source: Source = Source(), official: bool = True) -> None:
    """Measure what :func:`evaluate` with these arguments would measure (ELBO-T2IAlign's ``config`` and each
    baseline's, on ``dataset``'s first ``source.limit`` images) into the cache, scoring nothing; under
    ``accelerate launch`` each process measures its share. ``official``: on a real dataset, the labels read as the
    official protocol reads them (they decide each image's classes, so its caption and cache file).
    ``make reproduce NPROC=N`` fills the cache for the notebooks this way, then runs them from it."""
    name = dataset.name if isinstance(dataset, SegmentationDataset) else dataset
    ds = _dataset(dataset, source, official and name in DATASETS)
    groups = _groups(config, [], baselines)
    procs = processes(source.device)
    device = procs.device if procs.count > 1 else source.device
    pipe, first = _prepare(model, ds, groups, seed, source, procs, device)
    n = len(ds) if source.limit is None else min(source.limit, len(ds))
    for gcfg, baseline, _, label in groups:
        method = baseline.method if baseline is not None else "aligner"
        try:
            for _ in measure_images(model, ds, gcfg, procs.shard(n), seed, source.cache_dir, pipe,
                                    source.nouns_only_elbo and baseline is None, f"fill cache {ds.name} [{method}]",
                                    device, baseline, on_first=first.get(label), procs=procs, skip_cached=True):
                pass
        except NotRunnable as e:  # e.g. a UNet-only baseline on an MMDiT: the notebook gives it a note row
            if procs.is_main:
                tqdm.write(f"[fill cache] {ds.name}: {e}")
    procs.barrier()  # the cache is complete when every process is done


def metrics_table(metrics: dict) -> pd.DataFrame:
    """One row per variant: oracle and held-out mIoU (with thresholds and CIs) and the paired
    held-out difference against 'uncalibrated'. On a real dataset the columns also say how each is scored
    (``oracle_protocol``, ``heldout_protocol``) and the official protocol adds the grid maximum."""
    proto = metrics.get("protocol")
    rows = []
    for name, e in metrics["variants"].items():
        r = {"variant": name, "oracle_mIoU": e["oracle"]["miou"], "oracle_thr": e["oracle"]["threshold"]}
        if proto:
            r["oracle_protocol"] = proto["oracle"]
        if "grid_maximum" in e:
            g = e["grid_maximum"]
            r.update(grid_max_mIoU=g["miou"], grid_max_thr=", ".join(f"{t:.2f}" for t in g["thresholds"]))
        if "heldout" in e:
            h = e["heldout"]
            thr = h["threshold"]
            r.update(heldout_mIoU=h["miou"], heldout_thr=" / ".join(f"{t:.2f}" for t in thr) if isinstance(thr, list)
                     else thr, heldout_ci95=f"[{h['ci95'][0]:.3f}, {h['ci95'][1]:.3f}]")
            if "diff_ci95" in h:
                r.update(delta_vs_uncal=h["minus_uncalibrated"],
                         delta_ci95=f"[{h['diff_ci95'][0]:+.3f}, {h['diff_ci95'][1]:+.3f}]")
            if proto:
                r["heldout_protocol"] = proto["heldout"]
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
          f"seed {metrics['seed']}.", ""]
    if metrics.get("protocol"):
        p = metrics["protocol"]
        md += [f"Scoring: oracle column {p['oracle']}; held-out column {p['heldout'] or 'none'}.", ""]
    md += [table.to_markdown(index=False, floatfmt=".3f"), ""]
    curves = {n: e["curve"] for n, e in metrics["variants"].items() if "curve" in e}
    if curves:  # the official protocol: mIoU at every threshold 0.01..0.99
        pd.DataFrame({"threshold": metrics["thresholds"], **curves}).to_csv(out / "official_curves.csv", index=False)
    if buckets:
        b = pd.DataFrame(buckets).pivot_table(index=["bucket", "area_min", "area_max"], columns="variant", values="iou")
        md += ["## IoU by ground-truth area decile (reported threshold)", "", b.reset_index().to_markdown(index=False, floatfmt=".3f"), ""]
    (out / "summary.md").write_text("\n".join(md))
