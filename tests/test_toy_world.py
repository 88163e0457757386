import numpy as np
import pytest

from elbo_lib.datasets import ToyDataset
from elbo_lib.evaluation.runner import heldout_default
from elbo_lib.toy.detector import detect, present
from elbo_lib.toy.study import STUDIES, STUDY_LEVELS, copies_around, eval_split, in_target_colour, study_set
from elbo_lib.models.tokenizer import build_tokenizer
from elbo_lib.toy.world import (COLOURS, RARE_SHAPE, SHAPES, ToyObject, WorldConfig, make_caption, parse_phrase,
                                parse_prompt, render, sample_scene, shape_mask, training_caption, vocabulary)


def test_masks_equal_drawn_visible_pixels():
    rng = np.random.default_rng(3)
    cfg = WorldConfig(texture=0.0, max_occlusion=0.5)
    for _ in range(20):
        s = sample_scene(cfg, rng)
        grey = (s.image == 128).all(-1)
        np.testing.assert_array_equal(s.instances == 0, grey)  # background exactly where nothing is drawn
        for k, o in enumerate(s.objects):
            vis = s.instances == k + 1
            assert (s.image[vis] == COLOURS[o.colour]).all()
            later = np.zeros_like(vis)
            for o2 in s.objects[k + 1:]:
                later |= shape_mask(o2.shape, o2.cx, o2.cy, o2.r, 64)
            np.testing.assert_array_equal(vis, shape_mask(o.shape, o.cx, o.cy, o.r, 64) & ~later)


def test_determinism():
    a = sample_scene(WorldConfig(), np.random.default_rng(7))
    b = sample_scene(WorldConfig(), np.random.default_rng(7))
    np.testing.assert_array_equal(a.image, b.image)
    assert a.objects == b.objects


def _stats(cfg, n=400, seed=0):
    rng = np.random.default_rng(seed)
    scenes = [sample_scene(cfg, rng) for _ in range(n)]
    return scenes


def test_knobs_change_statistics():
    base = _stats(WorldConfig())
    rare_share = np.mean([any(o.shape == RARE_SHAPE for o in s.objects) for s in base])
    assert rare_share <= 0.02
    more_rare = _stats(WorldConfig(rare_frequency=0.5))
    assert np.mean([any(o.shape == RARE_SHAPE for o in s.objects) for s in more_rare]) > 0.4
    big = _stats(WorldConfig(radius=(12.0, 14.0), n_objects=(1.0,)))
    small = _stats(WorldConfig(radius=(5.0, 6.0), n_objects=(1.0,)))
    assert np.mean([s.visible_area(0) for s in big]) > 3 * np.mean([s.visible_area(0) for s in small])
    many = _stats(WorldConfig(n_objects=(0, 0, 0, 0, 1.0)))
    assert all(len(s.objects) == 5 for s in many)
    flat = _stats(WorldConfig(shape_zipf=0.0), n=600)
    steep = _stats(WorldConfig(shape_zipf=2.0), n=600)
    top = lambda ss: np.mean([o.shape == "circle" for s in ss for o in s.objects])  # noqa: E731
    assert top(steep) > top(flat) + 0.15


def test_no_occlusion_knob():
    scenes = _stats(WorldConfig(max_occlusion=0.0, n_objects=(0, 0, 1.0, 0, 0)), n=50)
    for s in scenes:
        for k, o in enumerate(s.objects):
            assert s.visible_area(k) == shape_mask(o.shape, o.cx, o.cy, o.r, 64).sum()


@pytest.mark.parametrize("kw,match", [
    (dict(rare_frequency=1.5), "probability"), (dict(max_occlusion=-0.1), "probability"),
    (dict(radius=(-2.0, 5.0)), "radius"), (dict(radius=(5.0, 40.0)), "fit"),
    (dict(n_objects=(0.5, 0.6)), "sum to 1"), (dict(n_objects=(0.1,) * 6 + (0.4,)), "1..5"),
    (dict(common_shapes=("circle", "hexagon")), "allowed shapes"), (dict(shape_zipf=-1.0), "shape_zipf"),
])
def test_bad_knobs(kw, match):
    with pytest.raises(ValueError, match=match):
        WorldConfig(**kw)


def test_too_many_objects_to_fit():
    from elbo_lib.toy.world import place_objects
    with pytest.raises(ValueError, match="could not place"):
        place_objects([("red", "square", 15.0)] * 12, WorldConfig(max_occlusion=0.0), np.random.default_rng(0))
    with pytest.raises(ValueError, match="radius"):
        place_objects([("red", "square", -3.0)], WorldConfig(), np.random.default_rng(0))


def test_prompts_and_phrases():
    assert make_caption(["red circle", "blue star", "green cross"]) == "a red circle, a blue star and a green cross"
    assert make_caption(["red circle", "blue star"], nouns_only=True) == "a circle and a star"
    assert parse_prompt("a red circle and a star") == [("red", "circle"), (None, "star")]
    assert parse_phrase("Blue Heart") == ("blue", "heart")
    with pytest.raises(ValueError, match="allowed colours"):
        parse_prompt("a pink circle")
    with pytest.raises(ValueError, match="allowed colours"):
        parse_phrase("pink circle")
    with pytest.raises(ValueError, match="allowed shapes"):
        parse_phrase("red hexagon")
    rng = np.random.default_rng(0)
    caps = [training_caption(["red circle", "blue star"], WorldConfig(), rng) for _ in range(300)]
    assert "" in caps and any(c.startswith("a photo of") for c in caps)
    for c in caps:
        parse_prompt(c)


def test_tokenizer_roundtrip(tmp_path):
    from transformers import CLIPTokenizer
    tok = build_tokenizer(vocabulary(), save_dir=tmp_path)
    for t in (tok, CLIPTokenizer.from_pretrained(tmp_path)):
        for w in vocabulary():
            ids = t(w, add_special_tokens=False).input_ids
            assert len(ids) == 1, w
            assert t.decode(ids).strip() == w
        cap = "a photo of a red circle, a blue star and a heart"
        assert t.decode(t(cap).input_ids, skip_special_tokens=True).strip().replace(" ,", ",") == cap


def test_detector_recognises_rendered_objects():
    rng = np.random.default_rng(11)
    cfg = WorldConfig(max_occlusion=0.0, radius=(6.0, 14.0))
    hits = tot = 0
    for _ in range(40):
        s = sample_scene(cfg, rng)
        for o in s.objects:
            tot += 1
            hits += present(s.image, [(o.colour, o.shape)])
    assert hits / tot >= 0.9
    every = [ToyObject(c, sh, 32, 32, 12) for c, sh in zip(list(COLOURS) * 2, SHAPES)]
    for o in every:  # each shape alone, every colour
        dets = detect(render([o], 64, rng).image)
        assert [(d.colour, d.shape) for d in dets] == [(o.colour, o.shape)]
    assert detect(render([], 64, rng).image) == []


def test_splits_and_studies(tmp_path):
    a = eval_split("toy-val", 20, cache_dir=tmp_path)
    b = eval_split("toy-val", 20, cache_dir=tmp_path)  # from the cache
    assert [x.caption for x in a] == [x.caption for x in b]
    np.testing.assert_array_equal(a[3].image, b[3].image)
    np.testing.assert_array_equal(a[3].label_map(), b[3].label_map())
    test = eval_split("toy-test", 20, cache_dir=tmp_path)
    assert not np.array_equal(a[0].image, test[0].image)
    for st in STUDIES:
        items = study_set(st, 3, cache_dir=tmp_path)
        assert len(items) == 3 * len(STUDY_LEVELS[st])
        for i in range(3):
            lv = [it for it in items if it.id.startswith(f"{st}-{i:03d}-")]
            areas = [it.scene.class_mask(it.target).sum() for it in lv]
            assert all(it.target in it.caption for it in lv)
            if st == "smaller":
                assert areas == sorted(areas, reverse=True) and areas[-1] < areas[0] / 4
            if st == "occluded":
                knobs = [it.knob for it in lv]
                assert knobs == sorted(knobs) and knobs[-1] > 0.6
            if st == "distractors":
                assert [len(it.scene.objects) for it in lv] == [3 + k for k in STUDY_LEVELS[st]]
                t, first = lv[-1].scene.objects[0], lv[-1].scene.objects[3]  # the nearest copy touches the target
                assert np.hypot(t.cx - first.cx, t.cy - first.cy) < t.r + first.r + 1.5
            if st == "rare":
                assert lv[-1].target.endswith(RARE_SHAPE)
    with pytest.raises(ValueError, match="unknown study"):
        study_set("bigger", 2, cache_dir=tmp_path)
    with pytest.raises(ValueError, match="unknown toy split"):
        eval_split("toy-train", 2, cache_dir=tmp_path)


def test_fresh_splits_are_new_draws_and_pool_into_one_dataset(tmp_path):
    """toy-fresh-<k>: independent of each other and of toy-val / toy-test (no shared scene), a smaller draw is a
    prefix of a larger one; the pool keeps every image under its own id and its threshold split is toy-val."""
    first = {nm: eval_split(nm, 12, cache_dir=tmp_path) for nm in ("toy-val", "toy-test", "toy-fresh-1", "toy-fresh-2")}
    seen = {}
    for nm, items in first.items():
        for it in items:
            key = it.image.tobytes()
            assert key not in seen, (nm, seen.get(key))
            seen[key] = nm
    more = eval_split("toy-fresh-1", 20, cache_dir=tmp_path)
    assert [x.caption for x in more[:12]] == [x.caption for x in first["toy-fresh-1"]]
    np.testing.assert_array_equal(more[11].image, first["toy-fresh-1"][11].image)
    for bad in ("toy-fresh-0", "toy-fresh-x", "toy-fresh-", "toy-fresh--1"):
        with pytest.raises(ValueError, match=r"unknown toy split .*toy-fresh-<k> \(k >= 1\)"):
            eval_split(bad, 2, cache_dir=tmp_path)
    pool = ToyDataset.pooled(["toy-fresh-1", "toy-fresh-2", "toy-fresh-3"], 5, cache_dir=tmp_path)
    assert pool.name == "toy-fresh-1+toy-fresh-2+toy-fresh-3" and len(pool) == 15 and len(set(pool.ids)) == 15
    assert pool.ids[5] == "toy-fresh-2-0000" and pool.load(5).id == "toy-fresh-2-0000"
    np.testing.assert_array_equal(pool.load(7).image, ToyDataset("toy-fresh-2", 5, cache_dir=tmp_path).load(2).image)
    assert heldout_default(pool.name) == "toy-val"
    for names, match in ((["toy-fresh-1"], "two or more"), (["toy-fresh-1", "toy-fresh-1"], "distinct"),
                         (["toy-val", "toy-test"], "other than toy-val"), (["toy-test", "toy-study-rare"], "study sets")):
        with pytest.raises(ValueError, match=match):
            ToyDataset.pooled(names, 2, cache_dir=tmp_path)


def test_distractors_in_target_colour_recolours_only_the_copied_object(tmp_path):
    items = study_set("distractors", 8, cache_dir=tmp_path)
    same = in_target_colour(items)
    by_id = {it.id: it for it in items}
    kept = {it.id.rsplit("-", 1)[0] for it in same}
    dropped = {it.id.rsplit("-", 1)[0] for it in items} - kept
    assert kept and all(by_id[f"{s}-0"].scene.objects[1].shape == by_id[f"{s}-0"].scene.objects[0].shape
                        for s in dropped)
    for it in same:
        orig = by_id[it.id].scene.objects
        objs = it.scene.objects
        assert [(o.shape, o.cx, o.cy, o.r) for o in objs] == [(o.shape, o.cx, o.cy, o.r) for o in orig]
        assert objs[0] == orig[0] and objs[2] == orig[2]
        assert all(o.colour == objs[0].colour for k, o in enumerate(objs) if k == 1 or k >= 3)
        np.testing.assert_array_equal(it.scene.class_mask(it.target), by_id[it.id].scene.class_mask(it.target))
        assert it.target == objs[0].phrase and it.classes[0] == it.target
    for s in kept:  # one caption for all levels of a sample
        assert len({it.caption for it in same if it.id.startswith(s + "-")}) == 1
    with pytest.raises(ValueError, match="distractors"):
        in_target_colour(study_set("smaller", 1, cache_dir=tmp_path))


def test_copies_surround_the_target_nested_and_clear():
    target, a = ToyObject("red", "circle", 20.0, 30.0, 11.0), ToyObject("blue", "star", 50.0, 12.0, 9.0)
    rng = lambda: np.random.default_rng(7)
    six = copies_around(target, a, 6, [a], 64, rng())
    assert copies_around(target, a, 4, [a], 64, rng()) == six[:4]  # the levels of a sample are nested
    placed = [target, a] + six
    for i, o in enumerate(placed):
        assert (o.colour, o.shape) == (("blue", "star") if i else ("red", "circle")) or i == 0
        for q in placed[i + 1:]:
            assert np.hypot(o.cx - q.cx, o.cy - q.cy) >= o.r + q.r + 1.0  # bounding circles 1 px apart
    dist = [np.hypot(o.cx - target.cx, o.cy - target.cy) for o in six]
    # packed around the target: the nearest ring is 11 + 6 + 1 = 18 px out; the image edge and the companion
    # block part of it here, so five copies fit in it and the sixth sits just outside
    assert min(dist) >= 18.0 and sum(d < 19.0 for d in dist) == 5 and max(dist) < 26.0
    with pytest.raises(ValueError, match="could not place 40 copies"):
        copies_around(target, a, 40, [a], 64, rng())
    with pytest.raises(ValueError, match=">= 0"):
        copies_around(target, a, -1, [a], 64, rng())


def test_target_colour_study_dataset(tmp_path):
    """``toy-study-distractors-in-target-colour``: the distractor study recoloured, labelled as its own study."""
    from elbo_lib.datasets import get_dataset
    from elbo_lib.datasets.layouts import TARGET_COLOUR_STUDY
    ds = get_dataset(f"toy-study-{TARGET_COLOUR_STUDY}", cache_dir=tmp_path)
    plain = get_dataset("toy-study-distractors", cache_dir=tmp_path)
    s = ds.load(0)
    assert s.meta["study"] == TARGET_COLOUR_STUDY and plain.load(0).meta["study"] == "distractors"
    target = s.meta["target"]
    colour = target.split()[0]
    assert sum(p.startswith(colour + " ") for p in ds.phrases(s.class_ids)) >= 2  # a copy shares its colour
    assert 0 < len(ds) <= len(plain)
