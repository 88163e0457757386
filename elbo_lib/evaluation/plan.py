"""What a real-data evaluation will do, said before its first image: how many images and (image, class) pairs,
which measurements are still missing from the cache, and an estimated time from a measured seconds-per-pass
(this model's earlier runs on the machine, recorded in the cache; before any, the committed benchmarks, named as
such). The captions of the images still to measure are checked against the text encoder's window first: an
image whose classes do not fit stops the run before any model work, naming the image and the token count."""
from __future__ import annotations

import os
from dataclasses import dataclass

from tqdm.auto import tqdm

from ..aligner import AlignConfig, Aligner
from ..datasets import SegmentationDataset
from ..datasets.base import present_ids
from ..timing import BENCHMARK_RATES, denoiser_passes, duration
from ..tokens import CaptionTooLong, default_caption
from .cache import MeasurementCache, measurement_caches


@dataclass
class MeasurementPlan:
    """One measurement over the dataset (ELBO-T2IAlign's, or a baseline's): the images it still needs (indices)
    and the denoiser passes they take."""

    method: str
    cache: MeasurementCache
    todo: list[int]
    passes: int


@dataclass
class Plan:
    dataset: str
    image_ids: list[str]
    class_ids: list[list[int]]     # per image, from its label alone
    measurements: list[MeasurementPlan]
    device: str                    # torch device type the measurements run on
    s_per_pass: float | None       # estimated seconds per denoiser pass (None: no estimate until the first image)
    source: str                    # where that estimate comes from
    bytes_per_image: float | None  # cache bytes per measured image (earlier runs), if known
    rate_recorded: bool = False    # the estimate comes from this model's earlier runs on this device
    processes: int = 1             # processes sharing the images (accelerate launch), each on its own device

    @property
    def n_pairs(self) -> int:
        return sum(len(c) for c in self.class_ids)

    @property
    def to_measure(self) -> int:
        return sum(len(m.todo) for m in self.measurements)

    def line(self) -> str:
        """The one line printed before the first image."""
        with_classes = sum(1 for c in self.class_ids if c)
        total = with_classes * len(self.measurements)
        methods = ", ".join(m.method for m in self.measurements)
        head = (f"[plan] {self.dataset}: {len(self.image_ids)} images, {self.n_pairs} (image, class) pairs; "
                f"{len(self.measurements)} measurement(s) per image ({methods}): "
                f"{self.to_measure} of {total} to make, {total - self.to_measure} in the cache")
        if self.to_measure == 0:
            return head + "; nothing to measure"
        passes = sum(m.passes for m in self.measurements)
        if self.s_per_pass is None:
            on = f"{self.processes} processes on {self.device}" if self.processes > 1 else self.device
            return head + (f"; {passes} denoiser passes on {on}, time estimated after the first image "
                           f"({self.source})")
        disk = (f", about {self.bytes_per_image * self.to_measure / 1e9:.1f} GB of cache"
                if self.bytes_per_image else "")
        on = f"{self.processes} processes on {self.device}" if self.processes > 1 else self.device
        return head + (f"; estimated {duration(passes * self.s_per_pass / self.processes)}{disk} on {on} "
                       f"({passes} denoiser passes at {self.s_per_pass * 1000:.1f} ms, from {self.source})")

    def first_image_line(self, method: str, seconds: float, passes: int, nbytes: int) -> str:
        """Said after a measurement's first image when its time was not known before (a first run)."""
        m = next(m for m in self.measurements if m.method == method)
        left = max(m.passes - passes, 0)
        rate = seconds / max(passes, 1)
        across = f" across {self.processes} processes" if self.processes > 1 else ""
        return (f"[measure] {self.dataset} [{method}]: first image {seconds:.1f} s ({rate * 1000:.1f} ms per denoiser "
                f"pass), {nbytes / 1e6:.1f} MB in the cache -> about {duration(left * rate / self.processes)} and "
                f"{nbytes * max(len(m.todo) - 1, 0) / 1e9:.1f} GB for its other {max(len(m.todo) - 1, 0)} images"
                f"{across}")


def survey(ds: SegmentationDataset, n: int) -> list[list[int]]:
    """Each of the first ``n`` images' labelled class ids, from its label file alone where the dataset can read
    one without the image."""
    read = getattr(ds, "label", None)
    return [present_ids(read(i), ds.ignore_index) if read else ds.load(i).class_ids
            for i in tqdm(range(n), desc=f"read {ds.name} labels")]


def make_plan(model: str | os.PathLike, ds: SegmentationDataset, groups: list[tuple[AlignConfig, object, str]],
              seed: int, n: int, cache_dir=None, device: str = "cpu", nouns_only_elbo: bool = False,
              processes: int = 1, dtype=None) -> Plan:
    """The plan of measuring the first ``n`` images of ``ds`` for each (config, baseline or None, method name) of
    ``groups`` on a ``device`` type (cpu, cuda, ...) in ``processes`` processes with the denoiser in ``dtype``
    (None: float32), with the cache as it is now."""
    class_ids = survey(ds, n)
    ids = ds.ids[:n]
    measurements, rate = [], None
    for cfg, baseline, method in groups:
        cache, noun_cache, noun_idx = measurement_caches(cache_dir, model, cfg, seed, baseline,
                                                         nouns_only_elbo and baseline is None, dtype)
        elbo = baseline.elbo if baseline is not None else True
        have = cache.measured_ids(ids)
        have_nouns = noun_cache.measured_ids(ids) if noun_cache is not None else have
        todo, passes = [], 0
        for i, c in enumerate(class_ids):
            if not c or ids[i] in have_nouns and ids[i] in have:
                continue
            todo.append(i)
            if ids[i] not in have:
                passes += (baseline.denoiser_passes(cfg, len(c)) if baseline is not None
                           else denoiser_passes(cfg, len(c), elbo))
            if noun_cache is not None:  # the single nouns' ELBO (Table IV)
                passes += len(c) * (len(noun_idx) if noun_idx is not None else cfg.elbo_steps)
        measurements.append(MeasurementPlan(method, cache, todo, passes))
        rate = rate or cache.rate(device)
    if rate is not None:
        s_per_pass, bytes_per_image = rate["seconds"] / rate["passes"], rate.get("bytes", 0) / rate["images"] or None
        source = f"this model's {rate['images']} earlier measured images on {device}, recorded in the cache"
    elif device in BENCHMARK_RATES:
        (s_per_pass, source), bytes_per_image = BENCHMARK_RATES[device], None
        source = f"{source}; a first run: a rough guide until the first image is timed"
    else:
        s_per_pass, bytes_per_image, source = None, None, f"no benchmark for {device}"
    return Plan(ds.name, ids, class_ids, measurements, device, s_per_pass, source, bytes_per_image, rate is not None,
                processes)


def check_captions(aligner: Aligner, ds: SegmentationDataset, plan: Plan, cfg: AlignConfig) -> None:
    """Every image still to measure must have its classes inside the text encoder's window (their default caption,
    "a photo of {classes}"); otherwise stop before any model work with one line naming the first such image, its
    token count and how many more there are. Nothing is shortened or dropped."""
    todo = sorted({i for m in plan.measurements for i in m.todo})
    long = []
    for i in tqdm(todo, desc=f"check {ds.name} captions"):
        phrases = ds.phrases(plan.class_ids[i])
        try:
            aligner.class_tokens(default_caption(phrases, cfg.caption_template, cfg.caption_item), phrases, cfg)
        except CaptionTooLong as e:
            long.append((i, e))
    if long:
        i, e = long[0]
        others = f"; {len(long)} of the {len(todo)} images to measure have a caption too long: " + ", ".join(
            plan.image_ids[j] for j, _ in long[:5]) + (", ..." if len(long) > 5 else "")
        raise CaptionTooLong(f"image {plan.image_ids[i]} (line {i + 1} of the image list of {ds.name}): {e}{others}; "
                             "give an image list without them (--image-list)")
