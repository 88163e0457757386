"""Baseline registry."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable


BASELINES: dict[str, "Baseline"] = {}
# baselines that need no ELBO measure attention at the paper's 10 timesteps in (0, 0.2], whatever
# superset the main method was measured on
PAPER_TIMESTEPS = dict(attention_steps=10, attention_t_max=0.2, elbo_steps=20, elbo_strategy="even")


class NotRunnable(RuntimeError):
    """A baseline that cannot run here (the reason is its message)."""


@dataclass(frozen=True)
class Baseline:
    name: str
    heatmaps: Callable  # (Measurement, AlignConfig) -> (N, H, W) in [0, 1]
    measure_overrides: dict = field(default_factory=dict)  # AlignConfig fields for its measurement
    measure: Callable | None = None  # (Aligner, image, classes, caption, seed, cfg) -> Measurement; None = Aligner's
    method: str = "aligner"          # cache tag of the measure function
    elbo: bool = False               # whether its measurement needs the ELBO losses
    notes: str = ""
    joint_attention: bool = True     # whether it runs on joint-attention (MMDiT) models

    def not_runnable(self, adapter) -> str | None:
        """Why this baseline cannot run on ``adapter``'s model (a table note), or None when it can."""
        if adapter.joint_attention and not self.joint_attention:
            return (f"not run: {self.name} reads separate cross-attention layers; {type(adapter.denoiser).__name__} "
                    "has joint attention only")
        return None


def register(b: Baseline) -> Baseline:
    BASELINES[b.name] = b
    return b


def get_baseline(name: str) -> Baseline:
    if name not in BASELINES:
        raise ValueError(f"unknown baseline {name!r}; choose from {sorted(BASELINES)}")
    return BASELINES[name]
