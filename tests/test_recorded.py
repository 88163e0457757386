"""The notebooks' portable check (elbo_lib.recorded): a real change of a result fails, kernel noise does not."""
import json
import re

import nbformat
import numpy as np
import pandas as pd
import pytest

from elbo_lib import recorded
from elbo_lib.paths import REPO_ROOT
from elbo_lib.workbook import NOTEBOOKS, parameters_of


def _table(heldout=0.442, delta=0.012, lo=0.002):
    return pd.DataFrame({"variant": ["uncalibrated", "ELBO-T2IAlign"], "heldout_mIoU": [0.430, heldout],
                         "heldout_thr": [0.7, 0.7], "heldout_ci95": ["[0.386, 0.472]", "[0.397, 0.481]"],
                         "delta_vs_uncal": [np.nan, delta], "delta_ci95": [np.nan, f"[{lo:+.3f}, +0.023]"]})


def test_flatten_keys_rows_by_their_labels_and_reads_intervals():
    f = recorded.flatten({"table": _table(), "pairs": {"both": 15, "mcnemar_p": 0.125}, "raw": True})
    assert f["table/ELBO-T2IAlign/heldout_mIoU"] == 0.442
    assert f["table/ELBO-T2IAlign/delta_ci95[0]"] == 0.002 and f["table/ELBO-T2IAlign/delta_ci95[1]"] == 0.023
    assert f["table/uncalibrated/delta_vs_uncal"] is None and f["table/uncalibrated/delta_ci95"] is None
    assert f["pairs/both"] == 15 and f["raw"] == 1.0
    pivot = pd.DataFrame({"study": ["s", "s"], "level": [0, 1], "variant": ["u", "u"], "iou": [0.1, 0.2]}).pivot_table(
        index=["study", "level"], columns="variant", values="iou")
    assert recorded.flatten(pivot) == {"s|0/u": 0.1, "s|1/u": 0.2}


@pytest.mark.parametrize("change,fails", [
    ({}, False),
    ({"heldout": 0.442 + 0.003}, False),             # kernel-sized noise passes
    ({"heldout": 0.442 + 0.01}, True),               # 0.01 mIoU fails
    ({"delta": -0.012}, True),                       # a paired difference changing sign fails
    ({"lo": -0.003}, True),                          # so does an interval bound crossing zero by 0.005
])
def test_compare_fails_on_a_real_change(change, fails):
    want = recorded.flatten(_table())
    got = recorded.flatten(_table(**change))
    assert bool(recorded.compare(got, want)) == fails


def test_compare_reports_missing_and_nan_and_text():
    assert recorded.compare({"a": 1.0}, {"a": 1.0, "b": 2.0}) == ["differs: b = missing, recorded 2"]
    assert recorded.compare({"a": None}, {"a": 0.5}) and not recorded.compare({"a": None}, {"a": None})
    assert recorded.compare({"a": "toy-val"}, {"a": "0.2"}) and not recorded.compare({"a": "x"}, {"a": "x"})
    assert not recorded.compare({"a": 24.58}, {"a": 24.562})  # relative part for large values (0.1%)


def test_check_records_compares_and_skips_other_parameters(tmp_path, monkeypatch, capsys):
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("limit = 60\nseed = 0\nout = 'figures'",
                                                                   metadata={"tags": ["parameters"]})])
    nbformat.write(nb, tmp_path / "t.ipynb")
    monkeypatch.setattr(recorded, "NOTEBOOKS_DIR", tmp_path)
    monkeypatch.setattr(recorded, "RECORDED_DIR", tmp_path / "recorded")
    monkeypatch.delenv("ELBO_RECORD", raising=False)
    monkeypatch.delenv("ELBO_RECORD_DIR", raising=False)
    ns = {"limit": 60, "seed": 0, "out": "elsewhere"}
    recorded.check("t", ns, table=_table())
    assert "no recorded run" in capsys.readouterr().out
    monkeypatch.setenv("ELBO_RECORD", "1")
    recorded.check("t", ns, table=_table())
    assert json.loads((tmp_path / "recorded" / "t.json").read_text())["parameters"] == {"limit": 60, "seed": 0}
    monkeypatch.delenv("ELBO_RECORD")
    capsys.readouterr()
    recorded.check("t", {**ns, "out": "figures"}, table=_table(heldout=0.4425))  # `out` is not a parameter of results
    assert capsys.readouterr().out == "t: all 13 values equal the recorded run within 0.004 + 0.1%\n"
    recorded.check("t", ns, table=_table(heldout=0.46))
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("t: 1 of 13 recorded values differ") and "ELBO-T2IAlign/heldout_mIoU = 0.46" in out[1]
    recorded.check("t", {**ns, "limit": 200}, table=_table(heldout=0.46))
    assert "parameters differ" in capsys.readouterr().out


def test_every_notebook_check_has_a_recorded_run_at_its_own_parameters():
    """Each committed notebook's checked cell calls ex.check with its own name, and the recorded run it compares
    with was made at the notebook's default parameters (else nbval would compare nothing)."""
    for e in NOTEBOOKS:
        if e.name == "cost":  # timings only: nothing of it is checked
            continue
        nb = nbformat.read(REPO_ROOT / "notebooks" / f"{e.name}.ipynb", as_version=4)
        checked = [c for c in nb.cells if "nbval-check-output" in c.metadata.get("tags", [])]
        assert len(checked) == 1 and re.search(rf'ex\.check\("{e.name}", globals\(\)', checked[0].source), e.name
        rec = json.loads((REPO_ROOT / "notebooks" / "recorded" / f"{e.name}.json").read_text())
        params_cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
        ns: dict = {}
        exec(params_cell.source, ns)
        assert rec["parameters"] == recorded._jsonable({k: ns[k] for k in parameters_of(
            REPO_ROOT / "notebooks" / f"{e.name}.ipynb") if k != "out"}), e.name
        assert [o.text for o in checked[0].outputs if o.output_type == "stream"] == [
            f"{e.name}: all {len(rec['values'])} values equal the recorded run within "
            f"{recorded.ATOL:g} + {recorded.RTOL:.1%}\n"] or e.name == "explore_toy", e.name
