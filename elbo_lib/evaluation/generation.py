"""Scoring generated and edited images: the toy world's detector (is each named object there, in which colour,
where), CLIP similarity for real models (the authors' Table V metric), and paired bootstrap intervals over
prompts or edits."""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from PIL import Image
from transformers import CLIPModel, CLIPProcessor

from ..toy.detector import detect, find
from .metrics import bootstrap_over


# ---- compositional generation (Table V) --------------------------------------------------------------------
def composition_record(image: np.ndarray, objects: list[tuple[str, str]]) -> dict:
    """Detector verdicts on one generated image for its prompt's (colour, shape) objects: every object in its
    colour (``all_present``), and per object the shape in any colour (``shape_found``) and in the named
    colour (``bound``)."""
    dets = detect(image)
    shape_found = [find(dets, None, s) is not None for _, s in objects]
    bound = [find(dets, c, s) is not None for c, s in objects]
    return {"all_present": bool(all(bound)), "n_objects": len(objects), "shapes_found": int(sum(shape_found)),
            "bound": int(sum(bound)), "per_object": [{"colour": c, "shape": s, "shape_found": f, "bound": b}
                                                      for (c, s), f, b in zip(objects, shape_found, bound)]}


COMPOSITION_METRICS = {
    # name: (numerator column, denominator column); ratios of sums over the resampled prompts
    "all objects present": ("all_present", "one"),
    "object presence (shape, any colour)": ("shapes_found", "n_objects"),
    "object in the named colour": ("bound", "n_objects"),
    "colour binding (named colour given the shape)": ("bound", "shapes_found"),
}


def paired_ratio_difference(df: pd.DataFrame, num: str, den: str, arm_col: str, a: str, b: str,
                            cluster: str, n_boot: int = 1000, seed: int = 0) -> dict:
    """sum(num)/sum(den) of arm ``a`` minus that of arm ``b`` over the same rows (paired: same prompt and seed),
    with a 95% bootstrap interval that resamples whole clusters (e.g. prompts, with all their seeds)."""
    df = df.assign(one=1)
    wide = {arm: df[df[arm_col] == arm].groupby(cluster)[[num, den]].sum() for arm in (a, b)}
    keys = wide[a].index.intersection(wide[b].index)
    if len(keys) == 0:
        raise ValueError(f"arms {a!r} and {b!r} share no {cluster}")
    na, da = wide[a].loc[keys, num].to_numpy(float), wide[a].loc[keys, den].to_numpy(float)
    nb, db = wide[b].loc[keys, num].to_numpy(float), wide[b].loc[keys, den].to_numpy(float)

    def ratio(n, d):
        return float(n.sum() / d.sum()) if d.sum() > 0 else float("nan")

    def stat(i):
        return ratio(na[i], da[i]) - ratio(nb[i], db[i])

    ci, _ = bootstrap_over(len(keys), stat, n_boot, seed)
    return {"a": ratio(na, da), "b": ratio(nb, db), "difference": stat(np.arange(len(keys))), "ci95": ci,
            "n_clusters": int(len(keys))}


def paired_table(df: pd.DataFrame, metrics: dict, arm_col: str, a: str, b: str, cluster: str,
                 n_boot: int = 1000, seed: int = 0, subset: str = "all") -> pd.DataFrame:
    """One row per metric: arm b, arm a, their paired difference a - b and its interval."""
    rows = []
    for name, (num, den) in metrics.items():
        r = paired_ratio_difference(df, num, den, arm_col, a, b, cluster, n_boot, seed)
        rows.append({"subset": subset, "metric": name, b: r["b"], a: r["a"], "difference": r["difference"],
                     "ci95": "[{:+.3f}, {:+.3f}]".format(*r["ci95"]), "n": r["n_clusters"]})
    return pd.DataFrame(rows)


# ---- editing (Fig. 6) ----------------------------------------------------------------------------------------
def mask_iou(a: np.ndarray | None, b: np.ndarray | None) -> float:
    if a is None or b is None:
        return 0.0
    union = (a | b).sum()
    return float((a & b).sum() / union) if union else 0.0


def edit_record(source: np.ndarray, edited: np.ndarray, objects: list[tuple[str, str]], index: int,
                new: tuple[str, str]) -> dict:
    """What a user wants from an edit of ``objects[index]`` into ``new`` (colour, shape): the new object there
    (``edited_present``), at the old object's place (``place_iou`` of their masks, 0 when missing), the old
    one gone, and every other object unchanged: still detected in its colour (``others_kept``) and its
    source pixels kept (``others_change``: mean absolute change, 0-255, over their source masks)."""
    src_dets, new_dets = detect(source), detect(edited)
    old = find(src_dets, *objects[index])
    if old is None:
        raise ValueError(f"the edited object {objects[index]} is not in the source image; score only edits whose "
                         "source shows every object")
    hit = find(new_dets, *new)
    others = [o for k, o in enumerate(objects) if k != index]
    kept = [find(new_dets, c, s) is not None for c, s in others]
    masks = [find(src_dets, c, s) for c, s in others]
    region = np.zeros(source.shape[:2], dtype=bool)
    for d in masks:
        if d is not None:
            region |= d.mask
    change = float(np.abs(edited.astype(float) - source.astype(float))[region].mean()) if region.any() else float("nan")
    iou = mask_iou(old.mask, hit.mask if hit is not None else None)
    rec = {"edited_present": hit is not None, "place_iou": iou, "old_gone": find(new_dets, *objects[index]) is None,
           "others_kept": float(np.mean(kept)) if kept else 1.0, "others_change": change,
           "target_area": int(old.area)}
    rec["success"] = bool(rec["edited_present"] and iou >= 0.5 and rec["others_kept"] == 1.0)
    return rec


EDIT_METRICS = ("success", "edited_present", "place_iou", "old_gone", "others_kept", "others_change")


def paired_mean_table(df: pd.DataFrame, metrics, arm_col: str, a: str, b: str, key: str, n_boot: int = 1000,
                      seed: int = 0, subset: str = "all") -> pd.DataFrame:
    """Per metric: the means of arms b and a over the same items (``key``), a - b and its 95% bootstrap
    interval over items."""
    rows = []
    for mname in metrics:
        wide = df.pivot_table(index=key, columns=arm_col, values=mname, aggfunc="mean")
        wide = wide[[a, b]].dropna().astype(float)
        d = (wide[a] - wide[b]).to_numpy()
        if len(d) == 0:
            continue
        ci, _ = bootstrap_over(len(d), lambda i: d[i].mean(), n_boot, seed)
        rows.append({"subset": subset, "metric": mname, b: float(wide[b].mean()), a: float(wide[a].mean()),
                     "difference": float(d.mean()), "ci95": f"[{ci[0]:+.3f}, {ci[1]:+.3f}]", "n": int(len(d))})
    return pd.DataFrame(rows)


# ---- CLIP score (real models) ----------------------------------------------------------------------------------
# The authors' evaluate_generation.py computes one score, the full-prompt image-text CLIP score: for each image,
# CLIPProcessor(text=its prompt, images=[image], padding=True) through CLIPModel, ``logits_per_image`` (the
# model's logit scale times the cosine of the projected image and text embeddings: 100 x cosine for OpenAI's
# CLIPs); the mean over a prompt's images; ``avg_clip_score``, the mean of those over prompts. No minimum-object
# or text-text similarity is computed there.
def load_clip(name: str, device: str = "cpu"):
    """(model, processor) of a CLIP checkpoint (hub id or directory) in float32, the authors' ``clip.dtype``;
    safetensors weights only."""
    model = CLIPModel.from_pretrained(name, use_safetensors=True, dtype=torch.float32).eval().to(device)
    return model, CLIPProcessor.from_pretrained(name)


def check_clip_prompts(processor, prompts: list[str]) -> None:
    """Each prompt must fit the CLIP text encoder (the authors' processor call does not truncate, so a longer
    prompt fails inside CLIP); raise naming the first that does not."""
    tok = processor.tokenizer
    limit = int(tok.model_max_length)
    for k, p in enumerate(prompts):
        n = len(tok(p).input_ids)
        if n > limit:
            raise ValueError(f"prompt {k} has {n} CLIP tokens, more than the {limit} CLIP reads (the authors' "
                             f"evaluation does not truncate): {p[:80]!r}")


@torch.no_grad()
def clip_scores(model, processor, images, prompts: list[str], batch_size: int = 16) -> np.ndarray:
    """The authors' CLIP score of each (image, prompt) pair: ``logits_per_image`` of ``transformers.CLIPModel``
    (logit scale x cosine similarity; 100 x cosine for ViT-L/14)."""
    if len(images) != len(prompts):
        raise ValueError(f"{len(images)} images for {len(prompts)} prompts")
    check_clip_prompts(processor, list(prompts))
    device = next(model.parameters()).device
    out = []
    for s in range(0, len(images), batch_size):
        ims = [Image.fromarray(np.asarray(im)) if not isinstance(im, Image.Image) else im.convert("RGB")
               for im in images[s:s + batch_size]]
        inputs = processor(text=list(prompts[s:s + batch_size]), images=ims, return_tensors="pt", padding=True)
        logits = model(**{k: v.to(device) for k, v in inputs.items()}).logits_per_image
        out.append(torch.diagonal(logits).float().cpu())
    return torch.cat(out).numpy()


def average_clip_score(scores: np.ndarray, prompt_ids) -> float:
    """The authors' ``avg_clip_score``: the mean over prompts of each prompt's mean score over its images."""
    scores = np.asarray(scores, dtype=float)
    if len(scores) != len(prompt_ids) or len(scores) == 0:
        raise ValueError(f"need one prompt id per score and at least one score: {len(scores)} scores, "
                         f"{len(prompt_ids)} ids")
    return float(pd.Series(scores).groupby(np.asarray(prompt_ids)).mean().mean())


def clip_score_table(scores: dict[str, np.ndarray], prompt_ids, a: str, b: str, n_boot: int = 1000,
                     seed: int = 0) -> pd.DataFrame:
    """One row per arm with the authors' average CLIP score, and a row for ``a`` minus ``b``: the difference of
    the averages, paired (same prompts and seeds), with a 95% bootstrap interval that resamples prompts."""
    ids = np.asarray(prompt_ids)
    per_prompt = {arm: pd.Series(np.asarray(v, dtype=float)).groupby(ids).mean() for arm, v in scores.items()}
    rows = [{"arm": arm, "CLIP score": average_clip_score(v, ids), "prompts": len(per_prompt[arm]),
             "images": len(v), "ci95": ""} for arm, v in scores.items()]
    d = (per_prompt[a] - per_prompt[b]).to_numpy()
    ci, _ = bootstrap_over(len(d), lambda i: d[i].mean(), n_boot, seed)
    rows.append({"arm": f"{a} - {b}", "CLIP score": float(d.mean()), "prompts": len(d), "images": len(ids),
                 "ci95": f"[{ci[0]:+.3f}, {ci[1]:+.3f}]"})
    return pd.DataFrame(rows)
