"""The DiffSegmenter port, step by step against the formulas of its official code (``elbo_lib/baselines/
diffsegmenter.py`` cites them), and end to end against a plain re-computation with the pipeline's own parts
(the scheduler's ``add_noise`` at step 100, the VAE's posterior sample, a UNet call per class)."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from elbo_lib import AlignConfig, Aligner
from elbo_lib.attention import AttentionStore, capture_attention
from elbo_lib.baselines import NotRunnable, get_baseline
from elbo_lib.baselines.base import PAPER_TIMESTEPS
from elbo_lib.baselines.diffsegmenter import (FALLBACK_PREFIX, PREFIX, UPWEIGHT, class_prompt, class_token_positions,
                                              encode_prompts, prompt_prefix, resolution_maps, weighted_sum)
from elbo_lib.models import adapter_for
from elbo_lib.models.random_init import tiny_clip_tokenizer, tiny_sd_pipeline


def _img():
    return (np.random.default_rng(1).random((32, 32, 3)) * 255).astype(np.uint8)


def test_prompt_and_prefix():
    assert prompt_prefix(tiny_clip_tokenizer(words=("photograph",))) == PREFIX == "a photograph of"
    assert prompt_prefix(tiny_clip_tokenizer()) == FALLBACK_PREFIX  # "photograph" in several tokens
    assert class_prompt(PREFIX, "cat", "a cat on a sofa") == "a photograph of cat++ a cat on a sofa"


def test_token_rule():
    """B:515-518: token 4 (the class's first), with token 5 when the fifth word ends in "ing"."""
    assert class_token_positions("a photograph of cat++ sitting on a sofa", PREFIX, 4) == [4, 5]
    assert class_token_positions("a photograph of cat++ on a sofa", PREFIX, 4) == [4]
    assert class_token_positions("a photograph of dining table++ a table", PREFIX, 4) == [4]  # 5th word: "table++"
    assert class_token_positions("a photo of cat++", FALLBACK_PREFIX, 7) == [7]


def test_encode_prompts_weights_the_last_class_word():
    """Compel's "++" (the library itself): the class's last word's tokens become empty + (z - empty) * 1.1 ** 2,
    every other token keeps the prompt's own encoding z."""
    pipe = tiny_sd_pipeline()
    ad = adapter_for(pipe)
    prompts, cond, reads = encode_prompts(ad, ["red circle", "cat"], "a red circle and a cat")
    assert prompts == ["a photo of red circle++ a red circle and a cat", "a photo of cat++ a red circle and a cat"]
    z = ad.encode_text([p.replace("++", "") for p in prompts]).embeds
    empty = ad.encode_text([""]).embeds
    assert reads == [[4], [4]]  # BOS, a, photo, of, then the class's first token
    changed = (cond.embeds != z).any(-1)
    assert changed[0].nonzero().flatten().tolist() == [5] and changed[1].nonzero().flatten().tolist() == [4]
    torch.testing.assert_close(cond.embeds[0, 5], empty[0, 5] + (z[0, 5] - empty[0, 5]) * UPWEIGHT)


def test_resolution_maps_and_weights():
    """Per resolution a plain mean over layers of the read tokens' mean; then bilinear to the latent grid,
    min-max and the weight of the map's side (8, 16, 32, 64 -> 0.3, 0.5, 0.1, 0.1; the toy's 4x4: none)."""
    torch.manual_seed(0)
    store = AttentionStore(latent_hw=(16, 16))
    a, b, c = torch.rand(1, 256, 6), torch.rand(1, 256, 6), torch.rand(1, 64, 6)
    store.cross = {"down_blocks.0.x": a, "up_blocks.1.x": b, "down_blocks.1.x": c, "mid_block.x": torch.rand(1, 16, 6)}
    maps = resolution_maps(store, [2, 3])
    assert sorted(maps) == [16, 64, 256]
    torch.testing.assert_close(maps[256], ((a[..., [2, 3]].mean(-1) + b[..., [2, 3]].mean(-1)) / 2).reshape(1, 16, 16))
    torch.testing.assert_close(maps[64], c[..., [2, 3]].mean(-1).reshape(1, 8, 8))

    def mm(x):
        return (x - x.min()) / (x.max() - x.min())

    def up(x):
        return F.interpolate(x[None], size=(16, 16), mode="bilinear", align_corners=False)[0]
    want = 0.5 * mm(maps[256]) + 0.3 * mm(up(maps[64]))
    torch.testing.assert_close(weighted_sum(maps, (16, 16)), want)
    with pytest.raises(ValueError, match="no cross-attention map has a side"):
        weighted_sum({16: maps[16]}, (16, 16))
    # SD 1.5 at 512 px: 8, 16, 32, 64 on a 64x64 latent -> 0.3, 0.5, 0.1, 0.1
    sd = {n * n: torch.rand(1, n, n) for n in (8, 16, 32, 64)}
    want = sum(w * mm(F.interpolate(sd[n * n][None], size=(64, 64), mode="bilinear", align_corners=False)[0])
               for n, w in ((8, 0.3), (16, 0.5), (32, 0.1), (64, 0.1)))
    torch.testing.assert_close(weighted_sum(sd, (64, 64)), want)


@torch.no_grad()
def test_end_to_end_against_a_plain_recomputation():
    """Step for step with the pipeline's own parts: posterior sample then noise from the seeded generator,
    ``scheduler.add_noise`` at step 100, one UNet call per class with its Compel-weighted prompt, the per-resolution
    weighted sum, one hop of the finest self-attention, bilinear to the image and min-max."""
    pipe = tiny_sd_pipeline()
    b = get_baseline("DiffSegmenter")
    cfg = AlignConfig(**b.measure_overrides)
    assert cfg.attention_steps == PAPER_TIMESTEPS["attention_steps"]
    al = Aligner(pipe, cfg)
    classes, caption, seed = ["red circle", "cat"], "a red circle and a cat", 3
    m = b.measure(al, _img(), classes, caption, seed, cfg)
    got = b.heatmaps(m, cfg)
    assert m.caption.splitlines() == ["a photo of red circle++ a red circle and a cat",
                                      "a photo of cat++ a red circle and a cat"]

    ad = adapter_for(pipe)
    g = torch.Generator().manual_seed(seed)
    x = ad.preprocess(_img())
    z0 = pipe.vae.encode(x).latent_dist.sample(generator=g) * pipe.vae.config.scaling_factor
    eps = torch.randn(z0.shape[1:], generator=g)[None]
    zt = pipe.scheduler.add_noise(z0, eps, torch.tensor([100]))
    _, cond, reads = encode_prompts(ad, classes, caption)
    hw = tuple(z0.shape[-2:])
    want = []
    for i in range(2):
        with capture_attention(pipe.unet, hw) as store:
            pipe.unet(zt, torch.tensor([100]), encoder_hidden_states=cond.embeds[i:i + 1])
        vec = weighted_sum(resolution_maps(store, reads[i]), hw)[0]
        sa = store.self_attention()[0]
        assert sa.shape == (hw[0] * hw[1],) * 2
        refined = (sa @ vec.reshape(-1, 1)).reshape(1, 1, *hw)
        r = F.interpolate(refined, size=(32, 32), mode="bilinear", align_corners=False)[0, 0]
        want.append(((r - r.min()) / (r.max() - r.min())).numpy())
    np.testing.assert_allclose(got, np.stack(want), rtol=0, atol=1e-5)
    # the posterior sample is what is encoded: the mean gives other maps
    m_mean = Aligner(pipe, cfg).encode(_img(), cfg)[0]
    assert not torch.allclose(m_mean, z0)


def test_refuses_a_dit(pipes):
    b = get_baseline("DiffSegmenter")
    assert "has none" in b.not_runnable(adapter_for(pipes["sd3"]))
    with pytest.raises(NotRunnable, match="UNet"):
        b.measure(Aligner(pipes["pixart"], AlignConfig()), _img(), ["cat"], None, 0, AlignConfig())
