"""Scale-out with accelerate (docs/scale-out.md): shares, the process group's errors, the rate records of several
processes, and `accelerate launch` runs on the CPU (gloo): 2 processes give the metrics of 1 bit for bit, a killed
run's relaunch measures only the rest, a crash in one process stops the run without metrics."""
import inspect
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

import elbo_lib.experiments as ex
from elbo_lib import workbook
from elbo_lib.datasets import official_categories
from elbo_lib.evaluation.cache import MeasurementCache, measurement_files
from elbo_lib.evaluation.plan import MeasurementPlan, Plan
from elbo_lib.evaluation.scaleout import Processes, process_label, processes
from elbo_lib.models.random_init import tiny_sd_pipeline

ROOT = Path(__file__).resolve().parents[1]
VOC = ROOT / "tests" / "fixtures" / "realdata" / "voc"
FAST_ARGS = ["--elbo-steps", "4", "--attention-steps", "2", "--n-boot", "50"]


# ---- shares and process bookkeeping (no process group) -----------------------------------------------------------

@pytest.mark.parametrize("n,world", [(0, 2), (1, 2), (7, 2), (8, 3), (5, 8)])
def test_shares_are_disjoint_and_cover_every_image(n, world):
    shares = [Processes(r, world, "cpu").shard(n) for r in range(world)]
    flat = [i for s in shares for i in s]
    assert sorted(flat) == list(range(n)) and len(set(flat)) == n  # each image in exactly one share
    assert max(map(len, shares)) - min(map(len, shares)) <= 1
    assert Processes().shard(n) == list(range(n))


def test_single_process_needs_no_launcher(monkeypatch):
    for var in ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE", "ACCELERATE_USE_CPU",
                "MASTER_PORT"):
        monkeypatch.delenv(var, raising=False)
    p = processes("cpu")
    assert (p.index, p.count, p.device, p.is_main, p.label()) == (0, 1, "cpu", True, "")
    assert p.gather([(2, "c"), (0, "a"), (1, "b")]) == ["a", "b", "c"]  # image order, as one process makes them
    assert process_label() == ""


def test_launcher_mistakes_are_named(monkeypatch):
    """`accelerate launch --cpu --num_processes 2` starts one process (accelerate needs mpirun for more CPU
    processes): said, not run as one process; a device index with several processes is refused."""
    for var in ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("ACCELERATE_USE_CPU", "True")
    monkeypatch.setenv("MASTER_PORT", "29500")
    with pytest.raises(ValueError, match=r"--cpu started one process .*--multi_gpu --num_processes N .*--device cpu"):
        processes(None)
    monkeypatch.delenv("MASTER_PORT")
    assert processes(None).count == 1  # --cpu with one process: fine
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    with pytest.raises(ValueError, match=r"device 'cuda:1': with 2 processes each one takes its own device"):
        processes("cuda:1")
    assert process_label() == "process 2 of 2: "


def test_rate_records_of_several_processes_add_up(tmp_path):
    cache = MeasurementCache(tmp_path, "m", {"k": 1})
    cache.record_rate("cpu", 2.0, 10, 100)
    cache.record_rate("cpu", 4.0, 30, 300, process=1)
    cache.record_rate("cpu", 1.0, 10, 100, process=1)
    files = sorted(p.name for p in cache.model_dir.iterdir())
    assert files == ["rate-cpu.json", "rate-cpu.p1.json"]  # one file per process: no two write the same file
    assert cache.rate("cpu") == {"seconds": 7.0, "passes": 50, "images": 3, "bytes": 500}
    assert cache.rate("cuda") is None
    (cache.model_dir / "rate-cpu.p2.json").write_text("{broken")
    with pytest.raises(ValueError, match=r"rate-cpu.p2.json is not a rate record"):
        cache.rate("cpu")


def test_plan_line_divides_the_estimate_among_processes():
    todo = MeasurementPlan("ELBO-T2IAlign", None, [0, 1], 24000)  # 24000 passes at 10 ms: 240 s in one process
    plan = Plan("voc", ["a", "b"], [[1], [2]], [todo], "cuda", 0.01, "a benchmark", None)
    assert "estimated 4 min on cuda (24000 denoiser passes" in plan.line()
    plan.processes = 4
    assert "estimated 60 s on 4 processes on cuda (24000 denoiser passes" in plan.line()
    assert plan.first_image_line("ELBO-T2IAlign", 120.0, 12000, 10 ** 6).endswith("other 1 images across 4 processes")
    assert "about 30 s and" in plan.first_image_line("ELBO-T2IAlign", 120.0, 12000, 10 ** 6)  # 12000 left at 10 ms / 4


# ---- accelerate launch on the CPU -----------------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(tmp_path: Path) -> dict:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "ELBO_LIB_CACHE": str(tmp_path / "cache"),
            "CUDA_VISIBLE_DEVICES": "", "HF_HOME": str(tmp_path / "hf"),  # no accelerate config file is read
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}


def _launch(args: list[str], nproc: int, env: dict, **kw) -> subprocess.Popen:
    """`accelerate launch` with every choice given (no config file, no prompt), processes on the CPU with gloo;
    one process: plain `python -m elbo_lib`."""
    if nproc == 1:
        cmd = [sys.executable, "-m", "elbo_lib", *args]
    else:
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(nproc),
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port",
               str(_free_port()), "-m", "elbo_lib", *args]
    return subprocess.Popen(cmd, cwd=ROOT, env=env, text=True, **kw)


def _run(args, nproc, env, timeout=600):
    p = _launch(args, nproc, env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = p.communicate(timeout=timeout)
    return p.returncode, out, err


def _metrics(out: Path) -> dict:
    m = json.loads((out / "metrics.json").read_text())
    m.pop("seconds")  # the only timing
    return m


def _images_measured(cache: Path) -> dict[str, int]:
    """Images each process measured, from its rate record (process 0: rate-cpu.json, process r: rate-cpu.pr.json)."""
    return {p.name: json.loads(p.read_text())["images"] for p in cache.rglob("rate-cpu*.json")}


@pytest.mark.slow
def test_two_processes_give_the_metrics_of_one_bit_for_bit(tmp_path):
    """toy-test (its held-out threshold from toy-val): every number of metrics.json but the time, and the CSVs and
    summary, equal; each image measured by one process only (their rate records count the images each made)."""
    env = _env(tmp_path)
    outs = {}
    for nproc in (1, 2):
        args = ["evaluate", "--limit", "4", "--n-boot", "100", "--device", "cpu", "--cache-dir",
                str(tmp_path / f"cache{nproc}"), "--out", str(tmp_path / f"out{nproc}")]
        t0 = time.time()
        rc, out, err = _run(args, nproc, env)
        assert rc == 0, err[-3000:]
        outs[nproc] = out
        print(f"{nproc} process(es): {time.time() - t0:.1f} s")
    assert outs[2].count("| calibrated") == 1  # the table, printed by the main process only
    assert _metrics(tmp_path / "out2") == _metrics(tmp_path / "out1")
    for f in ("per_class.csv", "size_buckets.csv", "summary.md"):
        assert (tmp_path / "out2" / f).read_bytes() == (tmp_path / "out1" / f).read_bytes(), f
    files = measurement_files(tmp_path / "cache2")
    assert len(files) == 8  # 4 toy-test + 4 toy-val images
    counts = _images_measured(tmp_path / "cache2")
    # images 0, 2 of each split by process 0 and 1, 3 by process 1: no image measured twice, none left out
    assert counts == {"rate-cpu.json": 4, "rate-cpu.p1.json": 4}, counts
    assert sum(counts.values()) == len(files)
    (settings,) = (tmp_path / "cache2").rglob("settings.json")  # written once, by the main process, before anyone
    assert settings.stat().st_mtime_ns <= min(f.stat().st_mtime_ns for f in files)  # measured


def _worker_pid(launcher: int, rank: int) -> int | None:
    """The pid of the worker with RANK=rank among the launcher's children (torchrun starts them)."""
    kids = set()
    for task in Path(f"/proc/{launcher}/task").iterdir():
        try:
            kids.update(int(k) for k in (task / "children").read_text().split())
        except FileNotFoundError:
            continue
    for k in kids:
        try:
            if f"RANK={rank}".encode() in Path(f"/proc/{k}/environ").read_bytes().split(b"\0"):
                return k
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
    return None


@pytest.mark.slow
def test_a_killed_process_is_resumed_by_measuring_only_the_rest(tmp_path):
    """VOC fixture, the official protocol, 2 processes: one process SIGKILLed after the first images stops the run
    (no metrics); the relaunch measures exactly the images without a cache file, leaves the others untouched,
    and gives the metrics of one uninterrupted process."""
    model = tmp_path / "tiny-voc"
    tiny_sd_pipeline(words=tuple(k for k, _ in official_categories("voc"))).save_pretrained(model)
    env = _env(tmp_path)
    cache = tmp_path / "cache"

    def args(out, cache_dir=cache):
        return ["evaluate", "--model", str(model), "--dataset", "voc", "--data-root", str(VOC / "data"),
                "--image-list", str(VOC / "val_id.txt"), "--device", "cpu", "--cache-dir", str(cache_dir),
                "--out", str(out), *FAST_ARGS]
    p = _launch(args(tmp_path / "out"), 2, env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline, victim = time.time() + 300, None
    while time.time() < deadline and p.poll() is None:
        if len(measurement_files(cache)) >= 2:
            victim = _worker_pid(p.pid, 1)
            if victim is not None:
                os.kill(victim, signal.SIGKILL)
                break
        time.sleep(0.05)
    _, err = p.communicate(timeout=300)
    assert victim is not None and p.returncode != 0, err[-3000:]
    assert not (tmp_path / "out" / "metrics.json").exists()
    before = {f: f.stat().st_mtime_ns for f in measurement_files(cache)}
    assert 2 <= len(before) < 8, len(before)
    print(f"{len(before)} of 8 images in the cache when the run stopped")
    measured_before = sum(_images_measured(cache).values())
    rc, _, err = _run(args(tmp_path / "out"), 2, env)
    assert rc == 0, err[-3000:]
    after = measurement_files(cache)
    assert len(after) == 8 and all(f.stat().st_mtime_ns == t for f, t in before.items())  # finished ones untouched
    assert sum(_images_measured(cache).values()) - measured_before == 8 - len(before)  # only the rest measured
    rc, _, err = _run(args(tmp_path / "one", tmp_path / "cache-one"), 1, env)
    assert rc == 0, err[-3000:]
    assert _metrics(tmp_path / "out") == _metrics(tmp_path / "one")


@pytest.mark.slow
def test_a_crash_in_one_process_stops_the_run_with_its_error(tmp_path):
    """Image 1 of the list (process 2's share) is corrupt: the run stops, the error line names the process and the
    file, and no metrics file is written."""
    data = tmp_path / "voc"
    shutil.copytree(VOC / "data", data)
    names = (VOC / "val_id.txt").read_text().split()
    (data / "VOCdevkit" / "VOC2012" / "JPEGImages" / f"{names[1]}.jpg").write_bytes(b"not a jpeg")
    model = tmp_path / "tiny-voc"
    tiny_sd_pipeline(words=tuple(k for k, _ in official_categories("voc"))).save_pretrained(model)
    out = tmp_path / "out"
    out.mkdir()
    rc, stdout, err = _run(["evaluate", "--model", str(model), "--dataset", "voc", "--data-root", str(data),
                            "--image-list", str(VOC / "val_id.txt"), "--device", "cpu", "--out", str(out),
                            *FAST_ARGS], 2, _env(tmp_path))
    assert rc != 0
    lines = [ln for ln in re.split(r"[\r\n]", err) if ln.startswith("error: ")]
    assert any(ln.startswith("error: process 2 of 2: ") and f"{names[1]}.jpg" in ln for ln in lines), err[-3000:]
    assert list(out.iterdir()) == [] and "| calibrated" not in stdout


# ---- make reproduce NPROC=N: the notebooks' measurements made beforehand ----------------------------------------------

def test_notebook_fills_cover_the_notebooks_measurements():
    assert workbook.METHOD_BASELINES == inspect.signature(ex.method_heatmaps).parameters["baselines"].default
    assert workbook.TOY_DEFAULT == ex.TOY_MODELS[0]
    full = {e.name: e.full for e in workbook.NOTEBOOKS}
    toy = workbook.notebook_fills()
    by = {(f.model, f.dataset, f.method, f.paper, f.nouns_only): f for f in toy}
    assert len(by) == len(toy)  # each measurement once
    superset_limit = max(full[n]["limit"] for n in ("table2_segmentation", "fig3_fig4_qualitative",
                                                    "table6_elbo_timesteps", "table7_elbo_sampling",
                                                    "table8_fixed_score", "table9_attention_timesteps", "fig7_gamma"))
    for split in ("toy-test", "toy-val"):  # evaluate's threshold split is measured too
        assert by[("data/toy-sd", split, "aligner", False, False)].limit == superset_limit
        assert by[("data/toy-sd", split, "aligner", False, True)].limit == full["table4_noun_phrases"]["limit"]
        # the mechanism notebook reads the other toy models' toy-test images too (no threshold split of its own)
        other_models = max(full["table3_models"]["limit"], full["mechanism"]["limit"] if split == "toy-test" else 0)
        for m in ("data/toy-sd-v", "data/toy-sd3"):
            assert by[(m, split, "aligner", True, False)].limit == other_models
        assert by[("data/toy-sd", split, "DAAM", False, False)].limit == full["table2_segmentation"]["limit"]
    assert toy[0].nouns_only and toy[0].method == "aligner"  # the single-noun fill makes the noun-phrase one too
    real_data = [e.name for e in workbook.NOTEBOOKS if not e.toy_only]  # toy-only notebooks stay on the toy model
    real = workbook.notebook_fills(real_data, extra={"model": "M", "models": ["M"], "datasets": ["voc"], "dataset": "voc",
                                          "data_root": "/d", "image_lists": str(VOC.parent)})
    listed = str(VOC / "val_id.txt")
    keys = {(f.dataset, f.image_list, f.method, f.paper, f.nouns_only): f.limit for f in real}
    assert {d for d, *_ in keys} == {"voc"}  # no threshold split on real data
    assert {lst for _, lst, *_ in keys} == {listed}  # every notebook reads the authors' list, as the notebooks do
    assert keys[("voc", listed, "aligner", False, False)] is None  # Table II: every image of the list
    assert keys[("voc", listed, "Semantic DiffSeg", False, False)] is None
    assert keys[("voc", listed, "aligner", False, True)] is None  # Table IV
    assert keys[("voc", listed, "aligner", True, False)] is None  # Table III: the paper's configuration of M
    assert keys[("voc", listed, "DAAM", False, False)] is None  # Table II's covers Figs. 3-4's 200-image subset
    figs = workbook.notebook_fills(["fig3_fig4_qualitative"], extra={"model": "M", "datasets": ["voc"], "dataset": "voc",
                                                                     "data_root": "/d", "image_lists": str(VOC.parent)})
    assert {(f.image_list, f.limit) for f in figs} == {(listed, full["fig3_fig4_qualitative"]["limit"])}
    only = workbook.notebook_fills(["table8_fixed_score"])
    assert {(f.dataset, f.method, f.nouns_only) for f in only} == {("toy-test", "aligner", False),
                                                                   ("toy-val", "aligner", False)}


@pytest.mark.slow
def test_fill_cache_in_two_processes_then_the_notebook_measures_nothing(tmp_path):
    """`make reproduce NPROC=2`'s first step on the VOC fixture (Table II: ELBO-T2IAlign's superset and the
    baselines on the authors' list; Table III: the paper's configuration; Table IV: the single-noun ELBO): both
    processes measure, and the notebooks then run from the cache (no process's rate record grows)."""
    model = tmp_path / "tiny-voc"
    tiny_sd_pipeline(words=tuple(k for k, _ in official_categories("voc"))).save_pretrained(model)
    data = tmp_path / "voc"  # Tables III and IV read the default list: the authors' copied to val.txt
    shutil.copytree(VOC / "data", data)
    (data / "VOCdevkit" / "VOC2012" / "ImageSets" / "Segmentation").mkdir(parents=True)
    shutil.copy(VOC / "val_id.txt", data / "VOCdevkit" / "VOC2012" / "ImageSets" / "Segmentation" / "val.txt")
    env = _env(tmp_path)
    common = ["--quick", "--model", str(model), "--data-root", str(data), "--datasets", "voc",
              "--image-lists", str(VOC.parent), "--only", "table2_segmentation,table3_models,table4_noun_phrases",
              "--device", "cpu"]
    t0 = time.time()
    p = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                        "--main_process_port", str(_free_port()), "-m", "elbo_lib.workbook", "--fill-cache", *common],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stderr[-3000:]
    print(f"fill, 2 processes: {time.time() - t0:.1f} s")
    assert "[workbook] filled" in p.stdout and p.stdout.count("[workbook] filled") == 1
    filled = _images_measured(tmp_path / "cache")
    assert filled.get("rate-cpu.json", 0) > 0 and filled.get("rate-cpu.p1.json", 0) > 0, filled
    t0 = time.time()
    p = subprocess.run([sys.executable, "-m", "elbo_lib.workbook", *common, "--out", str(tmp_path / "figs")], cwd=ROOT,
                       env=env, capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stderr[-3000:]
    print(f"notebooks from the cache: {time.time() - t0:.1f} s")
    for name in ("table2_segmentation", "table3_models", "table4_noun_phrases"):
        assert (tmp_path / "figs" / f"{name}.csv").exists(), name
    assert _images_measured(tmp_path / "cache") == filled  # the notebooks measured nothing


def test_fill_cache_mistakes_are_one_line(tmp_path, capsys):
    argv = ["--fill-cache", "--model", "m", "--data-root", str(tmp_path), "--datasets", "voc", "--only",
            "table8_fixed_score"]
    assert workbook.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and "PASCAL VOC 2012" in err[-1] and len(err) == 1


def test_accelerate_cpu_flag_with_several_processes_is_one_line(tmp_path):
    """accelerate 1.15's `launch --cpu --num_processes 2` starts one process (without mpirun): the run says so."""
    p = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "2",
                        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                        "--main_process_port", str(_free_port()), "-m", "elbo_lib", "evaluate", "--limit", "1",
                        "--cache-dir", str(tmp_path / "c"), "--out", str(tmp_path / "o")],
                       cwd=ROOT, env=_env(tmp_path), capture_output=True, text=True, timeout=300)
    assert p.returncode != 0 and not (tmp_path / "o").exists() and not (tmp_path / "c").exists()
    assert p.stderr.count("error: ") == 1 and "error: accelerate launch --cpu started one process" in p.stderr, \
        p.stderr[-2000:]
