"""Scoring of the generation side (detector verdicts, paired intervals, CLIP score), the toy prompt sets, the
chunk cache, and Table IV's paired single-noun ELBO."""
import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch

from elbo_lib.aligner import Aligner, finalize
from elbo_lib.evaluation.cache import ChunkCache
from elbo_lib.evaluation.generation import (clip_scores, composition_record, edit_record, paired_ratio_difference)
from elbo_lib.generation_study import CompositionRun, composition_table, discordant_pairs
from elbo_lib.models.random_init import tiny_clip, tiny_clip_tokenizer
from elbo_lib.toy.compositions import composition_prompts, toy_edits
from elbo_lib.toy.world import RARE_SHAPE, ToyObject, render


def _scene(objs):
    return render([ToyObject(c, s, x, y, 11.0) for c, s, x, y in objs], 64, np.random.default_rng(0), 0.0).image


def test_composition_record_reads_the_scene():
    img = _scene([("red", "circle", 18, 20), ("blue", "square", 44, 44)])
    r = composition_record(img, [("red", "circle"), ("blue", "square")])
    assert r["all_present"] and r["bound"] == 2 and r["shapes_found"] == 2
    r = composition_record(img, [("green", "circle"), ("blue", "star")])  # wrong colour; missing shape
    assert not r["all_present"] and r["shapes_found"] == 1 and r["bound"] == 0


def test_edit_record_scores_a_perfect_and_a_failed_edit():
    objs = [("red", "circle"), ("blue", "square")]
    src = _scene([("red", "circle", 18, 20), ("blue", "square", 44, 44)])
    good = _scene([("green", "circle", 18, 20), ("blue", "square", 44, 44)])
    r = edit_record(src, good, objs, 0, ("green", "circle"))
    assert r["success"] and r["place_iou"] > 0.9 and r["old_gone"] and r["others_kept"] == 1.0
    assert r["others_change"] == 0.0
    moved = _scene([("green", "circle", 44, 16), ("blue", "star", 44, 44)])
    r = edit_record(src, moved, objs, 0, ("green", "circle"))
    assert not r["success"] and r["edited_present"] and r["place_iou"] < 0.1 and r["others_kept"] == 0.0
    assert r["others_change"] > 0
    with pytest.raises(ValueError, match="not in the source"):
        edit_record(src, good, [("purple", "heart"), ("blue", "square")], 0, ("green", "heart"))


def test_paired_ratio_difference_resamples_clusters():
    df = pd.DataFrame({"prompt": ["p1", "p1", "p2", "p2"] * 2, "arm": ["a"] * 4 + ["b"] * 4,
                       "hit": [1, 1, 1, 0, 0, 1, 0, 0], "n": [1] * 8})
    r = paired_ratio_difference(df, "hit", "n", "arm", "a", "b", "prompt", n_boot=200)
    assert r["a"] == 0.75 and r["b"] == 0.25 and r["difference"] == 0.5 and r["n_clusters"] == 2
    assert r["ci95"][0] <= 0.5 <= r["ci95"][1]
    with pytest.raises(ValueError, match="share no"):
        paired_ratio_difference(df.assign(prompt=np.where(df.arm == "a", "x", "y")), "hit", "n", "arm", "a", "b",
                                "prompt")


def test_composition_table_and_discordant_pairs():
    prompts = composition_prompts(6, seed=1)
    rows = []
    for k, p in enumerate(prompts):
        for arm, hit in (("baseline", k % 2 == 0), ("ELBO-T2IAlign", k % 3 == 0)):
            rows.append({"item": k, "prompt": p.prompt, "seed": 0, "kind": p.kind, "arm": arm, "all_present": hit,
                         "n_objects": len(p.objects), "shapes_found": len(p.objects), "bound": len(p.objects) * hit})
    run = CompositionRun(pd.DataFrame(rows), {}, np.zeros(0), [(p, 0) for p in prompts])
    pairs = discordant_pairs(run)
    assert pairs == {"only ELBO-T2IAlign": 1, "only baseline": 2, "both": 1, "neither": 2,
                     "mcnemar_p": pytest.approx(1.0)}
    tab = composition_table(run, n_boot=50)
    assert {"all prompts", "baseline drops an object (paper's subset)", "ELBO-T2IAlign drops an object"} <= set(tab.subset)
    row = tab[(tab.subset == "all prompts") & (tab.metric == "all objects present")].iloc[0]
    assert row["baseline"] == pytest.approx(0.5) and row["ELBO-T2IAlign"] == pytest.approx(2 / 6)


def test_toy_prompt_sets():
    ps = composition_prompts(40, seed=0)
    assert len(ps) == len({p.prompt for p in ps}) == 40
    assert {p.kind for p in ps} == {"two objects", "three objects", "rare class"}
    for p in ps:
        cs, ss = zip(*p.objects)
        assert len(set(cs)) == len(cs) and len(set(ss)) == len(ss)
        assert (RARE_SHAPE in ss) == (p.kind == "rare class") and all(ph in p.prompt for ph in p.phrases)
    assert composition_prompts(40, seed=0) == ps
    with pytest.raises(ValueError, match="mix"):
        composition_prompts(4, mix={"four objects": 1.0})
    tok = tiny_clip_tokenizer()
    for e in toy_edits(12, seed=0):
        assert len(tok(e.edit.source).input_ids) == len(tok(e.edit.target).input_ids)
        assert e.objects[e.index] != e.new and " ".join(e.new) in e.edit.target
        assert e.new[0] not in [c for c, _ in e.objects] or e.new[1] not in [s for _, s in e.objects]


def test_chunk_cache_resumes_without_recomputing(tmp_path):
    calls = []

    def compute(s, e):
        calls.append((s, e))
        return {"x": np.arange(s, e, dtype=np.float32)[:, None].repeat(2, 1)}

    items = list("abcdefg")
    c = ChunkCache(tmp_path, "toy", "runs", {"k": 1})
    first = c.run(items, 3, compute)
    assert calls == [(0, 3), (3, 6), (6, 7)] and first["x"].shape == (7, 2)
    for f in sorted(c.dir.glob("0000*"))[1:]:
        f.unlink()  # an interrupted run: only the first chunk was written
    calls.clear()
    again = c.run(items, 3, compute)
    assert calls == [(3, 6), (6, 7)] and np.array_equal(again["x"], first["x"])
    with pytest.raises(ValueError, match="rows"):
        ChunkCache(tmp_path, "toy", "runs", {"k": 2}).run(items, 3, lambda s, e: {"x": np.zeros(1)})


def test_clip_score_is_scaled_cosine_and_batch_invariant():
    model, proc = tiny_clip()
    rng = np.random.default_rng(0)
    imgs = [rng.integers(0, 255, (40, 48, 3), dtype=np.uint8) for _ in range(3)]
    prompts = ["a red circle", "a blue square and a green star", "a photo of a cat"]
    s = clip_scores(model, proc, imgs, prompts, batch_size=2)
    s1 = clip_scores(model, proc, imgs, prompts, batch_size=1)
    np.testing.assert_allclose(s, s1, rtol=1e-4, atol=1e-4)
    with torch.no_grad():
        inp = proc(text=prompts[:1], images=imgs[:1], return_tensors="pt", padding=True)
        out = model(**inp)
        im, tx = out.image_embeds, out.text_embeds
        cos = torch.nn.functional.cosine_similarity(im, tx).item()
    assert s[0] == pytest.approx(model.logit_scale.exp().item() * cos, rel=1e-4, abs=1e-4)
    with pytest.raises(ValueError, match="3 images for 2 prompts"):
        clip_scores(model, proc, imgs, prompts[:2])


def test_single_noun_elbo_alone_equals_a_full_measurement(pipes, toy_image):
    pipe = pipes["sd1"]
    al = Aligner(pipe, elbo_steps=10, attention_steps=2)
    img = toy_image.image
    m = al.measure(img, ["red circle", "blue star"], "a red circle and a blue star", seed=5,
                   elbo_classes=["circle", "star"])
    sub = al.elbo_losses(img, ["circle", "star"], seed=5, elbo_idx=[0, 3, 7])
    torch.testing.assert_close(sub[:, [0, 3, 7]], m.elbo[:, [0, 3, 7]], rtol=1e-5, atol=1e-7)
    assert torch.isnan(sub[:, 1]).all()
    with pytest.raises(ValueError, match="NaN losses"):
        finalize(dataclasses.replace(m, elbo=sub), al.config)
    finalize(dataclasses.replace(m, elbo=sub), al.config, elbo_idx=[0, 3, 7])
    with pytest.raises(ValueError, match="elbo_idx"):
        al.elbo_losses(img, ["circle"], seed=5, elbo_idx=[10])
