"""Command line: ``python -m elbo_lib segment IMAGE --classes "a,b" --out DIR``,
``python -m elbo_lib evaluate --model data/toy-sd --dataset toy-test --out DIR`` and
``python -m elbo_lib score --heatmaps DIR --dataset voc --data-root ROOT`` (the authors' real-data scoring).
``accelerate launch --num_processes N -m elbo_lib evaluate ...`` shares the images among N processes
(docs/scale-out.md).

A mistake in the input ends with one line on stderr that names it and exit status 2; ``--debug``
shows the traceback instead."""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from .ablations import paper_config, paper_variants
from .aligner import PRESETS, Aligner
from .baselines import NotRunnable
from .datasets.base import read_rgb
from .elbo import NonFiniteError
from .evaluation.official import heatmap_name, score_heatmaps, summary_lines, write_heatmaps, write_score
from .evaluation.runner import Protocol, Source, evaluate, metrics_table
from .evaluation.scaleout import PeerStopped, finish, process_label, processes
from .evaluation.thresholds import choose as choose_threshold
from .models import load_pipeline
from .paths import CACHE_DIR
from .plotting import describe_figure, legend, mask_rgb, overlay, result_figure
from .toy.world import untrained_words

USAGE_ERRORS = (ValueError, TypeError, FileNotFoundError, NotADirectoryError, NotRunnable, NonFiniteError)


def warn_untrained(model: str, phrases: list[str]) -> None:
    """On a toy model, say which class words it never saw in training (its heatmaps would mean little)."""
    if (Path(model) / "training.json").exists():
        unknown = untrained_words(phrases)
        if unknown:
            print(f"warning: the toy model was never trained on {', '.join(map(repr, unknown))}; "
                  "their heatmaps mean little (toy words: python -c 'from elbo_lib.toy.world import vocabulary; "
                  "print(vocabulary())')", file=sys.stderr)


def _segment(a) -> int:
    classes = [c.strip() for c in a.classes.split(",") if c.strip()]
    if not classes:
        raise ValueError("--classes must name at least one class, comma-separated")
    rgb = read_rgb(a.image)
    if a.save_heatmaps is not None:  # refuse words the authors' file names cannot hold before any model work
        for c in classes:
            heatmap_name(a.heatmap_index, c)
    warn_untrained(a.model, classes)
    cfg = paper_config(a.model, a.preset, **({"gamma": a.gamma} if a.gamma is not None else {}))
    threshold = choose_threshold(a.threshold, a.model, cfg, a.preset)  # before the model loads: a bad value stops here
    if threshold.note:
        print(threshold.note, file=sys.stderr)
    aligner = Aligner(load_pipeline(a.model, device=a.device), cfg)
    res = aligner(rgb, classes, caption=a.caption, seed=a.seed)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    for i, c in enumerate(classes):
        slug = "".join(ch if ch.isalnum() else "_" for ch in c)
        Image.fromarray((res.heatmaps[i] * 255).round().astype(np.uint8)).save(out / f"heatmap_{i:02d}_{slug}.png")
        Image.fromarray((res.raw[i] * 255).round().astype(np.uint8)).save(out / f"raw_{i:02d}_{slug}.png")
        Image.fromarray((res.unrefined[i] * 255).round().astype(np.uint8)).save(out / f"unrefined_{i:02d}_{slug}.png")
        Image.fromarray(overlay(rgb, res.heatmaps[i])).save(out / f"overlay_{i:02d}_{slug}.png")
    mask = res.mask(threshold.value)
    Image.fromarray(mask.astype(np.uint8)).save(out / "mask.png")
    Image.fromarray(mask_rgb(mask, len(classes))).save(out / "mask_color.png")
    fig = result_figure(rgb, res, threshold.value, threshold.source)
    fig.savefig(out / "overlay.png", dpi=100)
    (out / "overlay.json").write_text(json.dumps(describe_figure(fig), indent=2))
    summary = {"image": str(a.image), "model": str(a.model), "classes": classes, "caption": res.caption,
               "threshold": threshold.value, "threshold_source": threshold.source, "seed": a.seed,
               "gamma": aligner.config.gamma, "preset": a.preset,
               "scores": res.scores.tolist(), "elbo": res.elbo.tolist(),
               "elbo_total": res.elbo.sum(1).tolist(),
               "mask_values": {"0": "background", **{str(i + 1): c for i, c in enumerate(classes)}},
               "legend": legend(classes)}
    (out / "result.json").write_text(json.dumps(summary, indent=2))
    if a.save_heatmaps is not None:
        write_heatmaps(a.save_heatmaps, a.heatmap_index, classes, res.heatmaps)
    print(json.dumps({k: summary[k] for k in ("classes", "scores", "elbo_total")}))
    return 0


def _heldout(value: str):
    if value == "none":
        return None
    try:
        return float(value)
    except ValueError:
        return value


def _evaluate(a) -> int:
    for g in a.gamma:
        if not 0 < g <= 1:
            raise ValueError(f"--gamma values must be in (0, 1], got {g}")
    overrides = {k: v for k, v in (("elbo_steps", a.elbo_steps), ("attention_steps", a.attention_steps)) if v is not None}
    cfg = dataclasses.replace(paper_config(a.model, a.preset), **overrides)
    m = evaluate(a.model, a.dataset, config=cfg, variants=paper_variants(cfg, a.gamma), seed=a.seed,
                 protocol=Protocol(heldout=_heldout(a.heldout), n_boot=a.n_boot, real=a.protocol,
                                   class_ids=a.class_ids),
                 source=Source(data_root=a.data_root, image_list=a.image_list, class_words=a.class_words,
                               limit=a.limit, cache_dir=a.cache_dir, device=a.device),
                 out=a.out)
    if m is not None:  # under accelerate launch, the main process alone has the metrics
        print(metrics_table(m).to_markdown(index=False, floatfmt=".3f"))
    finish(processes(a.device))
    return 0


def _score(a) -> int:
    result = score_heatmaps(a.heatmaps, a.dataset, a.data_root, a.image_list, a.class_ids)
    out = Path(a.out) if a.out is not None else Path(a.heatmaps).resolve().parent
    paths = write_score(result, out)
    print("\n".join(summary_lines(result)))
    print(f"saved {', '.join(str(p) for p in paths)}")
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m elbo_lib", description="ELBO-T2IAlign workbook")
    p.add_argument("--debug", action="store_true", help="show the traceback of an error")
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("segment", help="calibrated heatmaps and a mask for one image")
    s.add_argument("image")
    s.add_argument("--classes", required=True, help='comma-separated class phrases, e.g. "red circle,blue star"')
    s.add_argument("--caption", default=None, help="caption naming every class (default: built from the classes)")
    s.add_argument("--model", default="data/toy-sd", help="pipeline directory or hub id")
    s.add_argument("--out", required=True)
    s.add_argument("--threshold", type=float, default=None,
                   help="background threshold in [0, 1] (default: the held-out one recorded in the model directory's "
                        "thresholds.json for this configuration, else DAAM's 0.4)")
    s.add_argument("--gamma", type=float, default=None)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--device", default=None)
    s.add_argument("--save-heatmaps", default=None, metavar="DIR",
                   help="also write the calibrated heatmaps in the authors' format, DIR/{k}_{class}.png (8-bit)")
    s.add_argument("--heatmap-index", type=int, default=0, metavar="K",
                   help="the image index k in those file names (the image's line in the image list; default 0)")
    s.set_defaults(func=_segment)
    e = sub.add_parser("evaluate", help="zero-shot referring segmentation on a dataset (cached, resumable)")
    e.add_argument("--model", default="data/toy-sd")
    e.add_argument("--dataset", default="toy-test")
    e.add_argument("--data-root", default=None)
    e.add_argument("--image-list", default=None, help="file of image names, one a line (default: the val split)")
    e.add_argument("--class-words", default=None,
                   help="official (the authors' category keys, the default of the four real datasets) or project")
    e.add_argument("--limit", type=int, default=None)
    e.add_argument("--gamma", type=float, nargs="*", default=[], help="extra gamma values to report")
    e.add_argument("--heldout", default="auto",
                   help="threshold split: auto (toy: toy-val; real data, official: cross-fitted halves), a dataset "
                        "name or a fraction (project protocol), or 'none'")
    e.add_argument("--protocol", default="official", choices=["official", "project"],
                   help="how voc, context, coco-object and ade20k are scored: official (the authors' evaluation, "
                        "every image of the list) or project (the project's threshold grid and held-out fraction)")
    e.add_argument("--class-ids", default="name-search", choices=["name-search", "own"],
                   help="official protocol: the authors' name search of heatmap names, or each class as itself")
    e.add_argument("--cache-dir", default=None, help=f"measurement cache (default {CACHE_DIR})")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--n-boot", type=int, default=1000)
    e.add_argument("--elbo-steps", type=int, default=None, help="ELBO timesteps (default: the paper's 20)")
    e.add_argument("--attention-steps", type=int, default=None, help="attention timesteps (default: the paper's 10)")
    e.add_argument("--device", default=None,
                   help="cpu, cuda, ...; under accelerate launch with several processes each takes its own GPU "
                        "(--device cpu: all on the CPU; docs/scale-out.md)")
    e.add_argument("--out", required=True)
    e.set_defaults(func=_evaluate)
    c = sub.add_parser("score", help="score heatmaps in the authors' format with their real-data protocol")
    c.add_argument("--heatmaps", required=True, metavar="DIR", help="folder of {k}_{class}.png 8-bit heatmaps")
    c.add_argument("--dataset", required=True, help="voc, context, coco-object or ade20k")
    c.add_argument("--data-root", required=True, metavar="ROOT", help="directory holding the dataset's layout")
    c.add_argument("--image-list", default=None, metavar="FILE",
                   help="image names, one a line; line k is image k (default: the full val split)")
    c.add_argument("--class-ids", default="name-search",
                   help="name-search (the authors': ADE20K 'stool', 'pot' -> 'toilet', 'screen' -> 'screen door') "
                        "or own (each heatmap scored as its own class)")
    c.add_argument("--out", default=None, metavar="DIR",
                   help="where official_score.json and the CSVs go (default: the heatmap folder's parent)")
    c.set_defaults(func=_score)
    for sp in (s, e):
        sp.add_argument("--preset", default="official", choices=sorted(PRESETS),
                        help="official: the authors' algorithm (default); project: the project's earlier choices")
    return p


def main(argv=None) -> int:
    a = parser().parse_args(argv)
    try:
        return a.func(a)
    except (*USAGE_ERRORS, PeerStopped) as e:
        if a.debug:
            raise
        return report(e)


def report(e: Exception) -> int:
    """Print a usage error (or a peer process's stop) as one 'error:' line on stderr; the exit status: 2 for a
    mistake in the input, 1 for a process stopped because another one did."""
    msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    # under accelerate launch the line says which process stopped (PeerStopped names itself), and starts a line of
    # its own: another process's progress bar may be half drawn on the same terminal
    label = process_label()
    line = f"error: {msg}" if isinstance(e, PeerStopped) else f"error: {label}{msg}"
    print(f"\n{line}" if label else line, file=sys.stderr)
    return 1 if isinstance(e, PeerStopped) else 2
