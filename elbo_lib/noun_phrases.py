"""A prompt's noun phrases as the authors extract them for Table V (``extract_filtered_noun_phrases`` in their
``run_generation.py``): spaCy's noun chunks from ``en_core_web_sm``, keeping a chunk only when its root token's
part of speech is ``NOUN`` (so "it", "them" and proper nouns such as "Paris" go) and the root's lower-cased text
is not one of their ``non_entity_keywords`` (``configs/run_generation.yaml``). The chunk's text is kept as spaCy
gives it, determiner and adjectives included: "a red cat". The test is on the root's text, not its lemma:
"a group of dogs" gives "dogs" (the chunk "a group" goes), while "groups" is not in the list and stays.

spaCy is an optional dependency (the ``phrases`` extra)::

    pip install -e .[phrases]
    python -m spacy download en_core_web_sm

Without it, pass the phrases to :func:`elbo_lib.generation.generate` by hand. :func:`filter_chunks` is the
filter alone: it takes any chunk objects with ``.text`` and ``.root.text`` / ``.root.pos_``.
"""
from __future__ import annotations

from typing import Iterable

SPACY_MODEL = "en_core_web_sm"  # the authors' spacy.load(...)
INSTALL = "pip install -e .[phrases] && python -m spacy download en_core_web_sm"

# configs/run_generation.yaml's non_entity_keywords, in their order (their list repeats part, section, factor
# and result; 157 distinct words)
AUTHORS_KEYWORDS = (
    "group", "bunch", "lot", "piece", "part", "kind", "sort", "type", "category", "set", "stack", "pile",
    "collection", "series", "array", "batch", "range", "pair", "couple", "portion", "class", "form", "member",
    "middle", "edge", "corner", "side", "center", "end", "top", "bottom", "surface", "front", "back", "area",
    "section", "region", "zone", "field", "space", "boundary", "line", "layer", "time", "moment", "period",
    "phase", "era", "duration", "stage", "age", "interval", "point", "second", "minute", "hour", "day",
    "amount", "quantity", "number", "total", "sum", "level", "degree", "majority", "minority", "plenty", "few",
    "several", "many", "much", "idea", "concept", "notion", "thought", "plan", "system", "process", "method",
    "way", "approach", "strategy", "technique", "style", "rule", "principle", "aspect", "factor", "condition",
    "state", "case", "example", "instance", "thing", "stuff", "item", "object", "activity", "task", "project",
    "event", "action", "behavior", "option", "choice", "possibility", "result", "outcome", "effect", "issue",
    "problem", "solution", "question", "answer", "reason", "cause", "purpose", "goal", "aim", "target",
    "cluster", "network", "subgroup", "segment", "fraction", "component", "module", "element", "unit", "block",
    "part", "section", "chapter", "row", "column", "list", "table", "chart", "diagram", "graph", "data",
    "information", "evidence", "result", "statistic", "figure", "record", "detail", "value", "metric",
    "parameter", "variable", "factor", "trend", "estimate", "calculation", "measurement", "observation",
    "report", "analysis", "summary",
)
NON_ENTITY_KEYWORDS = frozenset(AUTHORS_KEYWORDS)


def keep_chunk(chunk, keywords: frozenset[str] = NON_ENTITY_KEYWORDS) -> bool:
    """The authors' test: the chunk's root is a common noun and not a non-entity keyword."""
    return chunk.root.pos_ == "NOUN" and chunk.root.text.lower() not in keywords


def filter_chunks(chunks: Iterable, keywords: frozenset[str] = NON_ENTITY_KEYWORDS) -> list[str]:
    """The texts of the chunks :func:`keep_chunk` keeps, in their order."""
    return [c.text for c in chunks if keep_chunk(c, keywords)]


def load_spacy(model: str = SPACY_MODEL):
    """``spacy.load(model)``, or a one-line error naming what to install."""
    try:
        import spacy
    except ImportError:
        raise ImportError(f"noun-phrase extraction needs spaCy, which is not installed: {INSTALL} "
                          "(or pass the phrases by hand)") from None
    try:
        return spacy.load(model)
    except OSError:
        raise OSError(f"spaCy's model {model!r} is not installed: python -m spacy download {model} "
                      "(or pass the phrases by hand)") from None


class NounPhrases:
    """``NounPhrases()(prompt)`` -> the prompt's noun phrases as the authors extract them. ``nlp``: a loaded spaCy
    pipeline with a parser (default: ``en_core_web_sm``); ``keywords``: the root words to drop."""

    def __init__(self, nlp=None, keywords: Iterable[str] = NON_ENTITY_KEYWORDS):
        self.nlp = nlp if nlp is not None else load_spacy()
        self.keywords = frozenset(k.lower() for k in keywords)

    def __call__(self, text: str) -> list[str]:
        if not isinstance(text, str):
            raise TypeError(f"expected a prompt string, got {type(text).__name__}")
        return filter_chunks(self.nlp(text).noun_chunks, self.keywords)

    def many(self, texts: list[str]) -> list[list[str]]:
        """One phrase list per prompt (``nlp.pipe``: batched)."""
        return [filter_chunks(doc.noun_chunks, self.keywords) for doc in self.nlp.pipe(texts)]
