"""Prompt-to-prompt editing (Hertz et al., ICLR 2023) by attention replacement, and ELBO-T2IAlign's variant
that replaces with the source's calibrated heatmaps (paper Sec. IV-B, Fig. 6).

The authors published no editing code. Our reading of the paper's description ("we generate heatmaps of the
source text following Algorithm 1; next, we scale these heatmaps based on the source text cross-attention and
use the scaled heatmaps to replace the target text cross-attention"):

1. Source: the source prompt is generated from a seed with the sampler of :mod:`elbo_lib.generation`
   (classifier-free guidance, empty negative prompt); its latents at every step are kept.
2. Prompt-to-prompt word swap (also the attribute change "red circle" -> "green circle"): the target prompt
   has the source's token count. The target is denoised from the same initial latent; in its conditional
   pass, for the first ``cross_replace`` fraction of steps every cross-attention layer's probabilities are
   the source's at that step and layer (each head), and for the first ``self_replace`` fraction the
   self-attention probabilities of layers with at most 16 x 16 queries are the source's (P2P's rule and its
   word-swap defaults 0.8 and 0.4). The unconditional pass is not edited.
3. ELBO-T2IAlign: Algorithm 1 runs on the generated source image (classes: the prompt's entities, caption:
   the source prompt), giving a heatmap H_i in [0, 1] per entity. In step 2's cross-attention replacement,
   the columns of entity i's tokens take H_i instead: resized (area) to the layer's grid and scaled to the
   source attention's range in that column, min + H_i (max - min) over the queries, per head; each query's
   probabilities are then renormalised to sum to one. Other tokens (BOS, "a", "and", padding) keep the
   source's attention. Self-attention is replaced as in step 2.
   The same replacement with Algorithm 1's uncalibrated heatmaps (``"uncalibrated"``) separates what the
   calibration does from what replacing attention by heatmaps does; ``"calibrated (mass)"`` (a project
   option) scales each heatmap to the source column's total instead of its range (see :func:`scaled_heatmaps`).

P2P's local blending and attention re-weighting are not part of the paper's comparison and are not built.
Joint-attention (MMDiT) models are refused by name: there the text and image tokens share one attention.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .aligner import AlignConfig, Aligner, finalize
from .attention import UNetAttentionProcessor, eager_passes, grid_hw, is_cross_attention_layer
from .generation import (DEFAULT_STEPS, GUIDANCE, cat_conditions, decode, denoise, guided, initial_latents,
                         sampling_grid, timestep_batch)
from .models import adapter_for, model_hints
from .tokens import token_positions

CROSS_REPLACE = 0.8      # P2P's word-swap defaults: fraction of steps with replaced cross-attention
SELF_REPLACE = 0.4       # ... and with replaced self-attention
SELF_MAX_QUERIES = 16 * 16  # P2P replaces self-attention only in layers this small
ARMS = ("p2p", "uncalibrated", "calibrated", "calibrated (mass)")
HEATMAP_OF_ARM = {"uncalibrated": "uncalibrated", "calibrated": "calibrated", "calibrated (mass)": "calibrated"}


@dataclass(frozen=True)
class Edit:
    """Edit ``source`` into ``target`` (same token count); ``entities`` are the source's class phrases
    (Algorithm 1's classes), each named in ``source``."""

    source: str
    target: str
    entities: tuple[str, ...]
    seed: int = 0


@dataclass
class Sources:
    """Source generations: images (E, H, W, 3) uint8 and the latent entering each step (steps, E, C, h, w)."""

    images: np.ndarray
    trajectory: torch.Tensor


@dataclass
class EditResult:
    sources: np.ndarray                   # (E, H, W, 3)
    edited: dict[str, np.ndarray]         # arm -> (E, H, W, 3)
    heatmaps: dict[str, list[np.ndarray]] = field(default_factory=dict)  # arm -> per edit (N, H, W) replacement maps
    scores: list[np.ndarray] = field(default_factory=list)  # per edit (N,) alignment scores S of the entities


def check_edit(tokenizer, e: Edit) -> list[list[int]]:
    """Token columns of each entity in the source; the target must have the source's token count."""
    if not e.entities:
        raise ValueError(f"edit {e.source!r} -> {e.target!r} names no entities")
    n_src = len(tokenizer(e.source, truncation=False).input_ids)
    n_tgt = len(tokenizer(e.target, truncation=False).input_ids)
    if n_src != n_tgt:
        raise ValueError(f"prompt-to-prompt word swap needs equal token counts: {e.source!r} has {n_src}, "
                         f"{e.target!r} has {n_tgt}")
    if e.source == e.target:
        raise ValueError(f"source and target prompts are the same: {e.source!r}")
    return [token_positions(tokenizer, e.source, c) for c in e.entities]


SCALINGS = ("range", "mass")


def scaled_heatmaps(src: torch.Tensor, maps: torch.Tensor, columns: list[list[int]], scaling: str = "range") -> torch.Tensor:
    """Replace entity columns of source cross-attention src (heads, Q, K) by maps (N, Q) in [0, 1] scaled to
    the source column: ``"range"`` (our reading of the paper): min + map (max - min) over the queries, then each
    query's row renormalised to sum to one; ``"mass"`` (a project option): map x (column sum / map sum), the
    token's total attention kept and only moved in space (rows are renormalised too)."""
    if scaling not in SCALINGS:
        raise ValueError(f"heatmap scaling must be one of {SCALINGS}, got {scaling!r}")
    out = src.clone()
    for i, cols in enumerate(columns):
        m = maps[i][None, :].to(src.dtype)
        for c in cols:
            col = src[:, :, c]
            if scaling == "range":
                lo, hi = col.min(-1, keepdim=True).values, col.max(-1, keepdim=True).values
                out[:, :, c] = lo + m * (hi - lo)
            else:
                out[:, :, c] = m * (col.sum(-1, keepdim=True) / m.sum(-1, keepdim=True).clamp_min(1e-12))
    return out / out.sum(-1, keepdim=True)


@dataclass
class _ReplaceState:
    n_steps: int
    n_edits: int
    arms: tuple[str, ...]
    columns: list[list[list[int]]]             # per edit, per entity
    heatmaps: dict[str, list[torch.Tensor]]    # arm -> per edit (N, H, W)
    latent_hw: tuple[int, int]
    cross_replace: float = CROSS_REPLACE
    self_replace: float = SELF_REPLACE
    step: int = 0
    _resized: dict = field(default_factory=dict)

    def maps_at(self, arm: str, n_queries: int) -> list[torch.Tensor]:
        """Per edit (N, Q): an arm's heatmaps on a layer's query grid."""
        key = (arm, n_queries)
        if key not in self._resized:
            hw = grid_hw(self.latent_hw, n_queries)
            self._resized[key] = [F.interpolate(h[None].float(), size=hw, mode="area")[0].flatten(1)
                                  for h in self.heatmaps[arm]]
        return self._resized[key]

    def target_rows(self, a: int) -> slice:
        """Rows of arm a's conditional target pass (layout: sources, then per arm conditional + unconditional)."""
        start = self.n_edits * (1 + 2 * a)
        return slice(start, start + self.n_edits)


class ReplaceProcessor(UNetAttentionProcessor):
    """Prompt-to-prompt's attention replacement for every arm of one batched pass."""

    def __init__(self, state: _ReplaceState, name: str):
        self.state, self.name = state, name
        self.cross = is_cross_attention_layer(name, joint=False)

    def on_probs(self, probs, is_cross, attn, query):
        st = self.state
        if is_cross:
            if st.step >= int(st.cross_replace * st.n_steps):
                return probs
        elif st.step >= int(st.self_replace * st.n_steps) or probs.shape[2] > SELF_MAX_QUERIES:
            return probs
        probs = probs.clone()
        src = probs[:st.n_edits]
        for a, arm in enumerate(st.arms):
            rows = st.target_rows(a)
            if not is_cross or arm == "p2p":
                probs[rows] = src
                continue
            maps = st.maps_at(arm, probs.shape[2])
            scaling = "mass" if arm.endswith("(mass)") else "range"
            probs[rows] = torch.stack([scaled_heatmaps(src[e], maps[e], st.columns[e], scaling)
                                       for e in range(st.n_edits)])
        return probs


def _check(adapter, arms):
    if adapter.joint_attention or adapter.family not in GUIDANCE:
        raise ValueError(f"prompt-to-prompt editing serves UNet pipelines (SD 1.x / 2.x, SDXL); got the "
                         f"{adapter.family!r} family")
    bad = [a for a in arms if a not in ARMS]
    if bad or not arms:
        raise ValueError(f"unknown editing arm(s) {bad}; choose from {ARMS}")


@torch.no_grad()
def generate_sources(pipe, edits: list[Edit], steps: int = DEFAULT_STEPS, guidance: float | None = None,
                     grid: str = "authors", batch_size: int = 16, progress: bool = True) -> Sources:
    """The source prompts' generations and their latent trajectories (plain prompts, guided)."""
    adapter = adapter_for(pipe)
    _check(adapter, ARMS)
    for e in edits:
        check_edit(adapter.tokenizer, e)
    guidance = GUIDANCE[adapter.family] if guidance is None else float(guidance)
    pairs = sampling_grid(adapter, steps, grid)
    images, trajs = [], []
    bar = tqdm(total=len(edits) * len(pairs), desc="source generations", disable=not progress)
    for s in range(0, len(edits), batch_size):
        b = edits[s:s + batch_size]
        n = len(b)
        cond = cat_conditions([adapter.encode_text([e.source for e in b]), adapter.encode_text([""] * n)])
        traj = []

        def prediction(z, t, k):
            traj.append(z.detach().clone())
            out = adapter.predict(torch.cat([z, z]), timestep_batch(adapter, t, 2 * n), cond)
            return guided(out[n:].float(), out[:n].float(), guidance)

        z = denoise(adapter, initial_latents(adapter, [e.seed for e in b]), pairs, prediction, bar)
        images.append(decode(adapter, z))
        trajs.append(torch.stack(traj))
    bar.close()
    return Sources(np.concatenate(images), torch.cat(trajs, dim=1))


def source_heatmaps(pipe, edits: list[Edit], images: np.ndarray, config: AlignConfig | None = None,
                    seed: int = 0, progress: bool = True) -> tuple[dict[str, list[np.ndarray]], list[np.ndarray]]:
    """Algorithm 1 on each source image: {"uncalibrated", "calibrated"} -> per edit (N, H, W), and S per edit."""
    aligner = Aligner(pipe, config) if config is not None else Aligner(pipe)
    cfg = aligner.config
    raw, cal, scores = [], [], []
    for e, img in tqdm(list(zip(edits, images)), desc="Algorithm 1 on the sources", disable=not progress):
        m = aligner.measure(img, list(e.entities), e.source, seed=seed, cfg=cfg)
        res = finalize(m, cfg)
        raw.append(finalize(m, dataclasses.replace(cfg, calibrate=False)).heatmaps)
        cal.append(res.heatmaps)
        scores.append(res.scores)
    return {"uncalibrated": raw, "calibrated": cal}, scores


@torch.no_grad()
def edit(pipe, edits: list[Edit], arms: tuple[str, ...] = ARMS, steps: int = DEFAULT_STEPS,
         guidance: float | None = None, grid: str = "authors", cross_replace: float = CROSS_REPLACE,
         self_replace: float = SELF_REPLACE, config: AlignConfig | None = None, sources: Sources | None = None,
         batch_size: int = 8, progress: bool = True) -> EditResult:
    """Edit every source prompt into its target with each arm (``"p2p"``, ``"uncalibrated"``,
    ``"calibrated"``); ``sources`` reuses :func:`generate_sources`' output for the same edits and sampler."""
    adapter = adapter_for(pipe)
    arms = tuple(arms)
    _check(adapter, arms)
    for name, v in (("cross_replace", cross_replace), ("self_replace", self_replace)):
        if not 0 <= v <= 1:
            raise ValueError(f"{name} is a fraction of the steps in [0, 1], got {v}")
    columns = [check_edit(adapter.tokenizer, e) for e in edits]
    guidance = GUIDANCE[adapter.family] if guidance is None else float(guidance)
    pairs = sampling_grid(adapter, steps, grid)
    if sources is None:
        sources = generate_sources(pipe, edits, steps, guidance, grid, progress=progress)
    if sources.trajectory.shape[:2] != (len(pairs), len(edits)):
        raise ValueError(f"sources hold {tuple(sources.trajectory.shape[:2])} (steps, edits); this edit needs "
                         f"{(len(pairs), len(edits))}: generate them with the same edits, steps and grid")
    maps, scores = {}, []
    if any(a != "p2p" for a in arms):
        if config is None:
            config = AlignConfig.official(**model_hints(pipe))
        maps, scores = source_heatmaps(pipe, edits, sources.images, config, progress=progress)
    den = adapter.denoiser
    latent_hw = (int(den.config.sample_size),) * 2
    edited = {a: [] for a in arms}
    original = dict(den.attn_processors)
    bar = tqdm(total=len(edits) * len(pairs), desc="prompt-to-prompt edits", disable=not progress)
    try:
        for s in range(0, len(edits), batch_size):
            b = edits[s:s + batch_size]
            n = len(b)
            state = _ReplaceState(len(pairs), n, arms, columns[s:s + n],
                                  {a: [torch.from_numpy(h) for h in maps[HEATMAP_OF_ARM[a]][s:s + n]] for a in arms if a != "p2p"}, latent_hw,
                                  cross_replace, self_replace)
            den.set_attn_processor({name: ReplaceProcessor(state, name) for name in original})
            src_cond = adapter.encode_text([e.source for e in b])
            tgt_pair = cat_conditions([adapter.encode_text([e.target for e in b]), adapter.encode_text([""] * n)])
            cond = cat_conditions([src_cond] + [tgt_pair] * len(arms))
            traj = sources.trajectory[:, s:s + n]

            def prediction(z, t, k):
                state.step = k
                zs = [traj[k].to(z.dtype)] + [zz for a in range(len(arms)) for zz in (z[a * n:(a + 1) * n],) * 2]
                out = adapter.predict(torch.cat(zs), timestep_batch(adapter, t, n * (1 + 2 * len(arms))), cond)
                preds = []
                for a in range(len(arms)):
                    c = out[n * (1 + 2 * a):n * (2 + 2 * a)].float()
                    u = out[n * (2 + 2 * a):n * (3 + 2 * a)].float()
                    preds.append(guided(u, c, guidance))
                return torch.cat(preds)

            z0 = initial_latents(adapter, [e.seed for e in b]).repeat(len(arms), 1, 1, 1)
            with eager_passes():  # the replacing processors hold per-step state
                z = denoise(adapter, z0, pairs, prediction)
            bar.update(n * len(pairs))
            imgs = decode(adapter, z)
            for a, arm in enumerate(arms):
                edited[arm].append(imgs[a * n:(a + 1) * n])
    finally:
        den.set_attn_processor(original)
        bar.close()
    used = {a: maps[HEATMAP_OF_ARM[a]] for a in arms if a != "p2p"}
    return EditResult(sources.images, {a: np.concatenate(v) for a, v in edited.items()}, used, scores)
