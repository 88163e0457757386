"""Fig. 6's prompt-to-prompt editing: the replacement processors against diffusers' own attention, the
replacement's invariants, the arms against plain generation, and bad inputs."""
import numpy as np
import pytest
import torch

from elbo_lib import editing as E
from elbo_lib import generation as G
from elbo_lib.attention import UNetAttentionProcessor
from elbo_lib.models import adapter_for

EDIT = E.Edit("a red circle and a blue square", "a green circle and a blue square", ("red circle", "blue square"), 3)


def test_processor_without_replacement_equals_diffusers(pipes):
    pipe = pipes["sd1"]
    unet = pipe.unet
    g = torch.Generator().manual_seed(0)
    z, e = torch.randn(3, 4, 16, 16, generator=g), torch.randn(3, 77, 32, generator=g)
    with torch.no_grad():
        ref = unet(z, 500, encoder_hidden_states=e).sample
        original = dict(unet.attn_processors)
        try:
            unet.set_attn_processor({n: UNetAttentionProcessor() for n in original})
            plain = unet(z, 500, encoder_hidden_states=e).sample
            state = E._ReplaceState(n_steps=10, n_edits=1, arms=("p2p",), columns=[[[1]]], heatmaps={},
                                    latent_hw=(16, 16), step=9)  # past both replacement windows
            unet.set_attn_processor({n: E.ReplaceProcessor(state, n) for n in original})
            idle = unet(z, 500, encoder_hidden_states=e).sample
        finally:
            unet.set_attn_processor(original)
    torch.testing.assert_close(plain, ref, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(idle, ref, atol=1e-5, rtol=1e-4)


def test_p2p_replacement_copies_the_source_attention(pipes):
    """Inside the windows, the conditional target rows attend exactly as the source rows."""
    pipe = pipes["sd1"]
    unet = pipe.unet
    seen = {}

    class Spy(E.ReplaceProcessor):
        def on_probs(self, probs, is_cross, attn, query):
            out = super().on_probs(probs, is_cross, attn, query)
            seen.setdefault(self.name, out)
            return out

    g = torch.Generator().manual_seed(1)
    z, e = torch.randn(3, 4, 16, 16, generator=g), torch.randn(3, 77, 32, generator=g)
    state = E._ReplaceState(n_steps=10, n_edits=1, arms=("p2p",), columns=[[[1]]], heatmaps={}, latent_hw=(16, 16))
    original = dict(unet.attn_processors)
    try:
        unet.set_attn_processor({n: Spy(state, n) for n in original})
        with torch.no_grad():
            unet(z, 500, encoder_hidden_states=e)
    finally:
        unet.set_attn_processor(original)
    for probs in seen.values():  # rows: source, target conditional, target unconditional
        torch.testing.assert_close(probs[1], probs[0])
        assert not torch.allclose(probs[2], probs[0])


def test_scaled_heatmaps_invariants():
    g = torch.Generator().manual_seed(2)
    src = torch.rand(1, 16, 6, generator=g).softmax(-1)  # (heads, Q, K)
    col = src[0, :, 2]
    own = ((col - col.min()) / (col.max() - col.min()))[None]  # the column's own min-max map
    torch.testing.assert_close(E.scaled_heatmaps(src, own, [[2]]), src)  # range scaling of itself: identity
    other = torch.rand(1, 16, generator=g)
    for scaling in E.SCALINGS:
        out = E.scaled_heatmaps(src, other, [[2, 3]], scaling)
        torch.testing.assert_close(out.sum(-1), torch.ones(1, 16))
        assert torch.allclose(out[..., :2] / out[..., :2].sum(-1, keepdim=True),
                              src[..., :2] / src[..., :2].sum(-1, keepdim=True))  # other tokens keep their ratios
    mass = E.scaled_heatmaps(src, other, [[2]], "mass")
    pre = other[0] * src[0, :, 2].sum() / other[0].sum()
    torch.testing.assert_close(mass[0, :, 2], pre / (1 - src[0, :, 2] + pre))
    with pytest.raises(ValueError, match="scaling"):
        E.scaled_heatmaps(src, other, [[2]], "max")


def test_without_replacement_an_edit_is_the_target_generation(pipes):
    pipe = pipes["sd1"]
    r = E.edit(pipe, [EDIT], arms=("p2p",), steps=3, guidance=5.0, grid="scheduler", cross_replace=0.0,
               self_replace=0.0, progress=False)
    tgt = G.generate(pipe, [EDIT.target], [[]], [EDIT.seed], reweight=False, steps=3, guidance=5.0, grid="scheduler",
                     progress=False)
    src = G.generate(pipe, [EDIT.source], [[]], [EDIT.seed], reweight=False, steps=3, guidance=5.0, grid="scheduler",
                     progress=False)
    assert np.abs(r.edited["p2p"][0].astype(int) - tgt.images[0].astype(int)).max() <= 1
    assert np.abs(r.sources[0].astype(int) - src.images[0].astype(int)).max() <= 1


def test_edit_arms_run_end_to_end(pipes):
    pipe = pipes["sd1"]
    edits = [EDIT, E.Edit("a yellow star, a red cross and a blue heart", "a yellow star, a red square and a blue heart",
                          ("yellow star", "red cross", "blue heart"), 4)]
    src = E.generate_sources(pipe, edits, steps=3, guidance=5.0, grid="scheduler", progress=False)
    assert src.trajectory.shape == (3, 2, 4, 16, 16)
    r = E.edit(pipe, edits, steps=3, guidance=5.0, grid="scheduler", sources=src, batch_size=2, progress=False)
    assert set(r.edited) == set(E.ARMS) and all(v.shape == (2, 32, 32, 3) for v in r.edited.values())
    assert [h.shape for h in r.heatmaps["calibrated"]] == [(2, 32, 32), (3, 32, 32)]
    assert not np.array_equal(r.edited["p2p"], r.edited["calibrated"])
    with pytest.raises(ValueError, match=r"\(steps, edits\)"):
        E.edit(pipe, edits[:1], steps=3, grid="scheduler", sources=src, progress=False)


def test_edit_bad_inputs(pipes):
    pipe = pipes["sd1"]
    tok = adapter_for(pipe).tokenizer
    with pytest.raises(ValueError, match="equal token counts"):
        E.check_edit(tok, E.Edit("a red circle", "a red circle and a star", ("red circle",)))
    with pytest.raises(ValueError, match="the same"):
        E.check_edit(tok, E.Edit("a red circle", "a red circle", ("red circle",)))
    with pytest.raises(ValueError, match="does not appear"):
        E.check_edit(tok, E.Edit("a red circle", "a blue circle", ("green star",)))
    with pytest.raises(ValueError, match="unknown editing arm"):
        E.edit(pipe, [EDIT], arms=("masactrl",), steps=2, progress=False)
    with pytest.raises(ValueError, match="fraction"):
        E.edit(pipe, [EDIT], cross_replace=1.5, steps=2, progress=False)
    with pytest.raises(ValueError, match="UNet pipelines"):
        E.edit(pipes["sd3"], [EDIT], steps=2, progress=False)
