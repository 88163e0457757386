"""Where a class phrase sits among a caption's tokens (the columns of the cross-attention map).

Two tokenizer kinds are in use: CLIP's byte-pair encoding (lower-cases, splits punctuation, BOS
and EOS added) and T5's sentencepiece (case-sensitive, no BOS, ``</s>`` appended, a word-start
marker ``"\u2581"`` on every word that follows a space). A phrase is matched on token ids first; for
either kind a phrase tokenised alone gives the same ids as inside a caption when it starts a
word there. Sentencepiece splits on spaces only, so a phrase glued to punctuation in the caption
("circle,blue star": ``","``, ``"blue"`` without the marker) has other ids; then the phrase is
found in the caption's text and its tokens are those whose character spans overlap it (fast
tokenizers give the spans). Where spans are known, an id match must also be a whole word of the
caption (sentencepiece's ``"▁cat"`` also begins "catalogue").
"""
from __future__ import annotations

import re


def _ids(tokenizer, text: str, special: bool) -> list[int]:
    # verbose=False: the tokenizer's "longer than the maximum length" notice; a class past it is our error instead
    return list(tokenizer(text, add_special_tokens=special, truncation=False, verbose=False).input_ids)


OCCURRENCES = ("first", "all")


class CaptionTooLong(ValueError):
    """A class phrase's tokens reach past what the text encoder sees: its attention columns would be cut off
    (the authors' token search would index past them and fail). Never dropped or shortened silently."""


def _offsets(tokenizer, caption: str) -> list[tuple[int, int]] | None:
    """Each caption token's character span (fast tokenizers), else None."""
    if not getattr(tokenizer, "is_fast", False):
        return None
    return tokenizer(caption, add_special_tokens=True, truncation=False, return_offsets_mapping=True,
                     verbose=False).offset_mapping


def _whole_words(hits: list[list[int]], caption: str, offsets) -> list[list[int]]:
    """The id matches that are whole words of the caption: sentencepiece's '▁cat' also starts 'catalogue'."""
    if offsets is None:
        return hits
    def bounded(hit):
        start, end = offsets[hit[0]][0], offsets[hit[-1]][1]
        return not (start > 0 and caption[start - 1].isalnum()) and not (end < len(caption) and caption[end].isalnum())
    return [h for h in hits if bounded(h)]


def _span_hits(caption: str, phrase: str, offsets) -> list[list[int]]:
    """Token positions of each occurrence of ``phrase`` in ``caption``'s text (case-insensitive, on word
    boundaries), from the fast tokenizer's character offsets; [] where it has none."""
    if offsets is None:
        return []
    pattern = r"(?<!\w)" + r"\s+".join(map(re.escape, phrase.split())) + r"(?!\w)"
    hits = []
    for m in re.finditer(pattern, caption, flags=re.IGNORECASE):
        toks = [i for i, (a, b) in enumerate(offsets) if b > a and a < m.end() and b > m.start()]
        if toks:
            hits.append(toks)
    return hits


def token_positions(tokenizer, caption: str, phrase: str, occurrence: str = "first",
                    limit: int | None = None) -> list[int]:
    """Positions of ``phrase``'s tokens inside ``caption``'s tokens (with BOS where the tokenizer adds one):
    those of its first occurrence (the authors' rule), or of every occurrence with ``occurrence="all"``.

    Matching is on token ids, so case and punctuation follow the tokenizer (CLIP lower-cases and
    splits punctuation; T5 does neither), with the character-span fallback of the module docstring.
    A phrase that does not occur is a ValueError; one whose chosen occurrence reaches, even in part, past
    ``limit`` tokens (default: the tokenizer's maximum length; pass how many tokens the denoiser sees) is a
    :class:`CaptionTooLong` naming the caption's token count.
    """
    if occurrence not in OCCURRENCES:
        raise ValueError(f"token occurrence must be one of {OCCURRENCES}, got {occurrence!r}")
    if not phrase or not phrase.strip():
        raise ValueError("class phrase is empty")
    cap = _ids(tokenizer, caption, special=True)
    sub = _ids(tokenizer, phrase, special=False)
    if not sub:
        raise ValueError(f"class phrase {phrase!r} has no tokens")
    n = len(sub)
    offsets = _offsets(tokenizer, caption)
    hits = _whole_words([list(range(i, i + n)) for i in range(len(cap) - n + 1) if cap[i:i + n] == sub], caption,
                        offsets)
    if not hits:
        hits = _span_hits(caption, phrase.strip(), offsets)
    if not hits:
        raise ValueError(f"class {phrase!r} does not appear in the caption {caption!r}; every class must be "
                         "named in the caption (pass caption=None to build one from the classes)")
    limit = limit or getattr(tokenizer, "model_max_length", None) or len(cap)
    if occurrence == "first":
        hits = hits[:1]
    positions = sorted({p for hit in hits for p in hit})
    if positions[-1] >= limit:
        raise CaptionTooLong(f"the caption has {len(cap)} tokens, more than the text encoder's {limit}-token limit: "
                             f"class {phrase!r} (tokens {positions[0]}..{positions[-1]}) lies past it in caption "
                             f"{caption!r}; shorten the caption or leave the image out (no class is dropped)")
    return positions


def default_caption(classes: list[str], template: str = "a photo of {}", item: str = "{}") -> str:
    """'a photo of {a}, {b}, {c}' (the protocol's caption when a dataset has none); ``item``
    formats each class first (e.g. 'a {}' for the toy model's 'a photo of a red circle, a blue star')."""
    if not classes:
        raise ValueError("no classes given")
    return template.format(", ".join(item.format(c) for c in classes))
