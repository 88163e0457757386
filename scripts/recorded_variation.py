"""How far the notebooks' checked values move between runs in other CPU settings (docs/determinism.md).

Record the checked values of a run with ``ELBO_RECORD_DIR=DIR`` (and a fresh ``ELBO_LIB_CACHE``, so nothing is
read from a cache made under other kernels), e.g.

    ELBO_LIB_CACHE=$(mktemp -d) ELBO_RECORD_DIR=/tmp/rec-avx2 ATEN_CPU_CAPABILITY=avx2 make test

then compare each directory with the committed ``notebooks/recorded/``:

    python scripts/recorded_variation.py /tmp/rec-avx2 /tmp/rec-omp1
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd

from elbo_lib.recorded import ATOL, RECORDED_DIR, RTOL


def deviations(run_dir: Path) -> pd.DataFrame:
    rows = []
    for path in sorted(run_dir.glob("*.json")):
        if not (RECORDED_DIR / path.name).exists():  # e.g. a unit test's own record
            continue
        want = json.loads((RECORDED_DIR / path.name).read_text())["values"]
        got = json.loads(path.read_text())["values"]
        for key in sorted(set(want) | set(got)):
            w, g = want.get(key), got.get(key)
            if isinstance(w, (int, float)) and isinstance(g, (int, float)):
                rows.append({"notebook": path.stem, "key": key, "recorded": w, "run": g, "abs_diff": abs(g - w),
                             "allowed": ATOL + RTOL * abs(w)})
            elif w != g:
                rows.append({"notebook": path.stem, "key": key, "recorded": w, "run": g, "abs_diff": float("inf"),
                             "allowed": 0.0})
    return pd.DataFrame(rows)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", type=Path, help="directories written with ELBO_RECORD_DIR")
    a = p.parse_args(argv)
    for run in a.runs:
        d = deviations(run)
        per = d.groupby("notebook").agg(values=("key", "size"), changed=("abs_diff", lambda x: int((x > 0).sum())),
                                         max_abs_diff=("abs_diff", "max"))
        print(f"## {run}\n\n{per.to_markdown(floatfmt='.2g')}\n")
        worst = d.sort_values("abs_diff", ascending=False).head(5)
        print(worst.to_markdown(index=False, floatfmt=".6g") + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
