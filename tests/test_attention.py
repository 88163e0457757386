import math

import pytest
import torch

from elbo_lib.attention import (AttentionStore, CaptureProcessor, JointCaptureProcessor, aggregate_cross,
                                capture_attention, default_self_weight, gaussian_layer_weights, layer_level,
                                level_weight, ordered_levels, two_hop_self_attention)
from elbo_lib.models import adapter_for


def _inputs(ad, seed=0, batch=2):
    g = torch.Generator().manual_seed(seed)
    h, w = ad.resolution
    z = torch.randn((batch, ad.pipe.vae.config.latent_channels, h // ad.pipe.vae_scale_factor,
                     w // ad.pipe.vae_scale_factor), generator=g)
    t = torch.tensor([0.05, 0.5][:batch], dtype=torch.float64)
    cond = ad.encode_text(["a photo of a red circle and a cat"] * batch)
    return z, t, cond


def test_capture_matches_default_processor(family_pipe):
    name, pipe = family_pipe
    ad = adapter_for(pipe)
    z, t, cond = _inputs(ad)
    with torch.no_grad():
        ref = ad.predict(z, t, cond)
        hw = (z.shape[-2] // ad.patch_size, z.shape[-1] // ad.patch_size)
        with capture_attention(ad.denoiser, hw, joint=ad.joint_attention) as store:
            got = ad.predict(z, t, cond)
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-5)
    assert store.cross, name
    for p in store.cross.values():  # probabilities over the text tokens (joint: a slice, sums to <= 1)
        s = p.sum(-1)
        assert (s <= 1 + 1e-4).all()
        if not ad.joint_attention:
            torch.testing.assert_close(s, torch.ones_like(s), rtol=1e-4, atol=1e-4)
    sa = store.self_attention()
    assert sa.shape[-1] == sa.shape[-2]
    torch.testing.assert_close(sa.sum(-1), torch.ones_like(sa.sum(-1)), rtol=1e-4, atol=1e-4) if not ad.joint_attention else None


def test_processors_restored_and_only_selected_replaced(pipes):
    ad = adapter_for(pipes["sd1"])
    before = dict(ad.denoiser.attn_processors)
    with capture_attention(ad.denoiser, (16, 16), self_attn=False,
                           layer_filter=lambda n: n.startswith("down_blocks.0")) as _:
        inside = ad.denoiser.attn_processors
        replaced = {n for n, p in inside.items() if isinstance(p, CaptureProcessor)}
        assert replaced and all(n.startswith("down_blocks.0") and ".attn2." in n for n in replaced)
        assert all(inside[n] is before[n] for n in inside if n not in replaced)
    after = ad.denoiser.attn_processors
    assert all(after[n] is before[n] for n in before)


def test_processors_restored_after_exception(pipes):
    ad = adapter_for(pipes["sd3"])
    before = dict(ad.denoiser.attn_processors)
    try:
        with capture_attention(ad.denoiser, (16, 16), joint=True):
            assert any(isinstance(p, JointCaptureProcessor) for p in ad.denoiser.attn_processors.values())
            raise RuntimeError("boom")
    except RuntimeError:
        pass
    assert all(ad.denoiser.attn_processors[n] is p for n, p in before.items())


def test_aggregate_weights_and_resize():
    store = AttentionStore(latent_hw=(8, 8))
    store.cross["down_blocks.0.attentions.0.transformer_blocks.0.attn2.processor"] = torch.ones(1, 64, 3)
    store.cross["mid_block.attentions.0.transformer_blocks.0.attn2.processor"] = torch.zeros(1, 16, 3)
    uni = aggregate_cross(store, "uniform")
    assert uni.shape == (1, 3, 8, 8)
    torch.testing.assert_close(uni, torch.full_like(uni, 0.5))
    only_mid = aggregate_cross(store, {"mid": 1.0})
    torch.testing.assert_close(only_mid, torch.zeros_like(only_mid))
    levels = aggregate_cross(store, "levels")  # two levels: down0 next to mid -> 10, mid -> 15
    torch.testing.assert_close(levels, torch.full_like(levels, 10 / 25))


def test_levels_weights():
    names = ["down_blocks.0.a", "down_blocks.1.a", "down_blocks.2.a", "mid_block.a", "up_blocks.1.a", "up_blocks.2.a",
             "up_blocks.3.a"]
    levels = ordered_levels(names)
    assert levels == ["down0", "down1", "down2", "mid", "up1", "up2", "up3"]
    assert [level_weight(lv, levels) for lv in levels] == [1, 1, 10, 15, 10, 1, 1]
    assert layer_level("transformer_blocks.3.attn.processor") == "block3"


def test_layer_hw_non_square_and_bad():
    store = AttentionStore(latent_hw=(8, 16))
    assert store.layer_hw(128) == (8, 16) and store.layer_hw(32) == (4, 8)
    import pytest
    with pytest.raises(ValueError, match="cannot map"):
        store.layer_hw(33)
    with pytest.raises(ValueError, match="layer weights"):
        store.cross["x"] = torch.ones(1, 128, 2)
        aggregate_cross(store, "bogus")


def test_gaussian_weights_centre_and_sum():
    """SD 1.5: 6 down, 1 mid, 9 up cross-attention layers -> centred on the mid layer (index 6); MMDiT ->
    the middle layer; the weights sum to the layer count."""
    sd15 = [f"down_blocks.{i // 2}.x" for i in range(6)] + ["mid_block.x"] + [f"up_blocks.{1 + i // 3}.x" for i in range(9)]
    w = gaussian_layer_weights(sd15)
    assert len(w) == 16 and abs(sum(w) - 16) < 1e-9
    assert max(range(16), key=w.__getitem__) == 6 and abs(w[5] - w[7]) < 1e-12
    ratio = math.exp(-1 / 18)  # one layer from the centre, std 3
    assert abs(w[7] / w[6] - ratio) < 1e-12
    mmdit = gaussian_layer_weights([f"transformer_blocks.{i}.attn" for i in range(4)])
    assert abs(mmdit[1] - mmdit[2]) < 1e-12 and abs(mmdit[0] - mmdit[3]) < 1e-12 and mmdit[1] > mmdit[0]
    with pytest.raises(ValueError, match="standard deviation"):
        gaussian_layer_weights(sd15, 0)


def test_two_hop_self_attention_matches_a_naive_loop():
    """Per-segment sums -> (upsample, weight, average) per hop -> avg_B @ avg_A, against the rule written out
    layer by layer (keys resized bilinearly, queries repeated)."""
    g = torch.Generator().manual_seed(0)
    layers = [(4, 4), (2, 2), (2, 2), (4, 4)]  # forward order: segments 0 (4x4), 1 (2x2, two layers), 2 (4x4)
    maps = [torch.rand(h * w, h * w, generator=g, dtype=torch.float64).softmax(-1) for h, w in layers]
    store = AttentionStore(latent_hw=(4, 4), segments=True)
    for i, a in enumerate(maps):
        store.add_self(a[None], f"layer{i}")
    assert store.segment_of == {"layer0": 0, "layer1": 1, "layer2": 1, "layer3": 2}
    sums = {k: v[0] for k, v in store.segment_sums.items()}
    hw = {k: store.layer_hw(v.shape[-1]) for k, v in sums.items()}
    got = two_hop_self_attention(sums, store.segment_counts, hw, (4, 4))

    def up(a, r):
        a = torch.nn.functional.interpolate(a.reshape(r, r, r, r), size=(4, 4), mode="bilinear", align_corners=False)
        return a.repeat_interleave(4 // r, 0).repeat_interleave(4 // r, 1).reshape(16, 16)
    ups = [up(a, h) for a, (h, _) in zip(maps, layers)]
    seg = [0, 1, 1, 2]
    hop_a = sum(u for u, s in zip(ups, seg) if s in (0, 2)) / 2
    hop_b = sum(u for u, s in zip(ups, seg) if s == 2) / 1
    torch.testing.assert_close(got, hop_b @ hop_a)
    assert default_self_weight(7) == ((1, 0, 0, 0, 0, 0, 1), (0, 0, 0, 0, 0, 0, 1))
    with pytest.raises(ValueError, match="segment weights"):
        two_hop_self_attention(sums, store.segment_counts, hw, (4, 4), self_weight=[[1, 1]])
    with pytest.raises(ValueError, match="weight 0"):
        two_hop_self_attention(sums, store.segment_counts, hw, (4, 4), self_weight=[[1, 0, 0], [0, 0, 0]])
