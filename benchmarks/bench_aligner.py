"""Aligner throughput: batched ELBO vs the authors' per-(class, timestep) loop, side by side; or, with
``--compare``, the speed levers against a baseline.

    python benchmarks/bench_aligner.py                      # toy model on CPU
    python benchmarks/bench_aligner.py --arch sd15-random   # SD1.5-shaped random UNet at 512 px (GPU)
    python benchmarks/bench_aligner.py --arch sd15-random --classes 10 \\
        --compare fp32 bf16 channels_last compile explicit batch=100 channels_last+compile

Prints a table: classes, ELBO mode, seconds per image (attention + ELBO; median over repeats),
images/s, denoiser passes/s in the ELBO, and the batched/loop speed-up per image (median, min and max
over repeats; the two modes alternate within each repeat), all measured in this one run.

A second table times the bare denoiser (no ELBO bookkeeping) at batch 1 and at the batched path's chunk
size, alternating: its ratio is what batching alone can buy on this device, the ceiling the ELBO speed-up
approaches once per-call overhead is gone.

The lever flags (``--dtype``, ``--channels-last``, ``--compile``, ``--elbo-attention``, ``--batch-size``) set
the run's levers. ``--compare SPEC ...`` instead measures one ``Aligner.measure`` per image (the largest of
``--classes``) for the baseline (the lever flags) and for each SPEC, the baseline with those levers changed
(``elbo_lib.timing.LEVER_SPEC``), the settings taking turns within each repeat: seconds per image, its split
into attention and ELBO passes, the speed-up over the baseline, peak memory (CUDA: the allocator's; CPU: an
estimate from the resident set) and how far the ELBO losses and the cross-attention move from the baseline's.
"""
from __future__ import annotations

import argparse
import copy
import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from elbo_lib import load_pipeline  # noqa: E402
from elbo_lib.attention import UNCAPTURED_ATTENTION  # noqa: E402
from elbo_lib.models import PRECISIONS, adapter_for  # noqa: E402
from elbo_lib.models.random_init import sd15_random_pipeline, tiny_sd_pipeline  # noqa: E402
from elbo_lib.timing import LEVER_SPEC, Levers, aligner_speed, lever_speed  # noqa: E402
from elbo_lib.toy.world import COLOURS, SHAPES  # noqa: E402


def pipeline_maker(arch: str, model: str, device: str):
    """A function giving a fresh float32 pipeline of ``arch`` on ``device`` on each call (the levers cast it)."""
    if arch == "toy":
        return lambda: load_pipeline(model, device=device, dtype=torch.float32)
    if arch == "tiny-sd15":
        return lambda: tiny_sd_pipeline().to(device)
    base = sd15_random_pipeline()  # built once on the CPU: its random initialisation takes far longer than a copy
    return lambda: copy.deepcopy(base).to(device)


def main(argv=None) -> pd.DataFrame:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", choices=["toy", "tiny-sd15", "sd15-random"], default="toy",
                   help="toy: data/toy-sd (--model); tiny-sd15: SD 1.5's layout, tiny and random, 32 px; "
                        "sd15-random: SD 1.5's UNet and VAE shape, random weights, 512 px")
    p.add_argument("--model", default="data/toy-sd")
    p.add_argument("--classes", type=int, nargs="*", default=[2, 5, 10])
    p.add_argument("--elbo-steps", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=64, help="ELBO denoiser rows per call")
    p.add_argument("--dtype", choices=list(PRECISIONS), default=None,
                   help="the denoiser's (and text encoder's) precision; the VAE stays fp32 (default: fp16 on CUDA, "
                        "fp32 on a CPU)")
    p.add_argument("--channels-last", action="store_true", help="the denoiser's weights in NHWC")
    p.add_argument("--compile", action="store_true", help="torch.compile the denoiser (mode 'default')")
    p.add_argument("--elbo-attention", choices=UNCAPTURED_ATTENTION, default="sdpa",
                   help="the ELBO passes' attention: fused SDPA or the capture path's explicit probabilities")
    p.add_argument("--compare", nargs="+", default=None, metavar="SPEC",
                   help=f"measure the baseline (the flags above) against each SPEC: {LEVER_SPEC}")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default=None)
    p.add_argument("--csv", default=None)
    a = p.parse_args(argv)
    device = a.device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:  # a bad lever is refused before any pipeline is built
        base = Levers(a.dtype or ("fp16" if device.startswith("cuda") else "fp32"), a.channels_last, a.compile,
                      a.elbo_attention, a.batch_size)
        variants = {"baseline": base, **{spec: base.with_spec(spec) for spec in a.compare or []}}
    except ValueError as e:
        p.error(str(e))
    phrases = [f"{c} {s}" for s in SHAPES for c in COLOURS]
    make = pipeline_maker(a.arch, a.model, device)
    header = (f"arch={a.arch} device={device} torch={torch.__version__} elbo_steps={a.elbo_steps} attention_steps=10 "
              f"threads={torch.get_num_threads()} baseline: dtype={base.dtype} (VAE fp32) channels_last={base.channels_last} "
              f"compile={base.compile} elbo_attention={base.elbo_attention} batch_size={base.batch_size}")
    if a.compare:
        n = max(a.classes)
        probe = make()
        h, w = adapter_for(probe).resolution
        del probe
        image = (np.random.default_rng(0).random((h, w, 3)) * 255).astype(np.uint8)
        df = lever_speed(make, variants, phrases[:n], image, a.elbo_steps, a.repeats, device,
                         log=lambda line: print(line, file=sys.stderr, flush=True))
        print(f"{header} classes={n} repeats={a.repeats}")
        print(df.drop(columns=["dtype", "channels_last", "compile", "elbo_attention", "batch_size"])
              .to_markdown(index=False, floatfmt=".3g"))
        if a.csv:
            df.to_csv(a.csv, index=False)
        return df
    pipe, overrides = base.apply(make())
    df, ceiling = aligner_speed(pipe, phrases, a.classes, a.elbo_steps, overrides["batch_size"], a.repeats, device,
                                overrides["elbo_attention"])
    mem = f", peak CUDA memory {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB" if device.startswith("cuda") else ""
    print(f"{header}{mem}")
    print(df.to_markdown(index=False, floatfmt=".3f"))
    print(f"\ndenoiser alone ({a.classes[-1]} classes' text conditions), passes/s, median of {a.repeats} alternating repeats:")
    print(ceiling.to_markdown(index=False, floatfmt=".3f"))
    if a.csv:
        df.to_csv(a.csv, index=False)
    df.attrs["denoiser_ceiling"] = ceiling
    return df


if __name__ == "__main__":
    main()
