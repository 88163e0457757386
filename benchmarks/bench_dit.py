"""Cost of the method on the DiT adapters (FLUX.1, PixArt-Sigma) against SD 3, on tiny random pipelines.

    python benchmarks/bench_dit.py            # CPU, the tiny pipelines of elbo_lib.models.random_init

Per family and image size: seconds per image of ``Aligner`` with the official configuration (20 ELBO
timesteps, 10 attention timesteps, 2 classes; median over repeats), the bytes the attention capture keeps
after one attention pass (cross-attention of every layer up to the last class token, and the summed
self-attention), and the largest attention-probability tensor formed while capturing (the transient
peak: FLUX forms one head at a time). Tiny models only: real-model costs are dominated by weights this
small stand-in does not have (see the README's table for what scales how).
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
from elbo_lib import attention as A  # noqa: E402
from elbo_lib.models.random_init import tiny_flux_pipeline, tiny_pixart_pipeline, tiny_sd3_pipeline  # noqa: E402

BUILDERS = {"sd3": tiny_sd3_pipeline, "flux": tiny_flux_pipeline, "pixart": tiny_pixart_pipeline}
CLASSES = ["red circle", "cat"]


def capture_bytes(al: Aligner, image: np.ndarray) -> tuple[int, int, int]:
    """(cross bytes kept, self-attention bytes kept, largest probability tensor formed) for one attention pass
    of the official configuration on ``image``."""
    largest = [0]
    orig = A.attention_probs

    def recording(q, k, mask=None):
        p = orig(q, k, mask)
        largest[0] = max(largest[0], p.numel() * p.element_size())
        return p
    A.attention_probs = recording  # our own module's function, restored below
    try:
        cfg = al.config
        x0, _ = al.encode(image, cfg)
        caption = "a photo of " + ", ".join(CLASSES)
        t = torch.as_tensor(np.linspace(0.02, 0.2, cfg.attention_steps), dtype=torch.float64)
        store = next(al.attention_passes(x0, caption, t, 0, cfg, segments=True, cross_tokens=8))
    finally:
        A.attention_probs = orig
    nbytes = lambda ts: sum(x.numel() * x.element_size() for x in ts)  # noqa: E731
    return nbytes(store.cross.values()), nbytes(store.segment_sums.values()), largest[0]


def main(argv=None) -> pd.DataFrame:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="*", default=[32, 64])
    p.add_argument("--repeats", type=int, default=3)
    a = p.parse_args(argv)
    rows = []
    for fam, build in BUILDERS.items():
        pipe = build()
        params = sum(x.numel() for x in (pipe.transformer.parameters()))
        for size in a.sizes:
            al = Aligner(pipe, resolution=(size, size))
            img = (np.random.default_rng(0).random((size, size, 3)) * 255).astype(np.uint8)
            al(img, CLASSES, seed=0)  # warm-up
            secs = []
            for r in range(a.repeats):
                t0 = time.perf_counter()
                al(img, CLASSES, seed=r)
                secs.append(time.perf_counter() - t0)
            cross, self_, peak = capture_bytes(al, img)
            rows.append({"family": fam, "denoiser_params": params, "image_px": size,
                         "image_tokens": (size // pipe.vae_scale_factor // al.adapter.patch_size) ** 2,
                         "s_per_image": float(np.median(secs)), "cross_kept_kB": cross / 1024,
                         "self_kept_kB": self_ / 1024, "largest_probs_kB": peak / 1024})
    df = pd.DataFrame(rows)
    print(f"torch threads: {torch.get_num_threads()}")
    print(df.to_markdown(index=False, floatfmt=".3g"))
    return df


if __name__ == "__main__":
    main()
