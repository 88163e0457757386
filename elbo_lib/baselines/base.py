"""Baseline registry."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from ..timing import denoiser_passes


BASELINES: dict[str, "Baseline"] = {}
# baselines that need no ELBO measure attention at the paper's 10 timesteps in (0, 0.2], whatever
# superset the main method was measured on
PAPER_TIMESTEPS = dict(attention_steps=10, attention_t_max=0.2, elbo_steps=20, elbo_strategy="even")


class NotRunnable(RuntimeError):
    """A baseline that cannot run here (the reason is its message)."""


def is_unet(denoiser) -> bool:
    """Whether a denoiser has a UNet's down, mid and up blocks (where DAAM, OVAM and DiffSegmenter locate layers)."""
    return all(hasattr(denoiser, a) for a in ("down_blocks", "mid_block", "up_blocks"))


@dataclass(frozen=True)
class Baseline:
    name: str
    heatmaps: Callable  # (Measurement, AlignConfig) -> (N, H, W) in [0, 1]
    measure_overrides: dict = field(default_factory=dict)  # AlignConfig fields for its measurement
    measure: Callable | None = None  # (Aligner, image, classes, caption, seed, cfg) -> Measurement; None = Aligner's
    method: str = "aligner"          # cache tag of the measure function
    elbo: bool = False               # whether its measurement needs the ELBO losses
    notes: str = ""
    unet_only: bool = False          # reads a UNet's block layers (its authors' code locates them there)
    passes: Callable | None = None   # (cfg, n_classes) -> denoiser passes per image; None: timing.denoiser_passes

    def denoiser_passes(self, cfg, n_classes: int) -> int:
        """Denoiser passes (batch entries) one image's measurement makes (for the plan's time estimate and the
        cache's rate record)."""
        return self.passes(cfg, n_classes) if self.passes is not None else denoiser_passes(cfg, n_classes, self.elbo)

    def not_runnable(self, adapter) -> str | None:
        """Why this baseline cannot run on ``adapter``'s model (a table note), or None when it can."""
        if self.unet_only and not is_unet(adapter.denoiser):
            return (f"not run: {self.name} reads a UNet's down- and up-block layers, as its authors' code locates "
                    f"them; {type(adapter.denoiser).__name__} has none")
        return None

    def check_runnable(self, adapter) -> None:
        """Raise :class:`NotRunnable` with :meth:`not_runnable`'s reason where this baseline cannot run."""
        why = self.not_runnable(adapter)
        if why is not None:
            raise NotRunnable(why)


def register(b: Baseline) -> Baseline:
    BASELINES[b.name] = b
    return b


def get_baseline(name: str) -> Baseline:
    if name not in BASELINES:
        raise ValueError(f"unknown baseline {name!r}; choose from {sorted(BASELINES)}")
    return BASELINES[name]
