"""Table V on a prompt set file, as the authors run and score it: reading the file, both arms through the
authors' sampler, and their CLIP score (``evaluate_generation.py``) on a tiny random CLIP built here, checked
against their formula computed by hand."""
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from elbo_lib import generation as G
from elbo_lib import generation_study as gs
from elbo_lib.evaluation.generation import average_clip_score, check_clip_prompts, clip_score_table, load_clip
from elbo_lib.models import load_pipeline
from elbo_lib.models.random_init import tiny_clip, tiny_sd_pipeline

PROMPTS = Path(__file__).parent / "fixtures" / "prompts" / "tiny-set.txt"
# the phrases of tiny-set.txt as the authors' extractor gives them (their filter drops "a table")
PHRASES = [["a red circle", "a blue square"], ["a green star", "a yellow heart", "a purple cross"], ["a red cat"],
           ["a blue dog", "a blue dog"]]
ARMS = gs.GENERATION_ARMS


def test_read_prompts(tmp_path):
    texts = gs.read_prompts(PROMPTS)
    assert len(texts) == 4 and texts[2] == "a red cat on a table"
    assert gs.read_prompts(PROMPTS, 2) == texts[:2]
    f = tmp_path / "set.txt"
    f.write_text("  a red cat \r\na blue dog\n\n\n", encoding="utf-8")
    assert gs.read_prompts(f) == ["a red cat", "a blue dog"]  # stripped, as their TextDataset; trailing blanks ignored
    f.write_text("a red cat\n\na blue dog\n")
    with pytest.raises(ValueError, match="line 2 is blank"):
        gs.read_prompts(f)
    f.write_text("\n")
    with pytest.raises(ValueError, match="holds no prompt"):
        gs.read_prompts(f)
    with pytest.raises(ValueError, match="number of prompts"):
        gs.read_prompts(PROMPTS, 0)
    with pytest.raises(FileNotFoundError, match="AnE.txt"):
        gs.read_prompts(tmp_path / "AnE.txt")


def test_average_clip_score_is_a_mean_of_prompt_means():
    # two images of prompt 0, one of prompt 1: (1.5 + 6) / 2, not the mean of the three images
    assert average_clip_score([1.0, 2.0, 6.0], [0, 0, 1]) == pytest.approx(3.75)
    with pytest.raises(ValueError, match="one prompt id per score"):
        average_clip_score([1.0, 2.0], [0])
    tab = clip_score_table({"a": np.array([3.0, 5.0, 1.0]), "b": np.array([1.0, 1.0, 1.0])}, [0, 0, 1], "a", "b",
                           n_boot=50)
    assert tab["CLIP score"].tolist() == pytest.approx([2.5, 1.0, 1.5])
    assert tab.arm.tolist() == ["a", "b", "a - b"] and tab.prompts.tolist() == [2, 2, 2]


def test_clip_prompts_longer_than_clip_reads_are_refused():
    _, proc = tiny_clip()
    check_clip_prompts(proc, ["a red cat"])
    with pytest.raises(ValueError, match="prompt 1 has .* CLIP tokens, more than the 77"):
        check_clip_prompts(proc, ["a red cat", "a red cat " * 40])


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "tiny-sd"
    tiny_sd_pipeline().save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def prompt_set_run(tiny_model, tmp_path_factory):
    texts = gs.read_prompts(PROMPTS)
    return gs.run_prompt_set(tiny_model, texts, PHRASES, seeds=[4307, 4308], steps=3, batch_size=3, device="cpu",
                             cache_dir=tmp_path_factory.mktemp("cache"))


def test_prompt_set_run(prompt_set_run, tiny_model):
    run = prompt_set_run
    assert run.prompt_ids.tolist() == [0, 0, 1, 1, 2, 2, 3, 3] and run.seeds == [4307, 4308]
    for arm in ARMS:
        assert run.images[arm].shape == (8, 32, 32, 3) and run.images[arm].dtype == np.uint8
    # a repeated phrase cannot be marked twice: weighted once, the repeat listed
    assert run.phrases[3] == ["a blue dog"] and run.dropped == [[], [], [], ["a blue dog"]]
    w = run.weights
    assert w.shape == (8, 3, 3)
    assert np.isfinite(w[0, :, :2]).all() and np.isnan(w[0, :, 2]).all() and np.isfinite(w[2]).all()
    assert np.isnan(w[4:]).all()  # one phrase: the plain prompt
    base, rew = run.images[ARMS[0]], run.images[ARMS[1]]
    assert np.array_equal(base[4:], rew[4:]) and not np.array_equal(base[:4], rew[:4])
    # the run is generate() on each (prompt, seed) with the authors' grid and the CPU draw of the seed
    pipe = load_pipeline(tiny_model, device="cpu")
    g = G.generate(pipe, [run.prompts[1]], [run.phrases[1]], [4308], steps=3, grid="authors", progress=False)
    assert np.array_equal(g.images[0], rew[3]) and np.array_equal(g.weights[0], w[3, :, :3])


def test_clip_score_is_the_authors_formula(prompt_set_run, tmp_path):
    run = prompt_set_run
    model, proc = tiny_clip()
    model.save_pretrained(tmp_path / "clip")
    proc.save_pretrained(tmp_path / "clip")
    loaded, lproc = load_clip(str(tmp_path / "clip"))  # by path, as the notebook's clip_model
    per_image, tab = gs.prompt_set_clip(run, loaded, lproc, n_boot=50, batch_size=3)
    assert per_image.prompt.tolist() == run.prompt_ids.tolist() and per_image.seed.tolist() == [4307, 4308] * 4
    hand_avg = {}
    with torch.no_grad():
        for arm in ARMS:
            by_prompt, per = defaultdict(list), []
            for k, img in enumerate(run.images[arm]):  # evaluate_generation.py: one image, its prompt, per call
                inp = proc(text=run.prompts[run.prompt_ids[k]], images=[Image.fromarray(img)], return_tensors="pt",
                           padding=True)
                im = model.visual_projection(model.vision_model(pixel_values=inp["pixel_values"]).pooler_output)
                tx = model.text_projection(model.text_model(input_ids=inp["input_ids"],
                                                            attention_mask=inp["attention_mask"]).pooler_output)
                score = model.logit_scale.exp() * torch.nn.functional.cosine_similarity(im, tx)
                per.append(score.item())
                by_prompt[int(run.prompt_ids[k])].append(score.item())
            np.testing.assert_allclose(per_image[arm].to_numpy(), per, rtol=1e-4, atol=1e-4)
            hand_avg[arm] = float(np.mean([np.mean(v) for v in by_prompt.values()]))
            got = tab.loc[tab.arm == arm, "CLIP score"].item()
            assert got == pytest.approx(hand_avg[arm], rel=1e-5, abs=1e-5)
    diff = tab.loc[tab.arm == f"{ARMS[1]} - {ARMS[0]}", "CLIP score"].item()
    assert diff == pytest.approx(hand_avg[ARMS[1]] - hand_avg[ARMS[0]], rel=1e-5, abs=1e-5)
    assert tab.images.tolist() == [8, 8, 8] and tab.prompts.tolist() == [4, 4, 4]


def test_prompt_set_bad_inputs(tiny_model, tmp_path):
    with pytest.raises(ValueError, match="one phrase list per prompt"):
        gs.run_prompt_set(tiny_model, ["a red cat"], [], steps=2, device="cpu", cache_dir=tmp_path)
