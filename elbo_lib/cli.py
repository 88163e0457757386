"""Command line: ``python -m elbo_lib segment IMAGE --classes "a,b" --out DIR``."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from .aligner import PRESETS


def _segment(a) -> int:
    from PIL import Image

    from .aligner import Aligner
    from .models import load_pipeline
    from .plotting import mask_rgb, overlay, result_figure

    classes = [c.strip() for c in a.classes.split(",") if c.strip()]
    if not classes:
        raise SystemExit("--classes must name at least one class, comma-separated")
    path = Path(a.image)
    if not path.is_file():
        raise SystemExit(f"no image file at {path}")
    image = Image.open(path).convert("RGB")
    pipe = load_pipeline(a.model, device=a.device)
    overrides = {"gamma": a.gamma} if a.gamma is not None else {}
    aligner = Aligner(pipe, preset=a.preset, **overrides)
    res = aligner(image, classes, caption=a.caption, seed=a.seed)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    rgb = np.asarray(image)
    for i, c in enumerate(classes):
        slug = "".join(ch if ch.isalnum() else "_" for ch in c)
        Image.fromarray((res.heatmaps[i] * 255).round().astype(np.uint8)).save(out / f"heatmap_{i:02d}_{slug}.png")
        Image.fromarray((res.raw[i] * 255).round().astype(np.uint8)).save(out / f"raw_{i:02d}_{slug}.png")
        Image.fromarray(overlay(rgb, res.heatmaps[i])).save(out / f"overlay_{i:02d}_{slug}.png")
    mask = res.mask(a.threshold)
    Image.fromarray(mask.astype(np.uint8)).save(out / "mask.png")
    Image.fromarray(mask_rgb(mask, len(classes))).save(out / "mask_color.png")
    fig = result_figure(rgb, res, a.threshold)
    fig.savefig(out / "overlay.png", dpi=100)
    summary = {"image": str(path), "model": str(a.model), "classes": classes, "caption": res.caption,
               "threshold": a.threshold, "seed": a.seed, "gamma": aligner.config.gamma,
               "scores": res.scores.tolist(), "elbo": res.elbo.tolist(),
               "elbo_total": res.elbo.sum(1).tolist(),
               "mask_values": {"0": "background", **{str(i + 1): c for i, c in enumerate(classes)}}}
    (out / "result.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps({k: summary[k] for k in ("classes", "scores", "elbo_total")}))
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m elbo_lib", description="ELBO-T2IAlign workbook")
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("segment", help="calibrated heatmaps and a mask for one image")
    s.add_argument("image")
    s.add_argument("--classes", required=True, help='comma-separated class phrases, e.g. "red circle,blue star"')
    s.add_argument("--caption", default=None, help="caption naming every class (default: built from the classes)")
    s.add_argument("--model", default="data/toy-sd", help="pipeline directory or hub id")
    s.add_argument("--out", required=True)
    s.add_argument("--threshold", type=float, default=0.4, help="background threshold in [0, 1]")
    s.add_argument("--gamma", type=float, default=None)
    s.add_argument("--preset", default="official", choices=sorted(PRESETS),
                   help="official: the authors' algorithm (default); project: the project's earlier choices")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--device", default=None)
    s.set_defaults(func=_segment)
    from .evaluation.runner import add_evaluate_parser
    add_evaluate_parser(sub)
    a = p.parse_args(argv)
    return a.func(a)


if __name__ == "__main__":
    sys.exit(main())
