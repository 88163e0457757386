"""Harness throughput: a cold run (every denoiser call) against a gamma sweep of 8 values on the
warm cache (no denoiser call), side by side in one run.

    python benchmarks/bench_evaluate.py [--model data/toy-sd] [--dataset toy-test] [--limit 30]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from elbo_lib.ablations import paper_config, paper_variants  # noqa: E402
from elbo_lib.evaluation.runner import evaluate, options  # noqa: E402


def main(argv=None) -> pd.DataFrame:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="data/toy-sd")
    p.add_argument("--dataset", default="toy-test")
    p.add_argument("--limit", type=int, default=30)
    a = p.parse_args(argv)
    cfg = paper_config(a.model)
    gammas = [1 / g for g in (1.5, 2, 3, 4, 5, 6, 7, 8)]
    rows = []
    with tempfile.TemporaryDirectory() as cache:
        kw = dict(config=cfg, **options(limit=a.limit, cache_dir=cache, heldout=None, n_boot=100))
        t0 = time.perf_counter()
        m = evaluate(a.model, a.dataset, **kw)
        cold = time.perf_counter() - t0
        n = m["n_images"]
        rows.append({"run": "cold (measure + score)", "images": n, "seconds": cold, "images_per_s": n / cold})
        t0 = time.perf_counter()
        evaluate(a.model, a.dataset, variants=paper_variants(cfg, gammas), **kw)
        warm = time.perf_counter() - t0
        rows.append({"run": f"warm cache, {len(gammas)} gammas + 2 variants", "images": n, "seconds": warm,
                     "images_per_s": n / warm})
    df = pd.DataFrame(rows)
    df["speedup_vs_cold"] = cold / df.seconds
    print(df.to_markdown(index=False, floatfmt=".2f"))
    return df


if __name__ == "__main__":
    main()
