"""Timing the method: the batched ELBO against the authors' per-(class, timestep) loop, the bare
denoiser at batch 1 against the batched chunk size, and ``Aligner.measure`` per configuration.
The cost notebook, Table VI and ``benchmarks/bench_aligner.py`` call these; every ratio is measured
side by side in one run (the modes alternate within each repeat)."""
from __future__ import annotations

import time

import numpy as np
import pandas as pd
import torch

from .aligner import AlignConfig, Aligner
from .elbo import class_losses, class_losses_loop, elbo_timesteps, shared_noise


# Seconds per denoiser pass (one batch entry) from the committed benchmarks, 10 classes (20 ELBO x 10 classes + 10
# attention passes = 210 per image): the estimate of a run before anything of its model was measured on the machine.
BENCHMARK_RATES = {
    "cuda": (0.777 / 210, "benchmarks/results/sd15-random-h200.md (0.777 s per image at 10 classes: SD 1.5's UNet "
                          "shape, fp16, one H200)"),
    "cpu": (1.411 / 210, "benchmarks/README.md (1.411 s per image at 10 classes: the toy model on 2 CPU cores; a "
                         "real model on a CPU is far slower)"),
}


def denoiser_passes(cfg: AlignConfig, n_classes: int, elbo: bool = True) -> int:
    """Denoiser passes (batch entries) one image's measurement makes: the attention passes, plus each class's ELBO
    passes with ``elbo``."""
    return cfg.attention_steps + (n_classes * cfg.elbo_steps if elbo else 0)


def duration(seconds: float) -> str:
    """'45 s', '12 min', '3.4 h', '2.1 days'."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def sync(device) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def alternating(fns: dict, repeats: int, device, warm_up: bool = True) -> dict[str, list[float]]:
    """Seconds per call of each function, the functions taking turns within each repeat (so a busy
    spell on the machine hits all of them)."""
    if warm_up:
        for fn in fns.values():
            fn()
    times = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            sync(device)
            t0 = time.perf_counter()
            fn()
            sync(device)
            times[k].append(time.perf_counter() - t0)
    return times


def denoiser_ceiling(ad, x0, cond, t, batch_size: int, repeats: int, device) -> pd.DataFrame:
    """Bare denoiser passes/s at batch 1 and at the ELBO chunk size, measured alternately: what batching
    alone can buy on this device."""
    n_rows = len(cond) * len(t)
    chunk = int(np.ceil(n_rows / np.ceil(n_rows / batch_size)))
    z = x0.expand(chunk, *x0.shape[1:]).to(ad.dtype)
    tt = t[torch.arange(chunk) % len(t)]
    ci = cond.index(torch.arange(chunk) % len(cond))
    one = cond.index(torch.tensor([0]))

    def batch_1():
        for _ in range(chunk):  # the same number of passes per timing for both
            ad.predict(z[:1], tt[:1], one)
    times = alternating({"1": batch_1, str(chunk): lambda: ad.predict(z, tt, ci)}, repeats, device)
    r1, rb = chunk / float(np.median(times["1"])), chunk / float(np.median(times[str(chunk)]))
    return pd.DataFrame([{"batch": "1", "passes_per_s": r1, "ratio_to_batch_1": 1.0},
                         {"batch": str(chunk), "passes_per_s": rb, "ratio_to_batch_1": rb / r1}])


def aligner_speed(pipe, phrases: list[str], class_counts=(2, 5, 10), elbo_steps: int = 20, batch_size: int = 64,
                  repeats: int = 3, device=None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per class count: seconds per image (attention + ELBO; median over repeats), images/s, ELBO denoiser
    passes/s, and the batched/loop speed-up (median, min, max over repeats); plus :func:`denoiser_ceiling`
    for the largest count. ``phrases`` supplies the classes (the first n of them)."""
    device = device or next(pipe.components[k] for k in ("unet", "transformer") if k in pipe.components).device
    if max(class_counts) > len(phrases):
        raise ValueError(f"{max(class_counts)} classes asked for, only {len(phrases)} phrases given")
    aligner = Aligner(pipe, elbo_steps=elbo_steps, batch_size=batch_size)
    ad = aligner.adapter
    h, w = ad.resolution
    image = (np.random.default_rng(0).random((h, w, 3)) * 255).astype(np.uint8)
    rows = []
    with torch.no_grad():
        x0 = ad.encode_image(ad.preprocess(image))
        t = torch.as_tensor(elbo_timesteps(elbo_steps), dtype=torch.float64)
        eps = shared_noise(x0.shape[1:], len(t), 0, ad.device, torch.float32)
        for n in class_counts:
            classes = phrases[:n]
            cond = ad.encode_text([aligner.config.elbo_template.format(c) for c in classes])
            # the caption lists the class phrases without filler words so that 10 of them fit the toy text
            # encoder's 28 tokens; the attention pass costs the same for any caption (padded to full length)
            caption = " ".join(classes)
            t_att = float(np.mean(alternating(
                {"attention": lambda: aligner.measure(image, classes, caption, seed=0, elbo=False)}, repeats,
                device)["attention"]))
            times = alternating({"batched": lambda: class_losses(ad, x0, cond, t, eps, batch_size=batch_size),
                                 "loop": lambda: class_losses_loop(ad, x0, cond, t, eps)}, repeats, device)
            ratios = [(t_att + tl) / (t_att + tb) for tb, tl in zip(times["batched"], times["loop"])]
            for mode in times:
                t_elbo = float(np.median(times[mode]))
                batched = mode == "batched"
                rows.append({"classes": n, "elbo": mode, "s_per_image": t_att + t_elbo,
                             "images_per_s": 1.0 / (t_att + t_elbo), "elbo_passes_per_s": n * len(t) / t_elbo,
                             "speedup_vs_loop": float(np.median(ratios)) if batched else 1.0,
                             "speedup_min": min(ratios) if batched else 1.0,
                             "speedup_max": max(ratios) if batched else 1.0})
        ceiling = denoiser_ceiling(ad, x0, cond, t, batch_size, repeats, device)
    return pd.DataFrame(rows), ceiling


def measure_seconds(pipe, configs: dict[str, AlignConfig], image, classes: list[str], caption: str | None = None,
                    seed: int = 0) -> dict[str, float]:
    """Seconds of one ``Aligner.measure`` (every denoiser call for one image) per named configuration."""
    out = {}
    for name, cfg in configs.items():
        al = Aligner(pipe, cfg)
        t0 = time.perf_counter()
        al.measure(image, classes, caption, seed=seed)
        out[name] = time.perf_counter() - t0
    return out
