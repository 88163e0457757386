"""`make reproduce`'s notebook schedule (``--jobs``): the order each notebook may start in, the threads its kernel
gets, failures, and that notebooks allowed to run at the same time never measure the same thing."""
import os
import threading
import time

import pytest

from elbo_lib import workbook
from elbo_lib.workbook import NOTEBOOKS, FILLS, Entry, run_scheduled


def _recorder(seconds: dict[str, float] | None = None, fail: str | None = None):
    """A stand-in for executing a notebook: records when each started and ended and the threads it would get."""
    log, lock = [], threading.Lock()

    def run_one(e: Entry) -> None:
        with lock:
            log.append(("start", e.name, os.environ.get("OMP_NUM_THREADS"), time.monotonic()))
        time.sleep((seconds or {}).get(e.name, 0.01))
        if e.name == fail:
            raise RuntimeError(f"{e.name} failed")
        with lock:
            log.append(("end", e.name, None, time.monotonic()))
    return run_one, log


def _times(log):
    start = {n: t for k, n, _, t in log if k == "start"}
    end = {n: t for k, n, _, t in log if k == "end"}
    return start, end


def test_every_dependency_names_a_notebook_and_none_waits_on_an_alone_one():
    names = {e.name for e in NOTEBOOKS}
    alone = {e.name for e in NOTEBOOKS if e.alone}
    for e in NOTEBOOKS:
        assert set(e.after) <= names - alone - {e.name}, e.name


def test_one_job_runs_in_order_with_the_timing_notebook_last(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "7")
    run_one, log = _recorder()
    run_scheduled(NOTEBOOKS, run_one, jobs=1)
    started = [n for k, n, _, _ in log if k == "start"]
    assert started == [e.name for e in NOTEBOOKS if not e.alone] + [e.name for e in NOTEBOOKS if e.alone]
    assert {th for k, _, th, _ in log if k == "start"} == {"7"}


def test_two_jobs_respect_the_dependencies_and_give_each_kernel_its_share(monkeypatch):
    monkeypatch.setattr(workbook, "cores", lambda: 4)
    monkeypatch.setenv("OMP_NUM_THREADS", "4")
    run_one, log = _recorder({"table2_segmentation": 0.3, "table3_models": 0.2})
    run_scheduled(NOTEBOOKS, run_one, jobs=2)
    start, end = _times(log)
    assert set(start) == set(end) == {e.name for e in NOTEBOOKS}
    for e in NOTEBOOKS:
        for d in e.after:
            assert start[e.name] >= end[d], (e.name, d)
        if e.alone:  # after every other notebook, with every core
            assert start[e.name] >= max(t for n, t in end.items() if n != e.name)
    threads = {n: th for k, n, th, _ in log if k == "start"}
    assert {threads[e.name] for e in NOTEBOOKS if not e.alone} == {"2"}
    assert {threads[e.name] for e in NOTEBOOKS if e.alone} == {"4"} and os.environ["OMP_NUM_THREADS"] == "4"
    # two at a time: something independent of Table II ran while it did
    assert any(start[n] < end["table2_segmentation"] for n in start if n != "table2_segmentation")
    running = max(sum(start[n] <= t < end[n] for n in start) for t in start.values())
    assert running == 2


def test_a_failure_stops_the_schedule_after_the_running_notebooks_finish(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    run_one, log = _recorder({"table2_segmentation": 0.3}, fail="fig1_toy_bias")
    with pytest.raises(RuntimeError, match="fig1_toy_bias failed"):
        run_scheduled(NOTEBOOKS, run_one, jobs=2)
    start, end = _times(log)
    assert "table2_segmentation" in end  # it was running: it finished
    assert not any(e.name in start for e in NOTEBOOKS if e.alone)
    assert len(start) <= 3 and "OMP_NUM_THREADS" not in os.environ


def test_a_dependency_outside_the_run_is_ignored_and_a_cycle_is_refused():
    run_one, log = _recorder()
    only = [e for e in NOTEBOOKS if e.name in ("table8_fixed_score", "fig7_gamma")]
    run_scheduled(only, run_one, jobs=2)
    assert {n for k, n, _, _ in log if k == "start"} == {"table8_fixed_score", "fig7_gamma"}
    a = Entry("a", "A", "-", str, after=("b",))
    b = Entry("b", "B", "-", str, after=("a",))
    with pytest.raises(ValueError, match="waiting on each other"):
        run_scheduled([a, b], run_one, jobs=2)
    with pytest.raises(ValueError, match="jobs must be"):
        run_scheduled([a], run_one, jobs=0)


def _ancestors(name: str, by: dict[str, Entry]) -> set[str]:
    out, todo = set(), list(by[name].after)
    while todo:
        d = todo.pop()
        if d not in out:
            out.add(d)
            todo += list(by[d].after)
    return out


@pytest.mark.parametrize("quick", [False, True])
def test_notebooks_that_may_run_together_measure_nothing_in_common(quick):
    """Two notebooks that --jobs may run at the same time (neither waits on the other) measure nothing in common
    (:data:`workbook.FILLS`; a single-noun fill also makes the noun-phrase one) beyond what a notebook both wait
    on has measured already, so no measurement is made twice."""
    by = {e.name: e for e in NOTEBOOKS}
    inf = float("inf")
    measured = {n: {(f.model, f.dataset, f.image_list, f.method, f.paper): inf if f.limit is None else f.limit
                    for f in workbook.notebook_fills([n], quick)} for n in FILLS}
    together = [(a, b) for a in FILLS for b in FILLS if a < b
                and a not in _ancestors(b, by) and b not in _ancestors(a, by)]
    assert together  # the check compares something
    shared_checked = 0
    for a, b in together:
        for key in measured[a].keys() & measured[b].keys():
            need = max(measured[a][key], measured[b][key])
            made = [c for c in _ancestors(a, by) & _ancestors(b, by) if measured.get(c, {}).get(key, 0) >= need]
            assert made, (a, b, key)
            shared_checked += 1
    assert shared_checked  # e.g. Tables III and IV both read Table II's superset


def test_a_single_notebook_keeps_every_core(monkeypatch):
    monkeypatch.setattr(workbook, "cores", lambda: 4)
    monkeypatch.setenv("OMP_NUM_THREADS", "4")
    run_one, log = _recorder()
    run_scheduled([e for e in NOTEBOOKS if e.name == "effect_size"], run_one, jobs=2)
    assert [(n, th) for k, n, th, _ in log if k == "start"] == [("effect_size", "4")]
