"""Timing the method: the batched ELBO against the authors' per-(class, timestep) loop, the bare
denoiser at batch 1 against the batched chunk size, ``Aligner.measure`` per configuration, and the speed
levers (:class:`Levers`, :func:`lever_speed`) against a baseline. The cost notebook, Table VI and
``benchmarks/bench_aligner.py`` call these; every ratio is measured side by side in one run (the modes
alternate within each repeat)."""
from __future__ import annotations

import ctypes
import ctypes.util
import dataclasses
import os
import threading
import time
from typing import Callable

import numpy as np
import pandas as pd
import torch

from .aligner import AlignConfig, Aligner
from .attention import UNCAPTURED_ATTENTION
from .elbo import class_losses, class_losses_loop, elbo_timesteps, shared_noise
from .models import PRECISIONS, precision, speed_up


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
                  repeats: int = 3, device=None, elbo_attention: str = "sdpa") -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per class count: seconds per image (attention + ELBO; median over repeats), images/s, ELBO denoiser
    passes/s, and the batched/loop speed-up (median, min, max over repeats); plus :func:`denoiser_ceiling`
    for the largest count. ``phrases`` supplies the classes (the first n of them); ``elbo_attention`` is the
    batched path's (the loop runs the pipeline's own processors, as the authors' code)."""
    device = device or next(pipe.components[k] for k in ("unet", "transformer") if k in pipe.components).device
    if max(class_counts) > len(phrases):
        raise ValueError(f"{max(class_counts)} classes asked for, only {len(phrases)} phrases given")
    aligner = Aligner(pipe, elbo_steps=elbo_steps, batch_size=batch_size, elbo_attention=elbo_attention)
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
            times = alternating({"batched": lambda: class_losses(ad, x0, cond, t, eps, batch_size=batch_size,
                                                                 attention=elbo_attention),
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


# ---- the speed levers --------------------------------------------------------------------------------------------

LEVER_SPEC = "fp32 | fp16 | bf16 | channels_last | compile | sdpa | explicit | batch=N, joined by '+'"


@dataclasses.dataclass(frozen=True)
class Levers:
    """One setting of the speed levers: the denoiser's precision (the VAE stays float32), NHWC weights,
    ``torch.compile`` (:func:`elbo_lib.models.speed_up`), the ELBO passes' attention and the ELBO batch size
    (:class:`~elbo_lib.AlignConfig` ``elbo_attention``, ``batch_size``)."""

    dtype: str = "fp32"
    channels_last: bool = False
    compile: bool = False
    elbo_attention: str = "sdpa"
    batch_size: int = 64

    def __post_init__(self):
        """Checked where each lever lives, before any pipeline is built."""
        if not isinstance(self.dtype, str):
            raise ValueError(f"lever dtype must be a name, one of {list(PRECISIONS)}; got {self.dtype!r}")
        precision(self.dtype)
        AlignConfig(elbo_attention=self.elbo_attention, batch_size=self.batch_size)

    def with_spec(self, spec: str) -> "Levers":
        """These levers with a ``'+'``-joined spec applied, e.g. ``"bf16+channels_last+batch=128"``."""
        out = {}
        for word in spec.split("+"):
            word = word.strip()
            if word in PRECISIONS:
                out["dtype"] = word
            elif word in ("channels_last", "compile"):
                out[word] = True
            elif word in UNCAPTURED_ATTENTION:
                out["elbo_attention"] = word
            elif word.startswith("batch=") and word[6:].isdigit():
                out["batch_size"] = int(word[6:])
            else:
                raise ValueError(f"unknown lever {word!r} in {spec!r}; levers: {LEVER_SPEC}")
        return dataclasses.replace(self, **out)

    def apply(self, pipe):
        """``pipe`` with the pipeline levers set (in place), and the config overrides for the method's levers."""
        speed_up(pipe, self.dtype, self.channels_last, self.compile)
        return pipe, {"elbo_attention": self.elbo_attention, "batch_size": self.batch_size}


def _libc_trim() -> Callable[[], None]:
    """glibc's ``malloc_trim(0)`` (hands freed heap pages back, so that resident-set growth shows a block's own
    peak rather than reused memory); a no-op where there is no glibc."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return lambda: None
    return lambda: trim(0)


_trim = _libc_trim()


def _rss() -> int:
    """This process's resident set in bytes (Linux)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakMemory:
    """Bytes a block adds at its peak: on CUDA the allocator's maximum above what was allocated at the start; on a
    CPU (Linux) the growth of the resident set above the start, sampled every 2 ms after freed heap pages
    are handed back: an estimate (memory a block frees and re-uses between samples is missed)."""

    def __init__(self, device):
        self.cuda = str(device).startswith("cuda")
        self.peak = 0

    def __enter__(self):
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.start = torch.cuda.memory_allocated()
            return self
        _trim()
        self.start, self.top, self.running = _rss(), 0, True

        def sample():
            while self.running:
                self.top = max(self.top, _rss())
                time.sleep(0.002)
        self.thread = threading.Thread(target=sample, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc):
        if self.cuda:
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated() - self.start
            return False
        self.running = False
        self.thread.join()
        self.peak = max(self.top, _rss()) - self.start
        return False


def resident_bytes(pipe) -> int:
    """Bytes of the pipeline's parameters and buffers (each tensor counted once)."""
    seen, total = set(), 0
    for module in pipe.components.values():
        if isinstance(module, torch.nn.Module):
            for t in list(module.parameters()) + list(module.buffers()):
                if t.data_ptr() not in seen:
                    seen.add(t.data_ptr())
                    total += t.numel() * t.element_size()
    return total


def lever_speed(make_pipe: Callable[[], object], variants: dict[str, Levers], classes: list[str], image,
                elbo_steps: int = 20, repeats: int = 3, device=None,
                log: Callable[[str], None] | None = None) -> pd.DataFrame:
    """Seconds per image (one ``Aligner.measure``: encode, 10 attention passes, ``len(classes) x elbo_steps`` ELBO
    passes) per lever setting, the first of ``variants`` being the baseline; the settings take turns within each
    repeat. ``make_pipe()`` gives a fresh float32 pipeline on the device for each setting.

    Columns: ``warmup_s`` (the first measure: compilation, kernel selection), ``s_per_image`` (median),
    ``attention_s`` (median of an attention-only measure), ``elbo_s`` (the difference), ELBO passes/s,
    ``speedup`` (the baseline's time over this one's, median, min and max of the per-repeat ratios),
    ``peak_gib`` (the setting's weights plus the measure's peak, :class:`PeakMemory`), and against the
    baseline's measurement: ``elbo_rel_diff`` (largest loss difference over the largest loss) and
    ``cross_abs_diff`` (largest cross-attention difference). ``log`` receives a line per step done (a run cut
    short still shows how far it got, e.g. a compilation's cost)."""
    log = log or (lambda line: None)
    if not variants:
        raise ValueError("no lever settings to measure")
    caption = " ".join(classes)
    aligners, weights, rows = {}, {}, {}
    for name, lev in variants.items():
        pipe, overrides = lev.apply(make_pipe())
        aligners[name] = Aligner(pipe, elbo_steps=elbo_steps, **overrides)
        weights[name] = resident_bytes(pipe)
        log(f"built {name}: {weights[name] / 2**30:.2f} GiB of weights")
    device = device or next(iter(aligners.values())).adapter.device
    warm, ms = {}, {}
    for name, al in aligners.items():
        t0 = time.perf_counter()
        ms[name] = al.measure(image, classes, caption, seed=0)
        sync(device)
        warm[name] = time.perf_counter() - t0
        al.measure(image, classes, caption, seed=0, elbo=False)
        log(f"warm-up {name}: {warm[name]:.1f} s")
    total = {k: [] for k in aligners}
    att = {k: [] for k in aligners}
    peak = {k: 0 for k in aligners}
    for _ in range(repeats):
        for name, al in aligners.items():
            for times, elbo in ((att, False), (total, True)):  # both sampled, so the sampler costs both the same
                with PeakMemory(device) as mem:
                    t0 = time.perf_counter()
                    al.measure(image, classes, caption, seed=0, elbo=elbo)
                    sync(device)
                    times[name].append(time.perf_counter() - t0)
                peak[name] = max(peak[name], mem.peak)
            log(f"repeat {len(total[name])} {name}: {total[name][-1]:.3f} s per image, attention {att[name][-1]:.3f} s")
    base = next(iter(aligners))
    ref = ms[base]
    n_passes = len(classes) * elbo_steps
    for name, lev in variants.items():
        ratios = [b / v for b, v in zip(total[base], total[name])]
        t_all, t_att = float(np.median(total[name])), float(np.median(att[name]))
        t_elbo = max(t_all - t_att, 1e-9)
        rows[name] = {"levers": name, "dtype": lev.dtype, "channels_last": lev.channels_last, "compile": lev.compile,
                      "elbo_attention": lev.elbo_attention, "batch_size": lev.batch_size, "warmup_s": warm[name],
                      "s_per_image": t_all, "attention_s": t_att, "elbo_s": t_elbo,
                      "elbo_passes_per_s": n_passes / t_elbo, "speedup": float(np.median(ratios)),
                      "speedup_min": min(ratios), "speedup_max": max(ratios),
                      "peak_gib": (weights[name] + peak[name]) / 2**30,
                      "elbo_rel_diff": float((ms[name].elbo - ref.elbo).abs().max() / ref.elbo.abs().max()),
                      "cross_abs_diff": float((ms[name].cross.float() - ref.cross.float()).abs().max())}
    return pd.DataFrame(list(rows.values()))
