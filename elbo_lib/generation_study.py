"""The generation side's experiments (Table V / Fig. 5, Fig. 6), for the notebooks: run the arms on the same
prompts, seeds and edits (cached in chunks, so an interrupted run resumes), and score them: on the toy world
with its detector, on the paper's prompt sets (:func:`read_prompts`, :func:`run_prompt_set`) with the authors'
CLIP score (:func:`elbo_lib.evaluation.generation.clip_score_table`)."""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from scipy import stats

from . import editing, generation
from .evaluation.cache import ChunkCache
from .evaluation.generation import (COMPOSITION_METRICS, EDIT_METRICS, clip_score_table, clip_scores,
                                    composition_record, edit_record, paired_mean_table, paired_table)
from .models import default_device_dtype, load_pipeline
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


def _generate_arms(model, texts: list[str], phrases: list[list[str]], seeds: list[int], steps: int,
                   guidance: float | None, grid: str, strength: float, batch_size: int, device: str | None, cache_dir,
                   authors_device: bool = False, settings: dict | None = None) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Every (prompt, seed) with the plain prompt and with ELBO-T2IAlign's weights, cached in chunks: images per
    arm and the reweighted arm's weights ((items, steps, at least MAX_PHRASES), NaN-padded). ``authors_device``: the
    initial latents and the denoiser's precision as the authors' code runs on the pipeline's device
    (:func:`generation.authors_device_options`)."""
    items = [(t, ph, int(s)) for t, ph in zip(texts, phrases) for s in seeds]
    pipe = _LazyPipe(model, device)
    width = max([MAX_PHRASES] + [len(ph) for ph in phrases])
    out, weights = {}, None
    for arm in GENERATION_ARMS:
        reweight = arm != "baseline"
        keys = dict(arm=arm, steps=steps, guidance=guidance, grid=grid, strength=strength, batch=batch_size,
                    **(settings or {}))

        def compute(s, e):
            chunk = items[s:e]
            opts = generation.authors_device_options(pipe()) if authors_device else {}
            g = generation.generate(pipe(), [t for t, _, _ in chunk], [ph for _, ph, _ in chunk],
                                    [sd for _, _, sd in chunk], reweight=reweight, steps=steps, guidance=guidance,
                                    strength=strength, grid=grid, batch_size=batch_size, progress=True, **opts)
            w = np.full((len(chunk), len(g.weights[0]), width), np.nan, dtype=np.float32)
            for i, wi in enumerate(g.weights):
                w[i, :, :wi.shape[1]] = wi
            return {"images": g.images, "weights": w}

        res = ChunkCache(cache_dir, model, "generations", keys).run(
            [f"{t}|{sd}" for t, _, sd in items], batch_size, compute)
        out[arm] = res["images"]
        if reweight:
            weights = res["weights"]
    return out, weights


def run_composition(model: str | os.PathLike, prompts: list[CompositionPrompt], seeds: list[int],
                    steps: int = generation.DEFAULT_STEPS, guidance: float | None = None, grid: str = "authors",
                    strength: float = generation.ELBO_STRENGTH, batch_size: int = 32, device: str | None = None,
                    cache_dir=None) -> CompositionRun:
    """Generate every (prompt, seed) with the plain prompt and with ELBO-T2IAlign's weights; detector verdicts."""
    items = [(p, int(s)) for p in prompts for s in seeds]
    out, weights = _generate_arms(model, [p.prompt for p in prompts], [p.phrases for p in prompts], seeds, steps,
                                  guidance, grid, strength, batch_size, device, cache_dir)
    rows = []
    for arm in GENERATION_ARMS:
        for k, ((p, sd), img) in enumerate(zip(items, out[arm])):
            r = composition_record(img, list(p.objects))
            rows.append({"item": k, "prompt": p.prompt, "seed": sd, "kind": p.kind, "arm": arm,
                         **{c: r[c] for c in ("all_present", "n_objects", "shapes_found", "bound")}})
    return CompositionRun(pd.DataFrame(rows), out, weights, items)


# ---- the paper's prompt sets --------------------------------------------------------------------------------
PROMPT_SETS = {"AnE.txt": "Attend-and-Excite", "DVMP.txt": "DVMP", "ABC-6K.txt": "ABC-6K"}  # the authors' file names
AUTHORS_NUM_PROMPTS = 1000  # their configs/run_generation.yaml num_prompts: the first 1000 lines of each file
AUTHORS_SEEDS = (4307,)     # their io.yaml seed; num_imgs_per_prompt 1 (image k of a prompt: seed 4307 + k)


def read_prompts(path: str | os.PathLike, n: int | None = None) -> list[str]:
    """A prompt set file as the authors' ``TextDataset`` reads it: one prompt a line, stripped; the first ``n``
    (all with None). Blank lines at the end are ignored; a blank line before a prompt is an error."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"no prompt file at {p}: one prompt a line, e.g. the authors' "
                                f"{', '.join(PROMPT_SETS)} (their datasets/ folder on the hub: Matrix53/elbo-t2ialign)")
    lines = [ln.strip() for ln in p.read_text(encoding="utf-8").splitlines()]
    while lines and not lines[-1]:
        lines.pop()
    blank = [k + 1 for k, ln in enumerate(lines) if not ln]
    if blank:
        raise ValueError(f"{p}: line {blank[0]} is blank; a prompt file holds one prompt a line")
    if not lines:
        raise ValueError(f"{p} holds no prompt; a prompt file holds one prompt a line")
    if n is not None and n < 1:
        raise ValueError(f"the number of prompts must be >= 1 (or None for all), got {n}")
    return lines[:n]


@dataclass
class PromptSetRun:
    prompts: list[str]
    phrases: list[list[str]]        # the phrases weighted per prompt (after generation.usable_phrases)
    dropped: list[list[str]]        # phrases that could not be marked in the prompt (repeats, overlaps)
    seeds: list[int]
    images: dict[str, np.ndarray]   # arm -> (prompts x seeds, H, W, 3), prompt-major
    weights: np.ndarray             # (prompts x seeds, steps, max phrases) ELBO-T2IAlign's weights, NaN-padded
    prompt_ids: np.ndarray          # the prompt index of each image

    @property
    def texts(self) -> list[str]:
        """Each image's prompt."""
        return [self.prompts[k] for k in self.prompt_ids]


def run_prompt_set(model: str | os.PathLike, prompts: list[str], phrases: list[list[str]],
                   seeds: tuple[int, ...] | list[int] = AUTHORS_SEEDS, steps: int = generation.DEFAULT_STEPS,
                   guidance: float | None = None, grid: str = "authors", strength: float = generation.ELBO_STRENGTH,
                   batch_size: int = 8, device: str | None = None, cache_dir=None) -> PromptSetRun:
    """Both arms on a prompt set, as the authors run it: their grid, 50 steps, their guidance, and on a GPU
    their precision (:func:`generation.authors_device_options`). ``phrases``: one list per prompt (e.g.
    :class:`elbo_lib.noun_phrases.NounPhrases`'s); a phrase that cannot be marked in its prompt is dropped
    (:func:`generation.usable_phrases`; listed in ``dropped``)."""
    if len(phrases) != len(prompts):
        raise ValueError(f"need one phrase list per prompt: {len(prompts)} prompts, {len(phrases)} phrase lists")
    split = [generation.usable_phrases(t, list(ph)) for t, ph in zip(prompts, phrases)]
    kept, dropped = [k for k, _ in split], [d for _, d in split]
    kind = torch.device(default_device_dtype(device)[0]).type  # the authors' precision differs on a GPU
    images, weights = _generate_arms(model, list(prompts), kept, list(seeds), steps, guidance, grid, strength,
                                     batch_size, device, cache_dir, authors_device=True,
                                     settings={"precision": f"authors-{kind}",  # the phrases change the images too
                                               "phrases": hashlib.sha1(json.dumps(kept).encode()).hexdigest()})
    ids = np.repeat(np.arange(len(prompts)), len(seeds))
    return PromptSetRun(list(prompts), kept, dropped, [int(s) for s in seeds], images, weights, ids)


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


def prompt_set_clip(run: PromptSetRun, model, processor, n_boot: int = 1000, seed: int = 0,
                    batch_size: int = 16) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The authors' CLIP score of both arms' images (:func:`evaluation.generation.clip_scores`): per image
    (prompt index, seed, one column per arm), and the table (:func:`evaluation.generation.clip_score_table`)."""
    texts = run.texts
    scores = {arm: clip_scores(model, processor, list(run.images[arm]), texts, batch_size) for arm in GENERATION_ARMS}
    per_image = pd.DataFrame({"prompt": run.prompt_ids, "seed": np.tile(run.seeds, len(run.prompts)), **scores})
    table = clip_score_table(scores, run.prompt_ids, GENERATION_ARMS[1], GENERATION_ARMS[0], n_boot, seed)
    return per_image, table


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
