"""What one lent GPU session ran (the `device` tool; 15 minutes of device time in all), kept for the record.

1. ``benchmarks/bench_aligner.py --arch sd15-random --device cuda``: the SD1.5-shaped random UNet at 512 px.
2. The toy model's UNet + text encoder trained on the GPU (``python -m elbo_lib.toy.train --device cuda``),
   resuming from the committed model's VAE checkpoint (2,500 steps, the CPU recipe's): a 200-step probe times
   a step, then the main run takes as many steps (rounded down to 500) as the time left allows.
3. The generation gate measured there (``toy.check.generation_presence``, the check's prompts and settings).

The session of 2026-11-26 (H200): the bench took 73 s, the probe measured 86 ms/step at batch 128 (not
profiled; its CPU-side data preparation takes about 5 ms on the
2-core workstation), the main run made 3,500 steps (283 s;
generation 0.417). Two calls by hand on the warm machine followed: ``python -m elbo_lib.toy.train --device cuda
--work-dir /tmp/main --out /tmp/m2 --unet-steps 7000 --batch 128 --checkpoint-every 2000 --threads 8 --extend``
(stopped by its 330 s timeout after the step-6,000 checkpoint), then the same with ``--export-only``: that
pipeline is ``data/toy-sd`` (the fifth model). A future session should profile a step first: if the 86 ms
are overhead, a larger batch costs little more per step.

Reads ``.cache/gpu/{vae.pt,scenes.npz}`` (carried); writes logs, the bench table and the pipeline to ``$OUT``.
``SESSION_BUDGET_S`` (default 540) is the wall-clock budget of the whole script.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

T0 = time.time()
BUDGET = float(os.environ.get("SESSION_BUDGET_S", 540))
OUT = Path(os.environ.get("OUT", "/tmp/gpu-out"))
OUT.mkdir(parents=True, exist_ok=True)
CARRY = Path(".cache/gpu")
BATCH = int(os.environ.get("TOY_BATCH", 128))
DEVICE = os.environ.get("SESSION_DEVICE", "cuda")  # "cpu" only to try the script out
PROBE_STEPS = int(os.environ.get("PROBE_STEPS", 200))
ROUND = int(os.environ.get("STEPS_ROUND", 500))
THREADS = os.environ.get("TRAIN_THREADS", "8")
LOG = open(OUT / "session.log", "a")


def log(*parts) -> None:
    msg = f"[{time.time() - T0:6.1f} s] " + " ".join(map(str, parts))
    print(msg, flush=True)
    LOG.write(msg + "\n")
    LOG.flush()


def left() -> float:
    return BUDGET - (time.time() - T0)


def run(cmd: list[str], timeout: float, log_name: str) -> int:
    log("run:", " ".join(cmd), f"(timeout {timeout:.0f} s)")
    with open(OUT / log_name, "a") as f:
        try:
            return subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, timeout=max(timeout, 1)).returncode
        except subprocess.TimeoutExpired:
            log("timed out:", cmd[:4])
            return -9


def train_cmd(work: str, out: str, steps: int, every: int) -> list[str]:
    return [sys.executable, "-m", "elbo_lib.toy.train", "--device", DEVICE, "--work-dir", work, "--out", out,
            "--unet-steps", str(steps), "--batch", str(BATCH), "--checkpoint-every", str(every), "--threads", THREADS]


def seed_work_dir(work: Path) -> None:
    work.mkdir(parents=True, exist_ok=True)
    for name in ("vae.pt", "scenes.npz"):
        shutil.copy(CARRY / name, work / name)


def main() -> None:
    import torch
    log("torch", torch.__version__, "cuda", torch.cuda.is_available(),
        torch.cuda.get_device_name(0) if torch.cuda.is_available() else "-")
    import diffusers
    import transformers
    log("diffusers", diffusers.__version__, "transformers", transformers.__version__)

    # 1. the SD1.5-shaped benchmark
    if os.environ.get("SKIP_BENCH") != "1":
        run([sys.executable, "benchmarks/bench_aligner.py", "--arch", "sd15-random", "--device", DEVICE,
             "--classes", "2", "10", "--repeats", "2", "--csv", str(OUT / "bench_sd15.csv")],
            min(150, left() - 300), "bench_sd15.txt")

    # 2a. probe: time a training step
    probe = Path("/tmp/probe")
    seed_work_dir(probe)
    t = time.time()
    run(train_cmd(str(probe), "/tmp/probe-out", PROBE_STEPS, 100), min(120, left() - 200), "train.log")
    st = torch.load(probe / "unet.pt", weights_only=True, map_location="cpu")  # plain tensors and numbers only
    s_step = st["seconds"] / st["step"]
    log(f"probe: {st['step']} steps in {st['seconds']:.1f} s ({1000 * s_step:.1f} ms/step at batch {BATCH}); "
        f"probe wall {time.time() - t:.1f} s")

    # 2b. the main run: as many steps as the time left allows (setup ~ the probe's overhead)
    main_dir = Path("/tmp/main")
    seed_work_dir(main_dir)
    shutil.copy(probe / "latents.pt", main_dir / "latents.pt")
    overhead = (time.time() - t) - st["seconds"]
    reserve = 50.0  # export, the generation check, packing
    steps = int((left() - reserve - overhead) / s_step) // ROUND * ROUND
    log(f"main run: {steps} steps (left {left():.0f} s, setup overhead {overhead:.0f} s)")
    rc = run(train_cmd(str(main_dir), "/tmp/toy-sd-gpu", steps, 2000), left() - 50, "train.log")
    if rc != 0:
        log("main run did not finish; exporting from its last checkpoint")
        run(train_cmd(str(main_dir), "/tmp/toy-sd-gpu", steps, 2000) + ["--export-only"], 60, "train.log")
    model = Path("/tmp/toy-sd-gpu")
    log("training.json:", (model / "training.json").read_text()[-600:])

    # pack the pipeline: the UNet weights alone (14.5 MB), the rest in one tar
    unet_file = next((model / "unet").glob("*.safetensors"))
    shutil.copy(unet_file, OUT / unet_file.name)
    with tarfile.open(OUT / "toy-sd-rest.tar", "w") as tar:
        for p in sorted(model.rglob("*")):
            if p.is_file() and p != unet_file:
                tar.add(p, arcname=str(p.relative_to(model)))
    log("packed the pipeline")

    # 3. the generation gate on the GPU
    from elbo_lib.models import load_pipeline
    from elbo_lib.toy.check import generation_presence
    pipe = load_pipeline(str(model), device=DEVICE, dtype=torch.float32)
    presence, df = generation_presence(pipe)
    df.to_csv(OUT / "generation.csv", index=False)
    log(f"generation_presence (GPU, 120 prompts): {presence:.3f}")
    (OUT / "summary.json").write_text(json.dumps({"s_per_step": s_step, "steps": steps, "batch": BATCH,
                                                  "generation_presence_gpu": presence}, indent=2))
    log("done")


if __name__ == "__main__":
    main()
