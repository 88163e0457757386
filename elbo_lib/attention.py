"""Attention capture through diffusers attention processors (Eq. 3: A = softmax(Q K^T / sqrt(d))).

``capture_attention(denoiser, latent_hw)`` installs :class:`CaptureProcessor` (UNet and PixArt
cross/self attention), :class:`JointCaptureProcessor` (SD3 joint attention) or
:class:`FluxCaptureProcessor` (FLUX double- and single-stream attention) on the layers asked for
via ``set_attn_processor``, and restores the original processors on exit. Layers that are not
captured keep their original (SDPA) processors. Maps are averaged over heads as they are made.

Passes that capture nothing (the ELBO's N x T denoiser calls) need no probabilities:
``uncaptured_attention(denoiser, "sdpa")`` runs them on PyTorch's fused ``scaled_dot_product_attention``
(diffusers' ``AttnProcessor2_0`` family, the default of every pipeline this torch loads; a layer left on the
classic ``AttnProcessor`` is switched for the pass), ``"explicit"`` on the capture processors' own computation
(probabilities materialised, nothing kept): the same losses to fp32 tolerance, slower, the reference.

Memory: per layer the captured cross-attention is (B, Nq, T') with T' the text tokens kept
(``cross_tokens``: the aligner keeps only up to the last class token), and the self-attention
of all layers of one resolution is summed in place into one (B, Nq, Nq) tensor, so a DiT (one
resolution) holds one such tensor however many layers it has. The FLUX processor also forms the
attention probabilities one head at a time, so its transient memory is (B, S, S) for S image +
text tokens rather than (B, heads, S, S).
"""
from __future__ import annotations

import contextlib
import math
import re
from dataclasses import dataclass, field
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import AttnAddedKVProcessor2_0, AttnProcessor2_0
from diffusers.models.embeddings import apply_rotary_emb


def attention_probs(query: torch.Tensor, key: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Eq. 3, A = softmax(Q K^T / sqrt(d)), in float32: (B, H, Nq, Nk)."""
    scale = 1.0 / math.sqrt(query.shape[-1])
    scores = torch.matmul(query.float(), key.float().transpose(-1, -2)) * scale
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask.float()
    return scores.softmax(dim=-1)


def _explicit_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                        mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 3 with the probabilities materialised: returns (out (B,H,Nq,d), probs (B,H,Nq,Nk))."""
    probs = attention_probs(query, key, mask)
    return torch.matmul(probs.to(value.dtype), value), probs


def head_mean_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                        mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 3 one head at a time: (out (B, H, Nq, d), probabilities averaged over heads (B, Nq, Nk)), with at
    most one head's (B, Nq, Nk) probabilities alive besides the running sum."""
    outs, total = [], None
    for h in range(query.shape[1]):
        m = mask if mask is None or mask.ndim < 4 or mask.shape[1] == 1 else mask[:, h:h + 1]
        out_h, probs_h = _explicit_attention(query[:, h:h + 1], key[:, h:h + 1], value[:, h:h + 1], m)
        outs.append(out_h)
        total = probs_h[:, 0] if total is None else total.add_(probs_h[:, 0])
    return torch.cat(outs, 1), total.div_(query.shape[1])


def grid_hw(latent_hw: tuple[int, int], n_tokens: int) -> tuple[int, int]:
    """Spatial size of a layer with n_tokens queries (same aspect ratio as the latent grid)."""
    h, w = latent_hw
    f = math.sqrt(h * w / n_tokens)
    hl, wl = round(h / f), round(w / f)
    if hl * wl != n_tokens:
        raise ValueError(f"cannot map {n_tokens} attention queries onto a {h}x{w} latent grid")
    return hl, wl


@dataclass
class AttentionStore:
    """What one forward pass captured.

    cross[name]: (B, Nq, T) cross-attention probabilities averaged over heads, per layer; with ``per_head``
    instead head_sums[name]: (heads, Nq, T) the probabilities of each head summed over the batch rows (DAAM sums
    every (layer, head) map over timesteps before anything else).
    self_sums[Nq]: (B, Nq, Nq) sum over the self-attention layers with Nq queries; only the finest
    resolution seen so far is kept (the one used for refinement).
    """

    latent_hw: tuple[int, int]
    cross: dict[str, torch.Tensor] = field(default_factory=dict)
    self_sums: dict[int, torch.Tensor] = field(default_factory=dict)
    self_counts: dict[int, int] = field(default_factory=dict)
    all_resolutions: bool = False  # keep self-attention of every resolution (DiffSeg), not just the finest
    segments: bool = False         # keep self-attention per resolution segment (the authors' two-hop rule)
    keep_queries: bool = False     # keep cross-attention queries and modules (OVAM)
    per_head: bool = False         # keep cross-attention per head, summed over the batch (DAAM), not head-averaged
    cross_tokens: int | None = None  # keep only the first cross_tokens text tokens' columns (None: all)
    queries: dict[str, torch.Tensor] = field(default_factory=dict)
    head_sums: dict[str, torch.Tensor] = field(default_factory=dict)
    modules: dict[str, object] = field(default_factory=dict)
    segment_of: dict[str, int] = field(default_factory=dict)
    segment_sums: dict[int, torch.Tensor] = field(default_factory=dict)
    segment_counts: dict[int, int] = field(default_factory=dict)

    @property
    def batch(self) -> int:
        """The batch size of the captured pass(es) (every captured map has it as its first axis)."""
        if self.head_sums:
            raise ValueError("per-head cross-attention is summed over the batch: it has no batch axis")
        for maps in (self.cross, self.segment_sums, self.self_sums):
            if maps:
                return next(iter(maps.values())).shape[0]
        raise ValueError("nothing was captured")

    def add_cross(self, name: str, probs_bqt: torch.Tensor) -> None:
        """Keep a layer's (B, Nq, T) head-averaged cross-attention (its first ``cross_tokens`` columns)."""
        if self.cross_tokens is not None:
            probs_bqt = probs_bqt[..., :self.cross_tokens]
        # a slice is copied, so that the layer's full attention matrix it views can be freed
        self.cross[name] = probs_bqt if probs_bqt._base is None else probs_bqt.clone()

    def add_cross_heads(self, name: str, probs_bhqt: torch.Tensor) -> None:
        """Add a layer's (B, heads, Nq, T) cross-attention, summed over the batch rows, to ``head_sums[name]``
        (its first ``cross_tokens`` columns)."""
        if self.cross_tokens is not None:
            probs_bhqt = probs_bhqt[..., :self.cross_tokens]
        total = probs_bhqt.float().sum(0)
        if name in self.head_sums:
            self.head_sums[name].add_(total)
        else:
            self.head_sums[name] = total

    @staticmethod
    def _accumulate(sums: dict, key, probs: torch.Tensor) -> None:
        """sums[key] += probs in place (the first map is copied: it may be a view the caller still uses)."""
        if key in sums:
            sums[key].add_(probs)
        else:
            sums[key] = probs.clone()

    def add_self(self, probs_bqk: torch.Tensor, name: str = "") -> None:
        n = probs_bqk.shape[-1]
        if self.segments:
            self._add_segment(probs_bqk, name)
            return
        if self.all_resolutions:
            self._accumulate(self.self_sums, n, probs_bqk)
            self.self_counts[n] = self.self_counts.get(n, 0) + 1
            return
        if self.self_sums and n < max(self.self_sums):
            return
        if self.self_sums and n > max(self.self_sums):
            self.self_sums.clear(); self.self_counts.clear()
        self._accumulate(self.self_sums, n, probs_bqk)
        self.self_counts[n] = self.self_counts.get(n, 0) + 1

    def _add_segment(self, probs_bqk: torch.Tensor, name: str) -> None:
        """Sum a layer's map into its resolution segment: layers in forward order, a new segment
        each time the query count changes (SD 1.5: 64-32-16-8-16-32-64 -> segments 0..6)."""
        if name not in self.segment_of:
            last = next(reversed(self.segment_of), None)
            if last is None:
                seg = 0
            else:
                seg = self.segment_of[last]
                if self.segment_sums[seg].shape[-1] != probs_bqk.shape[-1]:
                    seg += 1
            self.segment_of[name] = seg
        seg = self.segment_of[name]
        self._accumulate(self.segment_sums, seg, probs_bqk)
        self.segment_counts[seg] = self.segment_counts.get(seg, 0) + 1

    def layer_hw(self, n_tokens: int) -> tuple[int, int]:
        return grid_hw(self.latent_hw, n_tokens)

    def self_attention(self) -> torch.Tensor:
        """(B, Nq, Nq) self-attention averaged over the captured layers of the finest resolution."""
        if not self.self_sums:
            raise ValueError("no self-attention was captured")
        n = max(self.self_sums)
        return self.self_sums[n] / self.self_counts[n]


class UNetAttentionProcessor:
    """Same computation as diffusers' AttnProcessor2_0, with the probabilities materialised. Subclasses see
    (and may replace) them in :meth:`on_probs` before they weight the values."""

    def on_probs(self, probs: torch.Tensor, is_cross: bool, attn, query: torch.Tensor) -> torch.Tensor:
        """probs (B, heads, Nq, Nk) -> the probabilities the layer uses."""
        return probs

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, *args, **kwargs):
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch_size, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch_size, channel, height * width).transpose(1, 2)
        is_cross = encoder_hidden_states is not None
        batch_size, sequence_length, _ = hidden_states.shape if encoder_hidden_states is None else encoder_hidden_states.shape
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, sequence_length, batch_size)
            attention_mask = attention_mask.view(batch_size, attn.heads, -1, attention_mask.shape[-1])
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        query = attn.to_q(hidden_states)
        if encoder_hidden_states is None:
            encoder_hidden_states = hidden_states
        elif attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        key = attn.to_k(encoder_hidden_states)
        value = attn.to_v(encoder_hidden_states)
        head_dim = key.shape[-1] // attn.heads
        query = query.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        key = key.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        value = value.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        probs = self.on_probs(attention_probs(query, key, attention_mask), is_cross, attn, query)
        out = torch.matmul(probs.to(value.dtype), value)
        hidden_states = out.transpose(1, 2).reshape(batch_size, -1, attn.heads * head_dim).to(query.dtype)
        hidden_states = attn.to_out[0](hidden_states)
        hidden_states = attn.to_out[1](hidden_states)
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch_size, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


class CaptureProcessor(UNetAttentionProcessor):
    """Records cross-attention (encoder_hidden_states given) when ``cross`` is set, and self-attention when
    ``self_attn`` is set, averaged over heads (cross-attention per head with the store's ``per_head``)."""

    def __init__(self, store: AttentionStore, name: str, cross: bool, self_attn: bool):
        self.store, self.name, self.cross, self.self_attn = store, name, cross, self_attn

    def on_probs(self, probs, is_cross, attn, query):
        if is_cross and self.cross:
            if self.store.per_head:
                self.store.add_cross_heads(self.name, probs)
            else:
                self.store.add_cross(self.name, probs.mean(dim=1))
            if self.store.keep_queries:
                self.store.queries[self.name], self.store.modules[self.name] = query.detach(), attn
        elif not is_cross and self.self_attn:
            self.store.add_self(probs.mean(dim=1), self.name)
        return probs


class JointCaptureProcessor:
    """Same computation as diffusers' JointAttnProcessor2_0 (SD3 MMDiT), keeping the image->text
    block of the joint attention matrix as cross-attention and the image->image block as
    self-attention (both as sliced from the joint softmax, not renormalised)."""

    def __init__(self, store: AttentionStore, name: str, cross: bool, self_attn: bool):
        self.store, self.name, self.cross, self.self_attn = store, name, cross, self_attn

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, *args, **kwargs):
        residual = hidden_states
        batch_size = hidden_states.shape[0]
        query, key, value = attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)
        head_dim = key.shape[-1] // attn.heads
        split = lambda x: x.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)  # noqa: E731
        query, key, value = split(query), split(key), split(value)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        n_img = query.shape[2]
        if encoder_hidden_states is not None:
            cq = split(attn.add_q_proj(encoder_hidden_states))
            ck = split(attn.add_k_proj(encoder_hidden_states))
            cv = split(attn.add_v_proj(encoder_hidden_states))
            if attn.norm_added_q is not None:
                cq = attn.norm_added_q(cq)
            if attn.norm_added_k is not None:
                ck = attn.norm_added_k(ck)
            query, key, value = torch.cat([query, cq], 2), torch.cat([key, ck], 2), torch.cat([value, cv], 2)
        out, probs = _explicit_attention(query, key, value)
        if encoder_hidden_states is not None and self.cross:
            self.store.add_cross(self.name, probs[:, :, :n_img, n_img:].mean(dim=1))
        if self.self_attn:
            self.store.add_self(probs[:, :, :n_img, :n_img].mean(dim=1), self.name)
        hidden_states = out.transpose(1, 2).reshape(batch_size, -1, attn.heads * head_dim).to(query.dtype)
        if encoder_hidden_states is not None:
            hidden_states, encoder_hidden_states = hidden_states[:, : residual.shape[1]], hidden_states[:, residual.shape[1]:]
            if not attn.context_pre_only:
                encoder_hidden_states = attn.to_add_out(encoder_hidden_states)
        hidden_states = attn.to_out[0](hidden_states)
        hidden_states = attn.to_out[1](hidden_states)
        if encoder_hidden_states is not None:
            return hidden_states, encoder_hidden_states
        return hidden_states


class FluxCaptureProcessor:
    """Same computation as diffusers' FluxAttnProcessor (FLUX.1), keeping the image->text block of the joint
    attention matrix as cross-attention and the image->image block as self-attention (sliced from the
    joint softmax, not renormalised), averaged over heads one head at a time (:func:`head_mean_attention`).

    Double-stream blocks (``encoder_hidden_states`` given) project text and image separately and attend
    over [text, image]; single-stream blocks get the one [text, image] sequence. Either way the image
    tokens are the last ``h * w`` of the ``latent_hw`` token grid, the text tokens the ones before."""

    def __init__(self, store: AttentionStore, name: str, cross: bool, self_attn: bool):
        self.store, self.name, self.cross, self.self_attn = store, name, cross, self_attn

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, image_rotary_emb=None):
        if getattr(attn, "fused_projections", False):
            raise ValueError("attention capture needs unfused projections; call transformer.unfuse_qkv_projections()")
        heads = lambda x: x.unflatten(-1, (-1, attn.head_dim))  # noqa: E731  (B, S, H, d)
        query, key = heads(attn.to_q(hidden_states)), heads(attn.to_k(hidden_states))
        value = heads(attn.to_v(hidden_states))
        query, key = attn.norm_q(query), attn.norm_k(key)
        if attn.added_kv_proj_dim is not None:
            cq = attn.norm_added_q(heads(attn.add_q_proj(encoder_hidden_states)))
            ck = attn.norm_added_k(heads(attn.add_k_proj(encoder_hidden_states)))
            cv = heads(attn.add_v_proj(encoder_hidden_states))
            query, key, value = torch.cat([cq, query], 1), torch.cat([ck, key], 1), torch.cat([cv, value], 1)
        if image_rotary_emb is not None:
            query = apply_rotary_emb(query, image_rotary_emb, sequence_dim=1)
            key = apply_rotary_emb(key, image_rotary_emb, sequence_dim=1)
        n_img = self.store.latent_hw[0] * self.store.latent_hw[1]
        n_txt = query.shape[1] - n_img
        if n_txt < 0:
            raise ValueError(f"{self.name}: {query.shape[1]} tokens cannot hold a {self.store.latent_hw} image grid")
        out, probs = head_mean_attention(query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2),
                                         attention_mask)
        if self.cross:
            self.store.add_cross(self.name, probs[:, n_txt:, :n_txt])
        if self.self_attn:
            self.store.add_self(probs[:, n_txt:, n_txt:], self.name)
        del probs
        hidden_states = out.transpose(1, 2).flatten(2, 3).to(query.dtype)
        if encoder_hidden_states is not None:
            encoder_hidden_states, hidden_states = hidden_states.split_with_sizes(
                [encoder_hidden_states.shape[1], hidden_states.shape[1] - encoder_hidden_states.shape[1]], dim=1)
            hidden_states = attn.to_out[1](attn.to_out[0](hidden_states.contiguous()))
            return hidden_states, attn.to_add_out(encoder_hidden_states.contiguous())
        return hidden_states


# capture processor for a layer's original processor class; any other: by ``joint`` (UNet or SD3 layout)
CAPTURE_FOR = {"FluxAttnProcessor": FluxCaptureProcessor, "FluxAttnProcessor2_0": FluxCaptureProcessor}


def capture_processor(proc, store: AttentionStore, name: str, cross: bool, self_attn: bool, joint: bool):
    """The capture processor standing in for a layer's original processor ``proc`` (:data:`CAPTURE_FOR`,
    else by ``joint``), recording what ``cross`` / ``self_attn`` ask for into ``store``."""
    cls = CAPTURE_FOR.get(type(proc).__name__, JointCaptureProcessor if joint else CaptureProcessor)
    return cls(store, name, cross, self_attn)


def eager_passes():
    """A context in which a compiled denoiser (``speed_up(compile=...)``) runs its Python code: processors that
    record or replace attention keep Python state, which a compiled graph would freeze at its first pass."""
    return torch.compiler.set_stance("force_eager")


UNCAPTURED_ATTENTION = ("sdpa", "explicit")
# diffusers' processors that form the probabilities in Python -> the fused processor of the same computation; one
# shared (stateless) instance each, so that a compiled denoiser meets the same objects on every pass
SDPA_FOR = {"AttnProcessor": AttnProcessor2_0(), "AttnAddedKVProcessor": AttnAddedKVProcessor2_0()}


@contextlib.contextmanager
def uncaptured_attention(denoiser: torch.nn.Module, mode: str = "sdpa", joint: bool = False) -> Iterator[None]:
    """The attention processors of passes that capture nothing, restored on exit.

    ``"sdpa"``: every layer on PyTorch's fused ``scaled_dot_product_attention`` (:data:`SDPA_FOR` replaces the
    classic processors; the ``*2_0``, joint and FLUX processors diffusers installs already use it, and then nothing
    is touched). ``"explicit"``: the capture processors (:func:`capture_processor`) recording nothing, i.e. the
    attention passes' float32 probabilities."""
    if mode not in UNCAPTURED_ATTENTION:
        raise ValueError(f"attention for passes that capture nothing must be one of {UNCAPTURED_ATTENTION}, "
                         f"got {mode!r}")
    original = dict(denoiser.attn_processors)
    if mode == "sdpa":
        new = {name: SDPA_FOR.get(type(p).__name__, p) for name, p in original.items()}
        if all(new[name] is p for name, p in original.items()):
            yield
            return
        stance = contextlib.nullcontext()
    else:
        store = AttentionStore(latent_hw=(1, 1))  # receives nothing; FLUX's processor reads its grid only to record
        new = {name: capture_processor(p, store, name, False, False, joint) for name, p in original.items()}
        stance = eager_passes()
    denoiser.set_attn_processor(new)
    try:
        with stance:
            yield
    finally:
        denoiser.set_attn_processor(original)


def is_cross_attention_layer(name: str, joint: bool) -> bool:
    """UNet cross-attention layers are the transformer blocks' ``attn2``; in MMDiT every joint layer is."""
    return joint or ".attn2." in name


def is_self_attention_layer(name: str, joint: bool) -> bool:
    return joint or ".attn1." in name


_BLOCK_CROSS = re.compile(r"^(?:(down|up)_blocks\.(\d+)|mid_block)\.attentions\.\d+\.transformer_blocks\.\d+\.attn2\.")


def block_cross_attention(name: str) -> tuple[str, int | None] | None:
    """A UNet cross-attention layer's block kind and index, as a locator walking ``unet.down_blocks``,
    ``mid_block`` and ``up_blocks`` finds it (each block's ``attentions``, each transformer block's ``attn2``):
    ``'up_blocks.1.attentions.0.transformer_blocks.0.attn2.processor'`` -> ``('up', 1)``, the mid block's ->
    ``('mid', None)``; None for any other layer (self-attention, a DiT's blocks)."""
    m = _BLOCK_CROSS.match(name)
    if m is None:
        return None
    if m.group(1) is None:
        return "mid", None
    return m.group(1), int(m.group(2))


@contextlib.contextmanager
def capture_attention(denoiser: torch.nn.Module, latent_hw: tuple[int, int], *, joint: bool = False,
                      cross: bool = True, self_attn: bool = True,
                      layer_filter: Callable[[str], bool] | None = None, all_resolutions: bool = False,
                      segments: bool = False, keep_queries: bool = False, per_head: bool = False,
                      cross_tokens: int | None = None) -> Iterator[AttentionStore]:
    """Install capture processors on ``denoiser`` for one or more forward passes; restore on exit.

    ``latent_hw`` is the denoiser's token grid at the finest resolution (latent size / patch size).
    ``all_resolutions`` keeps self-attention of every resolution; ``segments`` keeps it per resolution
    segment in forward order (for :func:`two_hop_self_attention`); ``keep_queries`` keeps the
    cross-attention queries (for attribution prompts, OVAM); ``per_head`` keeps the cross-attention of every head
    summed over the batch (DAAM; UNet layouts only); ``cross_tokens`` keeps only the first text
    tokens' cross-attention (memory: a T5 sequence has up to 512 tokens, a class phrase is near its start).
    The processor for each layer follows its original processor (:data:`CAPTURE_FOR`), else ``joint``. On a
    compiled denoiser the passes run eagerly (:func:`eager_passes`).
    """
    original = dict(denoiser.attn_processors)
    store = AttentionStore(latent_hw=tuple(latent_hw), all_resolutions=all_resolutions, segments=segments,
                           keep_queries=keep_queries, per_head=per_head, cross_tokens=cross_tokens)
    if per_head and (joint or any(type(p).__name__ in CAPTURE_FOR for p in original.values())):
        raise ValueError("per-head cross-attention is captured on UNet-style cross-attention layers only")
    new = {}
    for name, proc in original.items():
        if layer_filter is not None and not layer_filter(name):
            new[name] = proc
            continue
        want_cross = cross and is_cross_attention_layer(name, joint)
        want_self = self_attn and is_self_attention_layer(name, joint)
        new[name] = capture_processor(proc, store, name, want_cross, want_self, joint) if (want_cross or want_self) \
            else proc
    denoiser.set_attn_processor(new)
    try:
        with eager_passes():
            yield store
    finally:
        denoiser.set_attn_processor(original)


# ---- aggregation over heads (done at capture), layers and resolutions ---------------------------------

def layer_level(name: str) -> str:
    """'down_blocks.1.attentions.0...' -> 'down1'; 'mid_block...' -> 'mid'; 'up_blocks.2...' -> 'up2';
    'transformer_blocks.7...' -> 'block7' (MMDiT, PixArt, FLUX double-stream); 'single_transformer_blocks.3...'
    -> 'single3' (FLUX single-stream)."""
    m = re.match(r"(down|up)_blocks\.(\d+)\.", name)
    if m:
        return f"{m.group(1)}{m.group(2)}"
    if name.startswith("mid_block"):
        return "mid"
    m = re.match(r"(single_)?transformer_blocks\.(\d+)\.", name)
    if m:
        return f"{'single' if m.group(1) else 'block'}{m.group(2)}"
    return name


LayerWeights = str | dict[str, float] | Callable[[str, int], float]
LAYER_WEIGHTS = ("gaussian", "levels", "uniform")
GAUSSIAN_STD = 3.0  # the authors' cross_gaussian_var (used as a standard deviation)


def gaussian_layer_weights(names: list[str], std: float = GAUSSIAN_STD) -> list[float]:
    """The authors' cross-attention layer weights (``cross_gaussian_var = 3``): a Gaussian over the layer
    index in forward order, centred on the middle block's layers, normalised to sum to the layer count.

    The centre is ``n_down + (n_mid - 1) / 2`` (0-based), with ``n_down`` / ``n_mid`` the cross-attention
    layers in the down / mid blocks: SD 1.5 (16 layers: 6 down, 1 mid, 9 up) -> 6, the mid layer;
    the toy UNet (7 layers at 16, 8 | 4 | 8, 8, 16, 16) -> 2, its mid layer. An MMDiT has no blocks,
    so the centre is the middle layer, ``(L - 1) / 2``."""
    if std <= 0:
        raise ValueError(f"the Gaussian layer weights need a standard deviation > 0, got {std}")
    n = len(names)
    if any(nm.startswith(("down_blocks", "mid_block", "up_blocks")) for nm in names):
        n_down = sum(nm.startswith("down_blocks") for nm in names)
        n_mid = sum(nm.startswith("mid_block") for nm in names)
        centre = n_down + (n_mid - 1) / 2
    else:
        centre = (n - 1) / 2
    x = torch.arange(n, dtype=torch.float64) - centre
    w = torch.exp(-(x ** 2) / (2 * std ** 2))
    return (w / w.sum() * n).tolist()


def level_weight(level: str, levels: list[str]) -> float:
    """The yaml's per-resolution list [1, 1, 10, 15, 10, 1, 1] (down -> mid -> up) read per U-Net level
    and generalised to any depth: 15 at the middle level, 10 next to it, 1 elsewhere. The authors use
    their list only when ``cross_gaussian_var = 0``; this is the project's ``"levels"`` option."""
    mid = len(levels) // 2
    d = abs(levels.index(level) - mid)
    return 15.0 if d == 0 else 10.0 if d == 1 else 1.0


def ordered_levels(names: list[str]) -> list[str]:
    """Levels in U-Net order: down blocks by index, mid, up blocks by index (DiT: block order, FLUX's
    single-stream blocks after its double-stream ones, as they run)."""
    def key(level: str):
        if level.startswith("down"):
            return (0, 0, int(level[4:]))
        if level == "mid":
            return (1, 0, 0)
        if level.startswith("up"):
            return (2, 0, int(level[2:]))
        if level.startswith("block"):
            return (1, 0, int(level[5:]))
        if level.startswith("single"):
            return (1, 1, int(level[6:]))
        return (3, 0, 0)
    return sorted(dict.fromkeys(layer_level(n) for n in names), key=key)


def layer_weights_for(names: list[str], n_tokens: list[int], weights: LayerWeights,
                      std: float = GAUSSIAN_STD) -> list[float]:
    """One weight per captured cross-attention layer (``names`` in forward order)."""
    if callable(weights):
        return [float(weights(nm, n)) for nm, n in zip(names, n_tokens)]
    if isinstance(weights, dict):
        return [float(weights.get(layer_level(nm), weights.get(nm, 0.0))) for nm in names]
    if weights == "gaussian":
        return gaussian_layer_weights(names, std)
    if weights == "uniform":
        return [1.0] * len(names)
    if weights == "levels":
        levels = ordered_levels(names)
        return [level_weight(layer_level(nm), levels) for nm in names]
    raise ValueError(f"layer weights must be one of {LAYER_WEIGHTS}, a dict {{level or layer name: weight}} "
                     f"or a callable(name, n_tokens); got {weights!r}")


def aggregate_cross(store: AttentionStore, weights: LayerWeights = "uniform",
                    out_hw: tuple[int, int] | None = None, std: float = GAUSSIAN_STD) -> torch.Tensor:
    """Cross-attention (B, T, h, w): each layer bilinearly resized to ``out_hw`` (default: the finest
    captured layer, which is the first one in every supported layout, as the authors take) and
    averaged over layers with :func:`layer_weights_for`."""
    if not store.cross:
        raise ValueError("no cross-attention was captured")
    names = list(store.cross)
    if out_hw is None:
        out_hw = store.layer_hw(max(p.shape[1] for p in store.cross.values()))
    ws = layer_weights_for(names, [p.shape[1] for p in store.cross.values()], weights, std)
    total, wsum = None, 0.0
    for (name, p_bqt), w in zip(store.cross.items(), ws):
        if w == 0:
            continue
        hl, wl = store.layer_hw(p_bqt.shape[1])
        maps = p_bqt.float().transpose(1, 2).reshape(p_bqt.shape[0], p_bqt.shape[2], hl, wl)
        if (hl, wl) != tuple(out_hw):
            maps = F.interpolate(maps, size=out_hw, mode="bilinear", align_corners=False)
        total = maps * w if total is None else total + maps * w
        wsum += w
    if total is None:
        raise ValueError(f"every captured layer got weight 0 under {weights!r}; levels: {ordered_levels(names)}")
    return total / wsum


def upsample_self_attention(att_qk: torch.Tensor, layer_hw: tuple[int, int], out_hw: tuple[int, int]) -> torch.Tensor:
    """A layer's (h*w, h*w) self-attention at the finest resolution (H*W, H*W), as the authors (after
    DiffSeg) do it: keys resized bilinearly, queries repeated (``repeat_interleave``)."""
    (h, w), (H, W) = layer_hw, out_hw
    if (h, w) == (H, W):
        return att_qk
    if H % h or W % w:
        raise ValueError(f"self-attention at {h}x{w} cannot be repeated onto {H}x{W}: the sizes must divide")
    a = F.interpolate(att_qk.reshape(h, w, h, w), size=(H, W), mode="bilinear", align_corners=False)
    a = a.repeat_interleave(H // h, dim=0).repeat_interleave(W // w, dim=1)
    return a.reshape(H * W, H * W)


def default_self_weight(n_segments: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The authors' ``self_weight = [[1,0,0,0,0,0,1],[0,0,0,0,0,0,1]]`` for SD 1.5's seven resolution
    segments, generalised to any count: hop A = first and last segment, hop B = last segment (the toy
    UNet's 16-8-4-8-16 -> [[1,0,0,0,1],[0,0,0,0,1]]; one segment, as in an MMDiT -> [[1],[1]])."""
    a = [0.0] * n_segments
    b = [0.0] * n_segments
    a[0] = a[-1] = b[-1] = 1.0
    return tuple(a), tuple(b)


def two_hop_self_attention(segment_sums: dict[int, torch.Tensor], segment_counts: dict[int, int],
                           layer_hw: dict[int, tuple[int, int]], out_hw: tuple[int, int],
                           self_weight=None) -> torch.Tensor:
    """The authors' ``aggregate_self_att``: per hop i, the average of every layer's upsampled map weighted
    by its segment's ``self_weight[i]``; the result is ``avg_last @ ... @ avg_1 @ avg_0`` (rows = queries).

    ``segment_sums[s]``: (h*w, h*w) sum of segment s's layers (already averaged over timesteps);
    ``segment_counts[s]``: how many layers it holds."""
    segs = sorted(segment_sums)
    if segs != list(range(len(segs))):
        raise ValueError(f"self-attention segments must be 0..n-1, got {segs}")
    weights = default_self_weight(len(segs)) if self_weight is None else tuple(tuple(map(float, w)) for w in self_weight)
    if not weights or any(len(w) != len(segs) for w in weights):
        raise ValueError(f"self_weight needs one list of {len(segs)} segment weights per hop, got {self_weight!r}")
    up = {s: upsample_self_attention(segment_sums[s].double(), layer_hw[s], out_hw) for s in segs
          if any(w[s] for w in weights)}
    result = None
    for w in weights:
        den = sum(w[s] * segment_counts[s] for s in segs)
        if den == 0:
            raise ValueError(f"a self_weight hop gives every captured segment weight 0: {w}")
        avg = sum(w[s] * up[s] for s in up if w[s]) / den
        result = avg if result is None else avg @ result
    return result


class SelfAttentionAverage:
    """The refinement matrix, accumulated over attention passes: the self-attention of the chosen timesteps
    summed per resolution segment and combined by :func:`two_hop_self_attention` (``rule="two_hop"``), or the
    finest layers' average (``"finest"``); ``None`` keeps nothing."""

    def __init__(self, rule: str | None, self_weight=None):
        self.rule, self.self_weight = rule, self_weight
        self.sums: dict[int, torch.Tensor] = {}
        self.counts: dict[int, int] = {}
        self.hw: dict[int, tuple[int, int]] = {}
        self.n = 0

    def add(self, store: AttentionStore, rows: torch.Tensor) -> None:
        """Add the passes' batch rows selected by ``rows`` (a boolean mask over the store's batch)."""
        if self.rule is None:
            return
        if self.rule == "two_hop":
            parts = store.segment_sums
            self.counts = dict(store.segment_counts)  # layers per segment: the same in every pass
        else:
            parts = {0: store.self_attention()}
        for k, v in parts.items():
            self.hw[k] = store.layer_hw(v.shape[-1])
            v = v[rows].double().sum(0)
            self.sums[k] = v if k not in self.sums else self.sums[k] + v
        self.n += int(rows.sum())

    @property
    def out_hw(self) -> tuple[int, int] | None:
        """The grid the cross-attention must be aggregated on to be refined (None: no refinement)."""
        return self.hw.get(0)

    def result(self) -> torch.Tensor | None:
        if self.rule is None:
            return None
        if self.n == 0:
            raise ValueError("no attention timestep lies within self_attention_t_max")
        avg = {k: v / self.n for k, v in self.sums.items()}
        if self.rule == "two_hop":
            return two_hop_self_attention(avg, self.counts, self.hw, self.hw[0], self.self_weight).float().cpu()
        return avg[0].float().cpu()
