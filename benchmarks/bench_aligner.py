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
from pathlib import Path

import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from elbo_lib import load_pipeline  # noqa: E402
from elbo_lib.models.random_init import sd15_random_pipeline  # noqa: E402
from elbo_lib.timing import aligner_speed  # noqa: E402
from elbo_lib.toy.world import COLOURS, SHAPES  # noqa: E402


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
    pipe = (load_pipeline(a.model, device=device, dtype=dtype) if a.arch == "toy"
            else sd15_random_pipeline().to(device, dtype))
    phrases = [f"{c} {s}" for s in SHAPES for c in COLOURS]
    df, ceiling = aligner_speed(pipe, phrases, a.classes, a.elbo_steps, a.batch_size, a.repeats, device)
    mem = f", peak CUDA memory {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB" if device.startswith("cuda") else ""
    print(f"arch={a.arch} device={device} dtype={str(dtype).replace('torch.', '')} elbo_steps={a.elbo_steps} "
          f"attention_steps=10 batch_size={a.batch_size} threads={torch.get_num_threads()}{mem}")
    print(df.to_markdown(index=False, floatfmt=".3f"))
    print(f"\ndenoiser alone ({a.classes[-1]} classes' text conditions), passes/s, median of {a.repeats} alternating repeats:")
    print(ceiling.to_markdown(index=False, floatfmt=".3f"))
    if a.csv:
        df.to_csv(a.csv, index=False)
    df.attrs["denoiser_ceiling"] = ceiling
    return df


if __name__ == "__main__":
    main()
