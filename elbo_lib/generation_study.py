"""The generation side's experiments on the toy world (Table V / Fig. 5, Fig. 6), for the notebooks: run the
arms on the same prompts, seeds and edits (cached in chunks, so an interrupted run resumes), and score them
with the toy detector."""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from scipy import stats

from . import editing, generation
from .evaluation.cache import ChunkCache
from .evaluation.generation import (COMPOSITION_METRICS, EDIT_METRICS, composition_record, edit_record,
                                    paired_mean_table, paired_table)
from .models import load_pipeline
from .toy.compositions import CompositionPrompt, ToyEdit
from .toy.detector import present

GENERATION_ARMS = ("baseline", "ELBO-T2IAlign")
MAX_PHRASES = 3


class _LazyPipe:
    """Loads the pipeline on the first cache miss only."""

    def __init__(self, model, device=None):
        self.model, self.device, self._pipe = model, device, None

    def __call__(self):
        if self._pipe is None:
            self._pipe = load_pipeline(self.model, device=self.device)
        return self._pipe


@dataclass
class CompositionRun:
    records: pd.DataFrame          # one row per (prompt, seed, arm)
    images: dict[str, np.ndarray]  # arm -> (prompts x seeds, H, W, 3), in records' (prompt, seed) order
    weights: np.ndarray            # (prompts x seeds, steps, MAX_PHRASES) ELBO-T2IAlign's weights, NaN-padded
    items: list[tuple[CompositionPrompt, int]]


def run_composition(model: str | os.PathLike, prompts: list[CompositionPrompt], seeds: list[int],
                    steps: int = generation.DEFAULT_STEPS, guidance: float | None = None, grid: str = "authors",
                    strength: float = generation.ELBO_STRENGTH, batch_size: int = 32, device: str | None = None,
                    cache_dir=None) -> CompositionRun:
    """Generate every (prompt, seed) with the plain prompt and with ELBO-T2IAlign's weights; detector verdicts."""
    items = [(p, int(s)) for p in prompts for s in seeds]
    pipe = _LazyPipe(model, device)
    out, weights = {}, None
    for arm in GENERATION_ARMS:
        reweight = arm != "baseline"
        settings = dict(arm=arm, steps=steps, guidance=guidance, grid=grid, strength=strength, batch=batch_size)

        def compute(s, e):
            chunk = items[s:e]
            g = generation.generate(pipe(), [p.prompt for p, _ in chunk], [p.phrases for p, _ in chunk],
                                    [sd for _, sd in chunk], reweight=reweight, steps=steps, guidance=guidance,
                                    strength=strength, grid=grid, batch_size=batch_size, progress=True)
            w = np.full((len(chunk), len(g.weights[0]), MAX_PHRASES), np.nan, dtype=np.float32)
            for i, wi in enumerate(g.weights):
                w[i, :, :wi.shape[1]] = wi
            return {"images": g.images, "weights": w}

        res = ChunkCache(cache_dir, model, "generations", settings).run(
            [f"{p.prompt}|{sd}" for p, sd in items], batch_size, compute)
        out[arm] = res["images"]
        if reweight:
            weights = res["weights"]
    rows = []
    for arm in GENERATION_ARMS:
        for k, ((p, sd), img) in enumerate(zip(items, out[arm])):
            r = composition_record(img, list(p.objects))
            rows.append({"item": k, "prompt": p.prompt, "seed": sd, "kind": p.kind, "arm": arm,
                         **{c: r[c] for c in ("all_present", "n_objects", "shapes_found", "bound")}})
    return CompositionRun(pd.DataFrame(rows), out, weights, items)


def composition_table(run: CompositionRun, n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """ELBO-T2IAlign minus baseline per metric, paired over (prompt, seed), intervals over prompts: on all
    prompts, per kind, and on the pairs where one arm drops an object (the paper's subset is where the
    baseline does; the mirror subset shows how much of that gain is selection on the baseline's failures)."""
    df = run.records
    a, b = GENERATION_ARMS[1], GENERATION_ARMS[0]
    parts = [paired_table(df, COMPOSITION_METRICS, "arm", a, b, "prompt", n_boot, seed, "all prompts")]
    for kind, g in df.groupby("kind", sort=False):
        parts.append(paired_table(g, COMPOSITION_METRICS, "arm", a, b, "prompt", n_boot, seed, kind))
    wide = df.pivot_table(index="item", columns="arm", values="all_present", aggfunc="first")
    for label, arm in (("baseline drops an object (paper's subset)", b), ("ELBO-T2IAlign drops an object", a)):
        items = wide.index[~wide[arm].astype(bool)]
        sub = df[df.item.isin(items)]
        if len(items):
            parts.append(paired_table(sub, COMPOSITION_METRICS, "arm", a, b, "prompt", n_boot, seed, label))
    return pd.concat(parts, ignore_index=True)


def discordant_pairs(run: CompositionRun) -> dict:
    """All-objects-present on the same (prompt, seed): pairs only the reweighted image gets right, pairs only
    the baseline gets right, and the exact two-sided McNemar (binomial) p-value."""
    wide = run.records.pivot_table(index="item", columns="arm", values="all_present", aggfunc="first").astype(bool)
    a, b = GENERATION_ARMS[1], GENERATION_ARMS[0]
    only_a, only_b = int((wide[a] & ~wide[b]).sum()), int((wide[b] & ~wide[a]).sum())
    p = stats.binomtest(only_a, only_a + only_b, 0.5).pvalue if only_a + only_b else 1.0
    return {"only ELBO-T2IAlign": only_a, "only baseline": only_b, "both": int((wide[a] & wide[b]).sum()),
            "neither": int((~wide[a] & ~wide[b]).sum()), "mcnemar_p": float(p)}


# ---- editing ---------------------------------------------------------------------------------------------------
@dataclass
class EditRun:
    records: pd.DataFrame              # one row per (edit, arm)
    edits: list[ToyEdit]               # the scored edits (sources showing every object)
    sources: np.ndarray                # (E, H, W, 3)
    edited: dict[str, np.ndarray]      # arm -> (E, H, W, 3)
    heatmaps: dict[str, np.ndarray]    # arm -> (E, MAX_PHRASES, H, W), NaN-padded
    candidates: int                    # source generations drawn to find the scored edits


def run_editing(model: str | os.PathLike, candidates: list[ToyEdit], n_edits: int, arms=editing.ARMS,
                steps: int = generation.DEFAULT_STEPS, guidance: float | None = None, grid: str = "authors",
                batch_size: int = 16, device: str | None = None, cache_dir=None) -> EditRun:
    """Generate the candidates' sources, keep the first ``n_edits`` whose source shows every object, edit
    them with every arm, and score each edit with :func:`evaluation.generation.edit_record`."""
    pipe = _LazyPipe(model, device)
    edits = [c.edit for c in candidates]
    src_settings = dict(steps=steps, guidance=guidance, grid=grid, batch=batch_size)

    def sources(s, e):
        src = editing.generate_sources(pipe(), edits[s:e], steps, guidance, grid, batch_size)
        return {"images": src.images, "trajectory": src.trajectory.transpose(0, 1).float().cpu().numpy()}

    src = ChunkCache(cache_dir, model, "edit-sources", src_settings).run([str(e) for e in edits], batch_size, sources)
    valid = [k for k, c in enumerate(candidates) if present(src["images"][k], list(c.objects))][:n_edits]
    if len(valid) < n_edits:
        raise ValueError(f"only {len(valid)} of {len(candidates)} source generations show every object; "
                         f"draw more candidates for {n_edits} edits")
    chosen = [candidates[k] for k in valid]
    images, traj = src["images"][valid], torch.from_numpy(src["trajectory"][valid]).transpose(0, 1)
    settings = dict(src_settings, arms=list(arms))

    def run(s, e):
        sub = editing.Sources(images[s:e], traj[:, s:e].contiguous())
        r = editing.edit(pipe(), [c.edit for c in chosen[s:e]], arms, steps, guidance, grid, sources=sub,
                         batch_size=batch_size)
        out = {f"edited/{a}": v for a, v in r.edited.items()}
        for a, maps in r.heatmaps.items():
            pad = np.full((e - s, MAX_PHRASES, *images.shape[1:3]), np.nan, dtype=np.float32)
            for i, m in enumerate(maps):
                pad[i, :len(m)] = m
            out[f"heatmaps/{a}"] = pad
        return out

    res = ChunkCache(cache_dir, model, "edits", settings).run([str(c.edit) for c in chosen], batch_size, run)
    edited = {a: res[f"edited/{a}"] for a in arms}
    rows = []
    for k, c in enumerate(chosen):
        for a in arms:
            r = edit_record(images[k], edited[a][k], list(c.objects), c.index, c.new)
            rows.append({"edit": k, "arm": a, "kind": c.kind, "n_objects": len(c.objects), **r})
    df = pd.DataFrame(rows)
    small = df[df.arm == arms[0]].target_area.median()
    df["target size"] = np.where(df.target_area <= small, "smaller half", "larger half")
    heat = {a: res[f"heatmaps/{a}"] for a in arms if f"heatmaps/{a}" in res}
    return EditRun(df, chosen, images, edited, heat, len(candidates))


def editing_table(run: EditRun, reference: str = "p2p", arms=None, n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Each arm minus ``reference`` (plain prompt-to-prompt by default; "uncalibrated" isolates the calibration),
    paired over edits: all edits, per kind, per target size."""
    df = run.records.assign(success=run.records.success.astype(float),
                            edited_present=run.records.edited_present.astype(float),
                            old_gone=run.records.old_gone.astype(float))
    parts = []
    for arm in arms or [a for a in df.arm.unique() if a != reference]:
        groups = [("all edits", df)] + [(k, g) for k, g in df.groupby("kind")] + \
                 [(k, g) for k, g in df.groupby("target size")]
        for label, g in groups:
            t = paired_mean_table(g, EDIT_METRICS, "arm", arm, reference, "edit", n_boot, seed, label)
            t = t.rename(columns={arm: "arm value", reference: "reference value"})
            t.insert(0, "reference", reference)
            t.insert(0, "arm", arm)
            parts.append(t)
    return pd.concat(parts, ignore_index=True)
