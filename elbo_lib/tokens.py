"""Where a class phrase sits among a caption's tokens (the columns of the cross-attention map)."""
from __future__ import annotations


def _ids(tokenizer, text: str, special: bool) -> list[int]:
    return list(tokenizer(text, add_special_tokens=special, truncation=False).input_ids)


OCCURRENCES = ("first", "all")


def token_positions(tokenizer, caption: str, phrase: str, occurrence: str = "first") -> list[int]:
    """Positions of ``phrase``'s tokens inside ``caption``'s tokens (with BOS): those of its first
    occurrence (the authors' rule), or of every occurrence with ``occurrence="all"``.

    Matching is on token ids, so case and punctuation follow the tokenizer (CLIP lower-cases and
    splits punctuation). A phrase that does not occur, or occurs only past the tokenizer's
    maximum length, is a ValueError.
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
    hits = [i for i in range(len(cap) - n + 1) if cap[i:i + n] == sub]
    if not hits:
        raise ValueError(f"class {phrase!r} does not appear in the caption {caption!r}; every class must be "
                         "named in the caption (pass caption=None to build one from the classes)")
    limit = getattr(tokenizer, "model_max_length", None) or len(cap)
    if occurrence == "first":
        hits = hits[:1]
    positions = sorted({i + k for i in hits for k in range(n) if i + k < limit})
    if not positions:
        raise ValueError(f"class {phrase!r} occurs only past the {limit}-token limit of the text encoder "
                         f"in caption {caption!r}; shorten the caption")
    return positions


def default_caption(classes: list[str], template: str = "a photo of {}", item: str = "{}") -> str:
    """'a photo of {a}, {b}, {c}' (the protocol's caption when a dataset has none); ``item``
    formats each class first (e.g. 'a {}' for the toy model's 'a photo of a red circle, a blue star')."""
    if not classes:
        raise ValueError("no classes given")
    return template.format(", ".join(item.format(c) for c in classes))
