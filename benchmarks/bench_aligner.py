"""Aligner throughput: batched ELBO vs the authors' per-(class, timestep) loop, side by side.

    python benchmarks/bench_aligner.py                      # toy model on CPU
    python benchmarks/bench_aligner.py --arch sd15-random   # SD1.5-shaped random UNet at 512 px (GPU)

Prints a table: classes, ELBO mode, seconds per image (attention + ELBO; median over repeats),
images/s, denoiser passes/s in the ELBO, and the batched/loop speed-up per image (median, min and max
over repeats; the two modes alternate within each repeat), all measured in this one run.

A second table times the bare denoiser (no ELBO bookkeeping) at batch 1 and at the batched path's chunk
size, alternating: its ratio is what batching alone can buy on this device, the ceiling the ELBO speed-up
approaches once per-call overhead is gone.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from elbo_lib import Aligner  # noqa: E402
from elbo_lib.elbo import class_losses, class_losses_loop, elbo_timesteps, shared_noise  # noqa: E402
from elbo_lib.toy.world import COLOURS, SHAPES  # noqa: E402


def _sync(device):
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def _denoiser_ceiling(ad, x0, cond, t, batch_size: int, repeats: int, device) -> pd.DataFrame:
    """Bare denoiser passes/s at batch 1 and at the ELBO chunk size, measured alternately."""
    n_rows = len(cond) * len(t)
    chunk = int(np.ceil(n_rows / np.ceil(n_rows / batch_size)))
    z = x0.expand(chunk, *x0.shape[1:]).to(ad.dtype)
    tt = t[torch.arange(chunk) % len(t)]
    ci = cond.index(torch.arange(chunk) % len(cond))
    calls = {1: (lambda: ad.predict(z[:1], tt[:1], cond.index(torch.tensor([0])))), chunk: (lambda: ad.predict(z, tt, ci))}
    per_call = {1: max(1, chunk), chunk: 1}  # the same number of passes per timing for both
    for fn in calls.values():
        fn()
    rates = {b: [] for b in calls}
    for _ in range(repeats):
        for b, fn in calls.items():
            _sync(device)
            t0 = time.perf_counter()
            for _ in range(per_call[b]):
                fn()
            _sync(device)
            rates[b].append(per_call[b] * b / (time.perf_counter() - t0))
    r1, rb = float(np.median(rates[1])), float(np.median(rates[chunk]))
    return pd.DataFrame([{"batch": "1", "passes_per_s": r1, "ratio_to_batch_1": 1.0},
                         {"batch": str(chunk), "passes_per_s": rb, "ratio_to_batch_1": rb / r1}])


def main(argv=None) -> pd.DataFrame:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", choices=["toy", "sd15-random"], default="toy")
    p.add_argument("--model", default="data/toy-sd")
    p.add_argument("--classes", type=int, nargs="*", default=[2, 5, 10])
    p.add_argument("--elbo-steps", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default=None)
    p.add_argument("--csv", default=None)
    a = p.parse_args(argv)
    device = a.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.float16 if device.startswith("cuda") else torch.float32
    if a.arch == "toy":
        from elbo_lib import load_pipeline
        pipe = load_pipeline(a.model, device=device, dtype=dtype)
    else:
        from elbo_lib.models.random_init import sd15_random_pipeline
        pipe = sd15_random_pipeline().to(device, dtype)
    aligner = Aligner(pipe, elbo_steps=a.elbo_steps, batch_size=a.batch_size)
    ad = aligner.adapter
    phrases = [f"{c} {s}" for s in SHAPES for c in COLOURS]
    h, w = ad.resolution
    image = (np.random.default_rng(0).random((h, w, 3)) * 255).astype(np.uint8)
    rows = []
    with torch.no_grad():
        x0 = ad.encode_image(ad.preprocess(image))
        t = torch.as_tensor(elbo_timesteps(a.elbo_steps), dtype=torch.float64)
        eps = shared_noise(x0.shape[1:], len(t), 0, ad.device, torch.float32)
        for n in a.classes:
            classes = phrases[:n]
            cond = ad.encode_text([aligner.config.elbo_template.format(c) for c in classes])
            # the caption lists the class phrases without filler words so that 10 of them fit the toy text
            # encoder's 28 tokens; the attention pass costs the same for any caption (padded to full length)
            caption = " ".join(classes)
            aligner.measure(image, classes, caption, seed=0, elbo=False)  # warm-up
            _sync(device)
            t0 = time.perf_counter()
            for _ in range(a.repeats):
                aligner.measure(image, classes, caption, seed=0, elbo=False)
            _sync(device)
            t_att = (time.perf_counter() - t0) / a.repeats
            fns = {"batched": lambda: class_losses(ad, x0, cond, t, eps, batch_size=a.batch_size),
                   "loop": lambda: class_losses_loop(ad, x0, cond, t, eps)}
            for fn in fns.values():
                fn()  # warm-up
            times = {mode: [] for mode in fns}
            for _ in range(a.repeats):  # the two modes alternate, so a busy spell on the machine hits both
                for mode, fn in fns.items():
                    _sync(device)
                    t0 = time.perf_counter()
                    fn()
                    _sync(device)
                    times[mode].append(time.perf_counter() - t0)
            ratios = [(t_att + tl) / (t_att + tb) for tb, tl in zip(times["batched"], times["loop"])]
            for mode in fns:
                t_elbo = float(np.median(times[mode]))
                rows.append({"classes": n, "elbo": mode, "s_per_image": t_att + t_elbo,
                             "images_per_s": 1.0 / (t_att + t_elbo), "elbo_passes_per_s": n * len(t) / t_elbo,
                             "speedup_vs_loop": float(np.median(ratios)) if mode == "batched" else 1.0,
                             "speedup_min": min(ratios) if mode == "batched" else 1.0,
                             "speedup_max": max(ratios) if mode == "batched" else 1.0})
        ceiling = _denoiser_ceiling(ad, x0, cond, t, a.batch_size, a.repeats, device)
    df = pd.DataFrame(rows)
    mem = f", peak CUDA memory {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB" if device.startswith("cuda") else ""
    print(f"arch={a.arch} device={device} dtype={str(dtype).replace('torch.', '')} elbo_steps={a.elbo_steps} "
          f"attention_steps={aligner.config.attention_steps} batch_size={a.batch_size} threads={torch.get_num_threads()}{mem}")
    print(df.to_markdown(index=False, floatfmt=".3f"))
    print(f"\ndenoiser alone ({a.classes[-1]} classes' text conditions), passes/s, median of {a.repeats} alternating repeats:")
    print(ceiling.to_markdown(index=False, floatfmt=".3f"))
    if a.csv:
        df.to_csv(a.csv, index=False)
    df.attrs["denoiser_ceiling"] = ceiling
    return df


if __name__ == "__main__":
    main()
