"""DiffSegmenter (Wang et al., TIP 2025), "Diffusion model is secretly a training-free open vocabulary
semantic segmenter": a port of its official inference (VCG-team/DiffSegmenter, commit b3a8686;
``B`` = ``open_vocabulary/voc12/ptp_stable_best.py``, the script ELBO-T2IAlign's authors cite, ``U`` =
``ptp_utils.py``; line numbers as ``../shared/parity/diffsegmenter/README.md`` gives them). Its code cannot run
on the toy model (it expands latents to 64x64 and groups maps at 8, 16, 32 and 64 only), so this is a port that
follows its steps, each tested against its formula in ``tests/test_diffsegmenter.py``.

Steps, per image:

1. One prompt per class (B:495-502): ``"a photograph of {class}++"`` followed by a description of the image.
   DiffSegmenter continues the prefix with a conditional BLIP caption; the referring setting gives the caption,
   so it is the continuation here: ``"a photograph of red circle++ a red circle and a blue star"``. The prompts
   are recorded as the measurement's caption, one a line.
2. Text encoding by Compel itself (U:155-163; the project's :class:`~elbo_lib.generation.PromptWeighting`, set
   up as DiffSegmenter sets it up on SD 1.x): ``word++`` weighs the word before it (the class's last word)
   1.1 ** 2, i.e. Compel's ``build_weighted_embedding_tensor`` gives its tokens ``empty + (z - empty) * 1.21``
   (z: the prompt's last hidden state, padded; empty: that of ``""``) and leaves the others at z.
3. One UNet pass per class with its own prompt (B:493-510), at one timestep, t = 100 of 1000 (B:451), on
   z_t = sqrt(abar) z0 + sqrt(1 - abar) eps, z0 the VAE posterior **sample** (B:478-480): the generator seeded with
   the run's seed draws the posterior sample, then eps (DiffSegmenter: the global RNG, unseeded), shared by the
   image's classes. Only the conditional branch's attention is read (U:70-77).
4. Cross-attention per resolution (B:228-253): a plain mean over the heads and layers of each query resolution,
   the mid block included (B:512: ``("up", "mid", "down")``).
5. Token (B:515-518): the class's first token (index 4 after ``a photograph of``); the mean of it and the next one
   when the prompt's fifth space-separated word ends in "ing" (:func:`class_token_positions`).
6. Per resolution (B:519-522): the token's map resized bilinearly (``align_corners=False``) to the latent grid
   unless already there, min-max normalised, times its weight; the weighted maps summed (B:524).
7. Refinement (B:513, B:525, B:528): one hop, the finest resolution's self-attention (mean over its heads and
   layers, rows = queries) times the map. No normalisation after it (B:530-537).
8. Output (B:539-543): bilinear to the image size, per-class min-max; background is a constant threshold
   (E:72-77), as every method here is scored. No CRF (none in its repository).

The port's choices (not settled by the official code, which knows SD 1.5 at 512 px only):

- Resolution weights by the map's side, as its code keys them (``for idx, res in enumerate([8, 16, 32, 64])``
  with ``weight[idx]``, B:514-522): 8 -> 0.3, 16 -> 0.5, 32 -> 0.1, 64 -> 0.1 (:data:`WEIGHTS`); a map of
  another side belongs to no group and gets no weight (the README: the toy's 4x4 mid block "belongs to no
  group"). On the toy UNet (cross-attention at 16, 8 and 4) that is 0.5, 0.3 and 0. The README's alternative,
  by depth (the toy's 16/8/4 as SD's 64/32/8), and a rule by the map's factor against the latent grid (0.1, 0.1,
  0.5) give 0.174 and 0.137 oracle mIoU on the first 60 toy-test images, against 0.318 for this rule
  (``docs/baselines.md``). Where no map has one of the four sides (SD 1.5 at 768 px) it stops with an error.
- The prefix: ``"a photograph of"`` where the tokenizer spells "photograph" as one token (every CLIP vocabulary);
  the toy's vocabulary spells it with 7 character tokens its text encoder never saw, and its five-object prompts
  would exceed its 28 tokens, so there ``"a photo of"`` (the words of its own captions) stands in
  (:func:`prompt_prefix`). The class tokens come from a phrase search, which gives index 4 either way.
- The latent: the project's image encoding (the image processor's bilinear resize to the VAE's sample size;
  DiffSegmenter: ``F.interpolate`` to 512x512), with a posterior sample as DiffSegmenter takes it.
- Flat maps: a per-resolution or final map without range min-maxes to 0 here (DiffSegmenter would divide by 0).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..aligner import Measurement
from ..attention import AttentionStore
from ..calibrate import minmax, refine_with_self_attention, renormalize, upsample
from ..generation import PromptWeighting
from ..models.base import TextCondition
from ..tokens import default_caption, token_positions
from .base import PAPER_TIMESTEPS, Baseline, register

TIMESTEP = 100                 # B:451 times = [100], of the 1000 training steps
PREFIX = "a photograph of"     # B:495
FALLBACK_PREFIX = "a photo of"
UPWEIGHT = 1.1 ** 2            # Compel's "++": attention_plus_base 1.1, twice (what tests check it does)
WEIGHTS = {8: 0.3, 16: 0.5, 32: 0.1, 64: 0.1}  # B:452 weight = [0.3, 0.5, 0.1, 0.1], B:514 res in [8, 16, 32, 64]


def prompt_prefix(tokenizer) -> str:
    """``"a photograph of"``, or ``"a photo of"`` for a tokenizer without "photograph" as one token (the toy's)."""
    one_word = len(tokenizer("photograph", add_special_tokens=False).input_ids) == 1
    return PREFIX if one_word else FALLBACK_PREFIX


def class_prompt(prefix: str, phrase: str, description: str) -> str:
    """DiffSegmenter's Compel prompt: ``f"{prefix} {phrase}++ {description}"`` (B:495-502)."""
    return f"{prefix} {phrase}++ {description}".strip()


def class_token_positions(prompt: str, prefix: str, first: int) -> list[int]:
    """B:515-518: the class's first token; with the next one when the prompt's word after the class's first
    word (the fifth after ``a photograph of``) ends in "ing"."""
    words = prompt.split(" ")
    i = len(prefix.split()) + 1
    return [first, first + 1] if len(words) > i and words[i].endswith("ing") else [first]


def resolution_maps(store: AttentionStore, positions: list[int]) -> dict[int, torch.Tensor]:
    """{query count: (B, h, w)}: per resolution, the mean over its layers (heads were averaged at capture) of the
    mean over ``positions`` of the cross-attention (B:228-253, B:515-518)."""
    groups: dict[int, list[torch.Tensor]] = {}
    for p in store.cross.values():
        groups.setdefault(p.shape[1], []).append(p[..., positions].float().mean(-1))
    out = {}
    for n, maps in groups.items():
        hl, wl = store.layer_hw(n)
        out[n] = torch.stack(maps).mean(0).reshape(-1, hl, wl)
    return out


def weighted_sum(maps: dict[int, torch.Tensor], latent_hw: tuple[int, int]) -> torch.Tensor:
    """(B, h, w): sum over resolutions of WEIGHTS[side] * minmax(bilinear to the latent grid) (B:519-524); maps
    of a side without a weight are left out."""
    total = None
    for m in maps.values():
        side = m.shape[-1]
        if m.shape[-2] != side:
            raise ValueError(f"DiffSegmenter groups square maps by their side; got a {tuple(m.shape[-2:])} map")
        if side not in WEIGHTS:
            continue
        if tuple(m.shape[-2:]) != tuple(latent_hw):
            m = F.interpolate(m[:, None], size=tuple(latent_hw), mode="bilinear", align_corners=False)[:, 0]
        term = minmax(m, dim=(1, 2)) * WEIGHTS[side]
        total = term if total is None else total + term
    if total is None:
        raise ValueError(f"no cross-attention map has a side DiffSegmenter weighs ({sorted(WEIGHTS)}); "
                         f"sides captured: {sorted(m.shape[-1] for m in maps.values())}")
    return total


def heatmaps(m: Measurement, cfg) -> np.ndarray:
    """(N, H, W): the refined maps (``m.cross``, one row) bilinear to the image size, min-maxed per class."""
    if m.cross.shape[0] != 1:
        raise ValueError(f"a DiffSegmenter measurement holds one row of refined maps, got {m.cross.shape[0]}")
    return renormalize(upsample(m.cross[0].float(), m.image_hw)).double().numpy()


@torch.no_grad()
def encode_prompts(ad, classes: list[str], caption: str) -> tuple[list[str], TextCondition, list[list[int]]]:
    """Steps 1, 2 and 5: the prompts, their encodings by Compel (P, L, D) and each class's token(s) to read."""
    prefix = prompt_prefix(ad.tokenizer)
    prompts = [class_prompt(prefix, c, caption) for c in classes]
    reads = []
    for p, c in zip(prompts, classes):
        text = p.replace("++", "")
        first = token_positions(ad.tokenizer, ad.prompt_text(text), ad.prompt_text(c), limit=ad.max_text_tokens)[0]
        reads.append(class_token_positions(p, prefix, first + ad.token_offset))
    return prompts, PromptWeighting(ad.pipe)(prompts), reads


@torch.no_grad()
def measure(aligner, image, classes, caption, seed, cfg) -> Measurement:
    """One pass per class with its Compel-weighted prompt at t = 100; ``cross``: (1, N, h, w) the refined maps at
    the latent grid; the caption field records the prompts."""
    ad = aligner.adapter
    DIFFSEGMENTER.check_runnable(ad)
    caption = caption or default_caption(classes, cfg.caption_template, cfg.caption_item)
    g = torch.Generator().manual_seed(int(seed))
    x0, image_hw = aligner.encode(image, cfg, generator=g)  # posterior sample first, then the noise (B:480, B:482)
    noise = torch.randn(x0.shape[1:], generator=g)[None]
    latent_hw = (x0.shape[-2] // ad.patch_size, x0.shape[-1] // ad.patch_size)
    t = torch.tensor([TIMESTEP / ad.num_train_timesteps], dtype=torch.float64)
    prompts, cond, reads = encode_prompts(ad, classes, caption)
    refined = []
    for i in range(len(classes)):  # one pass per class (B:493-510)
        store = next(aligner.attention_passes(x0, None, t, seed, cfg, noise=noise, text=cond.index(torch.tensor([i]))))
        vec = weighted_sum(resolution_maps(store, reads[i]), latent_hw)
        refined.append(refine_with_self_attention(vec.float(), store.self_attention()[0].float())[0])
    return Measurement(list(classes), "\n".join(prompts), np.zeros(0), torch.zeros(len(classes), 0), t.numpy(),
                       torch.stack(refined)[None].cpu(), None, image_hw)


DIFFSEGMENTER = register(Baseline(
    "DiffSegmenter", heatmaps, measure=measure, method="diffsegmenter", unet_only=True,
    passes=lambda cfg, n_classes: n_classes,  # one pass per class at one timestep
    measure_overrides=dict(self_attention=True, **PAPER_TIMESTEPS),
    notes="port of its official steps: Compel prompt per class, t = 100, weights 0.3/0.5/0.1/0.1 for 8-64"))
