"""Run every notebook with papermill (``make reproduce``) and index the results in figures/README.md.

    python -m elbo_lib.workbook                       # full-size toy run -> figures/, figures/notebooks/
    python -m elbo_lib.workbook --quick --in-place    # re-execute the committed (nbval-sized) notebooks
    python -m elbo_lib.workbook --model M --data-root R --datasets "voc ade20k" --device cuda [--image-lists DIR]
    accelerate launch --multi_gpu --num_processes N -m elbo_lib.workbook --fill-cache ...   # make reproduce NPROC=N

On real datasets every notebook that scores (Tables II-IX, Fig. 7) runs on every image of each list, with the
authors' evaluation ("official") and a cross-fitted held-out column; Figs. 3-4 keep their 200-image subset.

Scale-out (``make reproduce NPROC=N``, docs/scale-out.md): papermill runs each notebook in one kernel, so the
notebooks' own measurement is not shared among processes. Instead ``--fill-cache`` under ``accelerate launch``
measures, image by image in N processes, what the notebooks will measure (:data:`FILLS`), and the notebooks then
run from the filled cache, as a rerun does.
"""
from __future__ import annotations

import argparse
import ast
import math
import os
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import nbformat
import pandas as pd
import papermill as pm

from .ablations import paper_config, superset_config
from .cli import USAGE_ERRORS, report
from .datasets import DATASETS, authors_image_list
from .evaluation.runner import Source, fill_cache, heldout_default
from .evaluation.scaleout import PeerStopped, finish, processes
from .paths import REPO_ROOT

REPO = REPO_ROOT


def _rows(df: pd.DataFrame, col: str, names: list[str], fmt: str = "{:.3f}") -> str:
    vals = [df.loc[df.variant == n, col] for n in names]
    return " / ".join(f"{n}: {fmt.format(v.iloc[0])}" for n, v in zip(names, vals) if len(v))


def _best(df: pd.DataFrame, col: str = "heldout_mIoU") -> str:
    r = df.loc[df[col].idxmax()]
    return f"best {r.variant}: {r[col]:.3f}"


TABLE2_ROWS = ["cross-attention (uncalibrated)", "ELBO-T2IAlign", "uncalibrated, no self-attention",
               "ELBO-T2IAlign, no self-attention", "calibrated, no final min-max (project option)", "DAAM",
               "DiffSegmenter", "OVAM", "Semantic DiffSeg"]


def _table2(d: pd.DataFrame) -> str:
    """Per dataset the held-out mIoU; on real data (official protocol) the paper's column first."""
    out = []
    for ds, g in d.groupby("dataset"):
        if "oracle_protocol" in g and g.oracle_protocol.notna().any():
            out.append(f"{ds} {g.oracle_protocol.dropna().iloc[0]}, oracle mIoU: "
                       + _rows(g, "oracle_mIoU", TABLE2_ROWS)
                       + f"; {g.heldout_protocol.dropna().iloc[0]}: " + _rows(g, "heldout_mIoU", TABLE2_ROWS))
        else:
            out.append(f"{ds} held-out mIoU: " + _rows(g, "heldout_mIoU", TABLE2_ROWS))
    return "; ".join(out)


@dataclass
class Entry:
    name: str
    artifact: str
    claim: str
    headline: Callable[[pd.DataFrame], str]
    full: dict = field(default_factory=dict)  # parameters for `make reproduce` (beyond the nbval defaults)
    toy_only: bool = False  # scored by the toy world's detector: always runs on the toy model
    capped_on_real: bool = False  # keeps its `limit` on real datasets (a figure from a subset, held in memory)
    in_default: bool = True  # False: `make reproduce` runs it only when named (ONLY=...; its own make target)
    after: tuple[str, ...] = ()  # notebooks whose measurements it reads: with --jobs > 1 it starts after them
    alone: bool = False  # it times things: runs after all others, with every core


def selected(e: Entry, only: list[str] | None, quick: bool = False) -> bool:
    """Whether a run of ``only`` (None: every notebook with ``quick``, else the default ones) includes ``e``."""
    return e.name in only if only else e.in_default or quick


def _paired(df: pd.DataFrame, subset: str, metric: str, a: str, b: str) -> str:
    r = df[(df.subset == subset) & (df.metric == metric)].iloc[0]
    return f"{metric}: {r[b]:.3f} -> {r[a]:.3f} ({r.difference:+.3f} {r.ci95})"


# 300-image fresh splits per toy model: nine for data/toy-sd, whose constant-S arm (Table VIII) varies most between
# splits (+/-0.017 on three), so that every arm's pooled interval is about +/-0.01
EFFECT_SPLITS = {m: [f"toy-fresh-{k}" for k in range(1, 10 if m == "data/toy-sd" else 4)]
                 for m in ("data/toy-sd", "data/toy-sd-v", "data/toy-sd3")}
T2 = ("table2_segmentation",)  # Table II measures the toy default's superset, which these notebooks read
NOTEBOOKS = [
    Entry("table2_segmentation", "Table II", "ELBO calibration raises mIoU over the uncalibrated maps and the baselines",
          lambda d: _table2(d), {"limit": 200, "n_boot": 1000}),
    Entry("fig1_toy_bias", "Fig. 1", "small, occluded, crowded and rare targets lose alignment",
          lambda d: "; ".join(f"{s}: {g[g.variant == 'uncalibrated'].sort_values('level').target_iou.iloc[0]:.2f}->"
                              f"{g[g.variant == 'uncalibrated'].sort_values('level').target_iou.iloc[-1]:.2f}"
                              for s, g in d.groupby("study")) + " (uncalibrated target IoU, easy->hard)",
          {"n_samples": 12}),
    Entry("fig3_fig4_qualitative", "Figs. 3-4", "calibrated heatmaps recover weak classes", lambda d: "figures only",
          {"limit": 200}, capped_on_real=True, after=T2),
    Entry("table3_models", "Table III", "calibration helps every model and objective",
          lambda d: "; ".join(f"{m}: " + _rows(g, "heldout_mIoU", ["uncalibrated", "calibrated"]) for m, g in d.groupby("model")),
          {"limit": 100}, after=T2),  # 100 + 100 images per model: the v and SD 3 measurements (about 6 min) keep the total <= 30 min
    Entry("table4_noun_phrases", "Table IV", "the whole noun phrase gives the better S",
          lambda d: "; ".join(f"{p}: {g[g.variant == 'calibrated'].heldout_mIoU.iloc[0]:.3f}" for p, g in d.groupby("ELBO prompt")),
          {"limit": 120}, after=T2),  # the single-noun ELBO is a second superset measurement: 120 + 120 images keep the total <= 30 min
    Entry("table6_elbo_timesteps", "Table VI", "more ELBO timesteps is better, slowly",
          lambda d: _rows(d, "heldout_mIoU", ["elbo=1", "elbo=5", "elbo=20", "elbo=100"]), {"limit": 200},
          after=T2),
    Entry("table7_elbo_sampling", "Table VII", "Random best, Even close; larger t better than small",
          lambda d: _rows(d, "heldout_mIoU", ["small", "middle", "large", "random", "even"]), {"limit": 200},
          after=T2),
    Entry("fig7_gamma", "Fig. 7", "best near 1/gamma = 2-3",
          lambda d: "held-out mIoU by 1/gamma: " + ", ".join(f"{r.inv_gamma:g}: {r.heldout_mIoU:.3f}" for r in d.itertuples()),
          {"limit": 200}, after=T2),
    Entry("table8_fixed_score", "Table VIII", "a constant S is worse than the ELBO-driven S", _best, {"limit": 200},
          after=T2),
    Entry("table9_attention_timesteps", "Table IX", "attention from small t is best", _best, {"limit": 200},
          after=T2),
    Entry("table5_generation", "Table V, Fig. 5", "prompt weights from S improve compositional generation",
          lambda d: "baseline -> ELBO-T2IAlign, paired: " + "; ".join(
              _paired(d, "all prompts", m, "ELBO-T2IAlign", "baseline")
              for m in ("all objects present", "colour binding (named colour given the shape)")),
          {"n_prompts": 200, "n_boot": 1000, "batch_size": 40}, toy_only=True),
    Entry("fig6_editing", "Fig. 6", "calibrated heatmaps make prompt-to-prompt edits more accurate",
          lambda d: "edit success, paired: " + "; ".join(
              f"{r['arm']} vs {r['reference']}: {r['reference value']:.3f} -> {r['arm value']:.3f} "
              f"({r.difference:+.3f} {r.ci95})"
              for _, r in d[(d.subset == "all edits") & (d.metric == "success")].iterrows()),
          {"n_edits": 100, "n_candidates": 220, "n_boot": 1000, "batch_size": 20}, toy_only=True),
    Entry("cost", "Sec. IV-C cost", "~4 s / image with 10 classes (SD 1.5, RTX 4090); ELBO batchable",
          lambda d: "batched vs loop at {} classes: {:.1f}x faster, {:.2f} s/image".format(
              d.classes.max(), d[(d.elbo == "batched") & (d.classes == d.classes.max())].speedup_vs_loop.item(),
              d[(d.elbo == "batched") & (d.classes == d.classes.max())].s_per_image.item()), {"repeats": 2}, alone=True),
    Entry("mechanism", "Mechanism", "S is lower for worse-segmented classes (the premise); calibration's headroom",
          lambda d: "; ".join(f"{m}: " + _rows(g, "minus none", ["ELBO S", "S permuted within image", "image-mean S",
                                                                  "oracle (per-image best on grid)"], "{:+.3f}")
                              for m, g in d.groupby("model")) + " (mIoU minus no calibration)",
          {"limit": 200, "n_boot": 1000}, toy_only=True,  # the toy models' recorded thresholds and scenes
          after=("table2_segmentation", "table3_models")),
    Entry("explore_toy", "widget explorer", "-", lambda d: "interactive", {}),
    Entry("effect_size", "Effect size (Tables II, III, VIII)", "calibration raises mIoU (toy: sized to +/-0.01)",
          lambda d: "; ".join(f"{m}: " + ", ".join(
              f"{r.arm.split(' (')[0]} {r['minus uncalibrated']:+.3f} [{r.ci_lo:+.3f}, {r.ci_hi:+.3f}]"
              for _, r in g[g.split == "pooled"].iterrows()) for m, g in d.groupby("model", sort=False))
          + " (held-out mIoU minus uncalibrated, fresh splits pooled)",
          {"n_per_split": 300, "n_boot": 1000, "splits": EFFECT_SPLITS}, toy_only=True, in_default=False,
          after=("table3_models",)),  # ~30 min: `make effect-size`
]


def real_datasets(extra: dict | None) -> list[str]:
    """The real datasets (voc, context, coco-object, ade20k) among the run's ``datasets``."""
    return [d for d in (extra or {}).get("datasets", []) if d in DATASETS]


def notebook_parameters(e: Entry, quick: bool = False, extra: dict | None = None) -> dict:
    """The parameters papermill gives notebook ``e``: its full-size ones (none with ``quick``), the run's
    model, datasets, ... where the notebook takes them, and no image cap on real datasets (unless capped)."""
    params = {} if quick else dict(e.full)
    accepted = parameters_of(REPO / "notebooks" / f"{e.name}.ipynb")
    if not e.toy_only:
        params.update({k: v for k, v in (extra or {}).items() if k in accepted})
        if not quick and not e.capped_on_real and "limit" in accepted and real_datasets(extra):
            params["limit"] = None  # every image of each real dataset's list (the paper's protocol)
    return params


def run_notebooks(only: list[str] | None = None, quick: bool = False, extra: dict | None = None,
                  figures: Path = REPO / "figures", executed_dir: Path | None = None, jobs: int = 1) -> list[dict]:
    """Execute the notebooks with papermill; outputs go to ``figures``; executed notebooks replace the
    committed ones unless ``executed_dir`` is given. ``jobs`` > 1: that many notebooks at a time, each kernel on
    its share of the cores (:func:`run_scheduled`)."""
    figures.mkdir(parents=True, exist_ok=True)
    os.environ["ELBO_WORKBOOK_OUT"] = str(figures)  # the notebooks' output_dir(); inherited by their kernels
    if quick and executed_dir is None:  # remaking the committed notebooks: their checks record what they compare with
        os.environ["ELBO_RECORD"] = "1"
    if executed_dir is not None:
        executed_dir.mkdir(parents=True, exist_ok=True)
    log = []

    def run_one(e: Entry) -> None:
        params = notebook_parameters(e, quick, extra)
        nb = REPO / "notebooks" / f"{e.name}.ipynb"
        t0 = time.time()
        print(f"[workbook] {e.name} {params}", flush=True)
        target = nb if executed_dir is None else executed_dir / nb.name
        pm.execute_notebook(str(nb), str(target), parameters=params, cwd=str(REPO), progress_bar=False, language="python",
                            kernel_name="python3")
        clean_notebook(target)
        log.append({"notebook": e.name, "seconds": round(time.time() - t0, 1), "parameters": params})
        print(f"[workbook] {e.name} done in {time.time() - t0:.0f} s", flush=True)

    run_scheduled([e for e in NOTEBOOKS if selected(e, only, quick)], run_one, jobs)
    return log


THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")


def cores() -> int:
    """CPU cores this process may use."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def auto_jobs(device: str | None) -> int:
    """``--jobs auto``: two notebooks at a time on a CPU with two or more cores (one toy-model kernel leaves the
    second core half idle), one on an accelerator."""
    return 2 if device in (None, "cpu") and cores() >= 2 else 1


def run_scheduled(entries: list[Entry], run_one: Callable[[Entry], None], jobs: int = 1) -> None:
    """Call ``run_one`` on every entry. ``jobs`` == 1: in order. ``jobs`` > 1: that many at a time, each starting
    once the notebooks it reads from (``after``, among ``entries``) have finished, so that no measurement is made
    twice; each kernel gets cores // jobs threads. Entries marked ``alone`` (timings) run last, one at a time, with
    every core. A failure stops the scheduling: the notebooks already running finish, then it is raised."""
    if jobs < 1:
        raise ValueError(f"jobs must be a whole number >= 1, got {jobs}")
    shared, last = [e for e in entries if not e.alone], [e for e in entries if e.alone]
    jobs = min(jobs, max(1, len(shared)))  # a lone notebook keeps every core
    if jobs == 1:
        for e in shared + last:
            run_one(e)
        return
    names = {e.name for e in shared}
    saved = {k: os.environ.get(k) for k in THREAD_VARS}
    os.environ.update({k: str(max(1, cores() // jobs)) for k in THREAD_VARS})  # each kernel inherits them
    try:
        pending, done, running = list(shared), set(), {}
        with ThreadPoolExecutor(jobs) as pool:
            while pending or running:
                ready = [e for e in pending if all(d in done or d not in names for d in e.after)]
                for e in ready[:jobs - len(running)]:
                    pending.remove(e)
                    running[pool.submit(run_one, e)] = e
                if not running:
                    raise ValueError(f"notebooks waiting on each other: {[(e.name, e.after) for e in pending]}")
                finished, _ = wait(running, return_when=FIRST_COMPLETED)
                for f in finished:
                    e = running.pop(f)
                    if f.exception() is not None:
                        pending.clear()  # nothing new starts; leaving the pool waits for the running ones
                        raise f.exception()
                    done.add(e.name)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    for e in last:
        run_one(e)


WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"


def clean_notebook(path: Path) -> None:
    """Drop what changes on every run without being a result: widget state and widget views (progress
    bars), stderr streams, per-cell timings. The notebook's total duration stays (the index reports it)."""
    nb = nbformat.read(path, as_version=4)
    nb.metadata.pop("widgets", None)
    for cell in nb.cells:
        cell.metadata.pop("execution", None)
        cell.metadata.pop("papermill", None)
        if cell.cell_type == "code":
            cell.outputs = [o for o in cell.outputs if not (o.output_type == "stream" and o.name == "stderr")
                            and WIDGET_VIEW not in o.get("data", {})]
    nbformat.write(nb, path)


def parameters_of(nb: Path) -> set[str]:
    cell = next(c for c in nbformat.read(nb, as_version=4).cells if "parameters" in c.metadata.get("tags", []))
    return {ln.split("=")[0].strip() for ln in cell.source.splitlines() if "=" in ln and not ln.startswith("#")}


def parameter_values(nb: Path) -> dict:
    """The values of a notebook's parameters cell (its defaults; every one is a literal)."""
    cell = next(c for c in nbformat.read(nb, as_version=4).cells if "parameters" in c.metadata.get("tags", []))
    return {t.id: ast.literal_eval(node.value) for node in ast.parse(cell.source).body
            if isinstance(node, ast.Assign) for t in node.targets if isinstance(t, ast.Name)}


@dataclass(frozen=True)
class Fill:
    """One measurement a notebook makes over a dataset: ELBO-T2IAlign's (the superset configuration, or the
    paper's for ``paper``; with Table IV's single-noun ELBO for ``nouns_only``) or a baseline's (``method``), on
    the first ``limit`` images (None: all) of ``dataset``'s ``image_list`` (None: its default list)."""

    model: str
    dataset: str
    limit: int | None
    method: str = "aligner"
    paper: bool = False
    nouns_only: bool = False
    image_list: str | None = None


# ex.method_heatmaps' default baselines (Figs. 3-4) and ex.TOY_MODELS[0] (Table III measures the superset on it);
# spelled out because experiments imports this module (through recorded); a test keeps them equal
METHOD_BASELINES = ("DAAM", "DiffSegmenter", "OVAM", "Semantic DiffSeg")
TOY_DEFAULT = "data/toy-sd"


def _evaluated(model: str, dataset: str, limit, methods=("aligner",), image_lists=None, threshold_split=True,
               **kw) -> list[Fill]:
    """What ``ex.run`` (evaluate) measures: each method on ``dataset`` (on the authors' list in ``image_lists`` for
    a real one) and, on a toy split with ``threshold_split``, on its threshold split (toy-val) with the same limit."""
    split = heldout_default(dataset) if threshold_split else None
    names = [dataset] + ([split] if isinstance(split, str) else [])
    return [Fill(model, d, limit, m, image_list=None if (lst := authors_image_list(image_lists, d)) is None
                 else str(lst), **kw) for d in names for m in methods]


def _superset_run(p: dict, **kw) -> list[Fill]:
    """What one ``ex.run`` of a single-dataset ablation notebook (parameters ``p``) measures."""
    return _evaluated(p["model"], p["dataset"], p["limit"], image_lists=p.get("image_lists"), **kw)


# each notebook's measurements from its parameters, as its cells make them (Fig. 1's toy studies, Table V's
# generations, Fig. 6's edits and the cost timings are left to the notebooks: small, or not measurements)
FILLS: dict[str, Callable[[dict], list[Fill]]] = {
    "table2_segmentation": lambda p: [f for d in p["datasets"] for f in _evaluated(
        p["model"], d, p["limit"], ("aligner", *p["baselines"]), p.get("image_lists"))],
    "fig3_fig4_qualitative": lambda p: [f for m in ("aligner", *METHOD_BASELINES) for f in _evaluated(
        p["model"], p["dataset"], p["limit"], (m,), p.get("image_lists"), threshold_split=False)],
    "table3_models": lambda p: [f for m in p["models"] for f in _evaluated(
        m, p["dataset"], p["limit"], image_lists=p.get("image_lists"),
        paper=m != TOY_DEFAULT)],  # the toy default: Table II's superset
    "table4_noun_phrases": lambda p: _superset_run(p, nouns_only=True),
    "table6_elbo_timesteps": _superset_run,
    "table7_elbo_sampling": _superset_run,
    "table8_fixed_score": _superset_run,
    "table9_attention_timesteps": _superset_run,
    "fig7_gamma": lambda p: [f for d in p["datasets"] for f in _evaluated(p["model"], d, p["limit"],
                                                                          image_lists=p.get("image_lists"))],
    "mechanism": lambda p: [Fill(m, p["dataset"], p["limit"], paper=m != TOY_DEFAULT)  # no threshold split
                            for m in p["models"]],
    "effect_size": lambda p: [f for m in p["models"]  # the pool reads the splits' images
                              for s in (p["splits"][m] if isinstance(p["splits"], dict) else p["splits"])
                              for f in _evaluated(m, s, p["n_per_split"], paper=True)],
}


def notebook_fills(only: list[str] | None = None, quick: bool = False, extra: dict | None = None) -> list[Fill]:
    """The measurements the notebooks of a run will make, each once at the largest limit any asks for."""
    largest: dict[tuple, Fill] = {}
    for e in NOTEBOOKS:
        if e.name not in FILLS or not selected(e, only, quick):
            continue
        params = {**parameter_values(REPO / "notebooks" / f"{e.name}.ipynb"), **notebook_parameters(e, quick, extra)}
        for f in FILLS[e.name](params):
            key = (f.model, f.dataset, f.image_list, f.method, f.paper, f.nouns_only)
            size = math.inf if f.limit is None else f.limit
            if key not in largest or size > (math.inf if largest[key].limit is None else largest[key].limit):
                largest[key] = f
    # ELBO-T2IAlign's measurement first: a single-noun fill also makes the noun-phrase one, and each baseline's
    # reads none of it
    return sorted(largest.values(), key=lambda f: (f.method != "aligner", not f.nouns_only))


def fill_notebook_caches(only: list[str] | None = None, quick: bool = False, extra: dict | None = None) -> int:
    """Measure what the notebooks will measure into the cache, each process of ``accelerate launch`` its share
    of every dataset's images; returns how many measurements were filled."""
    extra = extra or {}
    fills = notebook_fills(only, quick, extra)
    for i, f in enumerate(fills):
        cfg = paper_config(f.model) if f.paper else superset_config(f.model)
        baselines = () if f.method == "aligner" else (f.method,)
        if processes(extra.get("device")).is_main:
            print(f"[workbook] fill cache {i + 1}/{len(fills)}: {f.dataset} [{f.method}"
                  f"{', single nouns' if f.nouns_only else ''}], {f.model}, "
                  f"{'all' if f.limit is None else f'first {f.limit}'} images", flush=True)
        fill_cache(f.model, f.dataset, cfg, baselines, source=Source(
            data_root=extra.get("data_root"), image_list=f.image_list, limit=f.limit, device=extra.get("device"),
            nouns_only_elbo=f.nouns_only))
    return len(fills)


def _recorded_seconds(nb: Path) -> float | str:
    """Duration papermill stored in an executed notebook's metadata, or '' when there is none."""
    if not nb.exists():
        return ""
    d = nbformat.read(nb, as_version=4).metadata.get("papermill", {}).get("duration")
    return round(float(d), 1) if d else ""


def verdict(figures: Path) -> str:
    """The premises' verdict on the toy models, from the mechanism and effect-size tables of this ``figures``
    folder (issue 29), or '' when the mechanism notebook has not written them."""
    try:
        corr = pd.read_csv(figures / "mechanism_correlation.csv")
        head = pd.read_csv(figures / "mechanism.csv")
        mass = pd.read_csv(figures / "mechanism_self_attention.csv").set_index("model")
        ref = pd.read_csv(figures / "mechanism_refinement.csv")
    except FileNotFoundError:
        return ""
    models = list(mass.index)

    def each(fmt: Callable[[str], str]) -> str:
        return ", ".join(fmt(m) for m in models)

    def rho(x: str, y: str) -> Callable[[str], str]:
        def f(m: str) -> str:
            r = corr[(corr.model == m) & (corr.x == x) & (corr.y == y)].iloc[0]
            return f"{r.rho:+.2f} {r.ci95}"
        return f

    def gain(variant: str) -> Callable[[str], str]:
        return lambda m: f"{head[(head.model == m) & (head.variant == variant)]['minus none'].iloc[0]:+.3f}"

    def locality(m: str) -> str:
        return f"{mass.loc[m, 'own-object mass'] / mass.loc[m, 'uniform baseline']:.1f}x"

    def smallest(m: str) -> str:
        r = ref[(ref.model == m) & (ref.maps == "uncalibrated") & (ref.bucket == 0)].iloc[0]
        return f"{r['refined minus not']:+.3f}"

    s_iou = corr[(corr.x == "S") & (corr.y == "iou")]
    holds = sum(float(ci.strip("[]").split(",")[0]) > 0 for ci in s_iou.ci95)
    text = (f"**The method's premises** ({each(lambda m: m.split('/')[-1])}; the mechanism notebook, "
            f"docs/mechanism.md). (1) S finds the weakly aligned classes: holds on **{holds} of {len(s_iou)}** "
            f"(interval above 0); within-image rank correlation of S with the uncalibrated class IoU "
            f"{each(rho('S', 'iou'))}, while the ELBO's own class order is reproducible (split-half "
            f"{each(rho('elbo_loss_a', 'elbo_loss_b'))}). (2) The power 1/S: per-class exponents chosen with the "
            f"ground truth gain {each(gain('oracle (per-image best on grid)'))} mIoU, the ELBO's S "
            f"{each(gain('ELBO S'))}, the same S values permuted within each image "
            f"{each(gain('S permuted within image'))}. (3) The self-attention refinement: own-object mass "
            f"{each(locality)} chance; refining changes the smallest third of objects' IoU by {each(smallest)}.")
    effect_csv = figures / "effect_size.csv"
    if not effect_csv.exists():
        return text + "\n"
    pooled = pd.read_csv(effect_csv).query("split == 'pooled'")

    def effect(arm: str) -> Callable[[str], str]:
        def f(m: str) -> str:
            r = pooled[(pooled.model == m) & (pooled.arm == arm)].iloc[0]
            return f"{r['minus uncalibrated']:+.3f} [{r.ci_lo:+.3f}, {r.ci_hi:+.3f}]"
        return f

    images = each(lambda m: str(int(pooled[pooled.model == m].images.iloc[0])))
    return (text + f" Effect size (held-out mIoU minus uncalibrated on {images} images of fresh toy splits; "
            "`make effect-size`): " + "; ".join(f"{a}: {each(effect(a))}" for a in dict.fromkeys(pooled.arm)) + ".\n")


def write_index(log: list[dict] | None = None, figures: Path = REPO / "figures") -> str:
    rows = []
    secs = {r["notebook"]: r["seconds"] for r in (log or [])}
    for e in NOTEBOOKS:
        if e.name not in secs:  # not run this time: the duration papermill recorded in its last run
            secs[e.name] = _recorded_seconds(figures / "notebooks" / f"{e.name}.ipynb")
        csv = figures / f"{e.name}.csv"
        try:
            ours = e.headline(pd.read_csv(csv)) if csv.exists() else \
                ("figures only" if any(figures.glob(f"{e.name}*.png")) else
                 "ran; writes no table or figure" if secs.get(e.name, "") != "" else "not run")
        except Exception as err:  # a headline must never hide the table: say what failed
            ours = f"see {csv.name} ({type(err).__name__})"
        link = f"[{e.name}](../notebooks/{e.name}.ipynb)"
        rows.append({"artifact": e.artifact, "paper's claim": e.claim, "our number (toy default)": ours,
                     "notebook": link, "seconds": secs.get(e.name, "")})
    md = ("# Reproduced artifacts\n\nGenerated by `make reproduce` (`python -m elbo_lib.workbook`). Numbers come from "
          "running the notebooks; held-out thresholds are chosen on `toy-val`, oracle ones on the evaluated set. On "
          "real datasets the authors' evaluation is the oracle column, beside a cross-fitted held-out column "
          "(docs/real-data.md).\n\n"
          + pd.DataFrame(rows).to_markdown(index=False) + "\n")
    default = [e for e in NOTEBOOKS if e.in_default]
    known = [secs[e.name] for e in default if secs.get(e.name, "") != ""]
    if known:
        md += (f"\nTotal notebook time: {sum(known):.0f} s ({len(known)} of the {len(default)} notebooks `make "
               "reproduce` runs; each one's latest run).")
        extra_runs = [f"{e.name} {secs[e.name]:.0f} s" for e in NOTEBOOKS if not e.in_default and secs.get(e.name, "") != ""]
        md += (f" Run separately: {', '.join(extra_runs)}." if extra_runs else "") + "\n"
    md += ("\n" + verdict(figures)) if verdict(figures) else ""
    (figures / "README.md").write_text(md)
    return md


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="the notebooks' own (nbval-sized) parameters")
    p.add_argument("--only", default=None, help="comma-separated notebook names")
    p.add_argument("--model", default=None)
    p.add_argument("--datasets", default=None, help="space-separated dataset names (first one for single-dataset notebooks)")
    p.add_argument("--data-root", default=None)
    p.add_argument("--image-lists", default=None, metavar="DIR",
                   help="image lists laid out as the authors' metadata/ folder (voc/val_id.txt, context/, coco/, "
                        "ade20k/); default: each dataset's own list")
    p.add_argument("--device", default=None)
    p.add_argument("--index-only", action="store_true")
    p.add_argument("--jobs", default="auto", help="notebooks run at a time, each kernel on its share of the cores "
                   "(default auto: 2 on a CPU with >= 2 cores, else 1)")
    p.add_argument("--fill-cache", action="store_true",
                   help="only measure what the notebooks will measure, into the cache (under accelerate launch: "
                        "each process its share; make reproduce NPROC=N); runs no notebook")
    p.add_argument("--out", default=None, help="figures directory (default figures/, or .cache/quick-figures with --quick)")
    p.add_argument("--in-place", action="store_true",
                   help="save executed notebooks over notebooks/*.ipynb (how the committed, nbval-checked notebooks "
                        "are made, with --quick); default: OUT/notebooks/")
    a = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    extra = {k: v for k, v in {"model": a.model, "data_root": a.data_root, "device": a.device,
                               "image_lists": a.image_lists and str(Path(a.image_lists).resolve())}.items() if v}
    if a.datasets:
        extra["datasets"] = a.datasets.split()
        extra["dataset"] = extra["datasets"][0]
    if a.model:
        extra["models"] = [a.model]
    t0 = time.time()
    only = a.only.split(",") if a.only else None
    if a.fill_cache:
        try:
            n = fill_notebook_caches(only, a.quick, extra)
        except (*USAGE_ERRORS, PeerStopped) as e:  # one line naming the process and what was wrong
            return report(e)
        procs = processes(a.device)
        if procs.is_main:
            print(f"[workbook] filled {n} measurement(s) in {time.time() - t0:.0f} s")
        finish(procs)
        return 0
    figures = Path(a.out).resolve() if a.out else REPO / (".cache/quick-figures" if a.quick else "figures")
    executed = None if a.in_place else figures / "notebooks"
    if a.jobs != "auto" and not (a.jobs.isdigit() and int(a.jobs) >= 1):
        return report(ValueError(f"--jobs must be 'auto' or a whole number >= 1, got {a.jobs!r}"))
    jobs = auto_jobs(a.device) if a.jobs == "auto" else int(a.jobs)
    log = [] if a.index_only else run_notebooks(only, a.quick, extra, figures, executed, jobs)
    print(write_index(log, figures))
    print(f"[workbook] total {time.time() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
