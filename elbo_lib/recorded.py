"""The notebooks' portable check: their numbers against a recorded run, within a tolerance.

nbval compares a checked cell's printed text with the text stored in the committed notebook. A number printed
to three decimals can change its last digit with the CPU's vector kernels or the number of threads (other
summation orders), so printed tables are not what nbval checks. Instead each notebook's checked cell calls
:func:`check`: every number of its results is compared with the value recorded when the committed notebook was
made (``notebooks/recorded/<name>.json``), as ``|got - recorded| <= ATOL + RTOL * |recorded|``, and the cell
prints one line whose text does not depend on the digits. A real change of a result (0.01 mIoU, a paired
difference changing sign) exceeds the tolerance, so the printed line changes and nbval fails. How the
tolerance was chosen: ``docs/determinism.md``.

Recording: ``ELBO_RECORD=1`` (``make notebooks`` sets it) writes the file instead of comparing;
``ELBO_RECORD_DIR`` writes it elsewhere (to measure the variation across CPU settings).
"""
from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path

import numpy as np
import pandas as pd

from .paths import REPO_ROOT, atomic_write_json
from .workbook import parameters_of

NOTEBOOKS_DIR = REPO_ROOT / "notebooks"
RECORDED_DIR = NOTEBOOKS_DIR / "recorded"
# measured across the default kernels, ATEN_CPU_CAPABILITY=avx2 and OMP_NUM_THREADS=1: see docs/determinism.md
ATOL = 0.004
RTOL = 0.001

_NUMBER = r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?|[+-]?nan|[+-]?inf"
_NUMBER_LIST = re.compile(rf"^\s*[\[(]?\s*(?:{_NUMBER})(?:\s*,\s*(?:{_NUMBER}))*\s*[\])]?\s*$")


def _is_number(v) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating, bool, np.bool_)) and not isinstance(v, str)


def _numbers_in(text: str) -> list[float]:
    return [float(x) for x in re.findall(_NUMBER, text)]


def _is_numeric_cell(v) -> bool:
    return v is None or _is_number(v) or (isinstance(v, str) and bool(_NUMBER_LIST.match(v)))


def _cell_values(key: str, v) -> dict[str, float | None]:
    if v is None or (_is_number(v) and math.isnan(float(v))):
        return {key: None}
    if isinstance(v, str):
        return {f"{key}[{i}]": x for i, x in enumerate(_numbers_in(v))}
    return {key: float(v)}


def flatten(obj, prefix: str = "") -> dict[str, float | str | None]:
    """Every number of ``obj`` under a readable key. DataFrames: rows are keyed by their index (unless it is the
    default range) and by their text columns; numeric columns and interval strings ("[+0.002, +0.023]") give
    the numbers. Dicts and Series recurse by key; other text is kept as text and must match exactly."""
    if isinstance(obj, pd.DataFrame):
        out: dict = {}
        numeric = [c for c in obj.columns if all(_is_numeric_cell(v) for v in obj[c].tolist())]
        labels = [c for c in obj.columns if c not in numeric]
        use_index = not isinstance(obj.index, pd.RangeIndex)
        seen: dict[str, int] = {}
        for pos, (idx, row) in enumerate(obj.iterrows()):
            parts = ([str(x) for x in (idx if isinstance(idx, tuple) else (idx,))] if use_index else []) + \
                    [str(row[c]) for c in labels]
            name = "|".join(parts) or str(pos)
            seen[name] = seen.get(name, 0) + 1
            if seen[name] > 1:
                name = f"{name}#{seen[name]}"
            for c in numeric:
                out.update(_cell_values(f"{prefix}{name}/{c}", row[c]))
        return out
    if isinstance(obj, pd.Series):
        return flatten(obj.to_dict(), prefix)
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            out.update(flatten(v, f"{prefix}{k}/"))
        return out
    key = prefix.rstrip("/") or "value"
    if isinstance(obj, str):
        return {key: obj}
    if isinstance(obj, (list, tuple)):
        out = {}
        for i, v in enumerate(obj):
            out.update(flatten(v, f"{prefix}{i}/"))
        return out
    return _cell_values(key, obj)


def _close(got, want, atol: float, rtol: float) -> bool:
    if isinstance(want, str) or isinstance(got, str):
        return got == want
    if want is None or got is None:
        return got is None and want is None
    return abs(got - want) <= atol + rtol * abs(want)


def _fmt(v) -> str:
    return "missing" if v is ... else "NaN" if v is None else v if isinstance(v, str) else f"{v:.6g}"


def compare(got: dict, want: dict, atol: float = ATOL, rtol: float = RTOL) -> list[str]:
    """One line per value that differs beyond the tolerance (or is missing on either side)."""
    bad = []
    for k in sorted(set(got) | set(want)):
        g, w = got.get(k, ...), want.get(k, ...)
        if g is ... or w is ... or not _close(g, w, atol, rtol):
            bad.append(f"differs: {k} = {_fmt(g)}, recorded {_fmt(w)}")
    return bad


def _jsonable(params: dict) -> dict:
    return json.loads(json.dumps(params, default=str))


def run_parameters(name: str, namespace: dict) -> dict:
    """The values of notebook ``name``'s papermill parameters in ``namespace`` (its globals), less ``out``."""
    return _jsonable({k: namespace[k] for k in sorted(parameters_of(NOTEBOOKS_DIR / f"{name}.ipynb")) if k != "out"})


def check(name: str, namespace: dict, atol: float = ATOL, rtol: float = RTOL, **results) -> None:
    """Compare ``results`` (tables, dicts, numbers) with the recorded run of notebook ``name`` and print one
    verdict line (plus one line per differing value); nbval compares that text. ``namespace`` is the
    notebook's ``globals()``: a run with other parameters than the recorded one (e.g. ``make reproduce``'s full
    size) is not compared."""
    values = flatten(results)
    params = run_parameters(name, namespace)
    record_dir = os.environ.get("ELBO_RECORD_DIR")
    if os.environ.get("ELBO_RECORD") == "1" or record_dir:
        path = Path(record_dir or RECORDED_DIR) / f"{name}.json"
        atomic_write_json(path, {"parameters": params, "values": values})
    path = RECORDED_DIR / f"{name}.json"
    if not path.exists():
        print(f"{name}: no recorded run ({path.name} in {path.parent}); nothing compared")
        return
    rec = json.loads(path.read_text())
    if rec["parameters"] != params:
        print(f"{name}: parameters differ from the recorded run; nothing compared")
        return
    bad = compare(values, rec["values"], atol, rtol)
    if bad:
        print(f"{name}: {len(bad)} of {len(rec['values'])} recorded values differ beyond {atol:g} + {rtol:.1%}")
        print("\n".join(bad))
        return
    print(f"{name}: all {len(values)} values equal the recorded run within {atol:g} + {rtol:.1%}")
