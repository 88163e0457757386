"""Table V's noun phrases as the authors extract them: spaCy noun chunks, their root-word filter, and which
phrases a weighted prompt can mark. The filter runs on chunk objects; the spaCy path runs spaCy's own noun-chunk
iterator on parses given by hand (no trained model needed); the trained model's path runs where it is installed."""
import sys
from types import SimpleNamespace

import pytest

from elbo_lib import generation as G
from elbo_lib.noun_phrases import AUTHORS_KEYWORDS, NON_ENTITY_KEYWORDS, NounPhrases, filter_chunks, load_spacy


def _chunk(text, root, pos="NOUN"):
    return SimpleNamespace(text=text, root=SimpleNamespace(text=root, pos_=pos))


def test_filter_keeps_common_noun_roots_outside_the_keywords():
    chunks = [_chunk("a red cat", "cat"), _chunk("a table", "table"), _chunk("it", "it", "PRON"),
              _chunk("Paris", "Paris", "PROPN"), _chunk("the Top", "Top"), _chunk("two groups", "groups"),
              _chunk("a blue dog", "dog")]
    # the root's text, lower-cased, is tested, not its lemma: "Top" goes, "groups" stays
    assert filter_chunks(chunks) == ["a red cat", "two groups", "a blue dog"]
    assert filter_chunks(chunks, frozenset({"cat"})) == ["a table", "the Top", "two groups", "a blue dog"]
    assert filter_chunks([]) == []


def test_keyword_list_is_the_authors():
    assert NON_ENTITY_KEYWORDS == frozenset(AUTHORS_KEYWORDS)
    assert {"group", "bunch", "lot", "piece", "table", "summary"} <= NON_ENTITY_KEYWORDS
    assert all(k == k.strip().lower() and " " not in k for k in AUTHORS_KEYWORDS)
    # their YAML list repeats four words
    assert sorted(k for k in set(AUTHORS_KEYWORDS) if AUTHORS_KEYWORDS.count(k) > 1) == ["factor", "part", "result",
                                                                                         "section"]


# parses given by hand: (part of speech, dependency label, head index) per word
PARSES = {
    "a red cat on a table": [("DET", "det", 2), ("ADJ", "amod", 2), ("NOUN", "ROOT", 2), ("ADP", "prep", 2),
                             ("DET", "det", 5), ("NOUN", "pobj", 3)],
    "a group of dogs near Paris and it": [("DET", "det", 1), ("NOUN", "ROOT", 1), ("ADP", "prep", 1),
                                          ("NOUN", "pobj", 2), ("ADP", "prep", 1), ("PROPN", "pobj", 4),
                                          ("CCONJ", "cc", 1), ("PRON", "conj", 1)],
    "a yellow bird and a yellow bird": [("DET", "det", 2), ("ADJ", "amod", 2), ("NOUN", "ROOT", 2),
                                        ("CCONJ", "cc", 2), ("DET", "det", 6), ("ADJ", "amod", 6),
                                        ("NOUN", "conj", 2)],
}


class HandParser:
    """A spaCy ``nlp`` stand-in: real ``Doc`` objects (spaCy's English noun-chunk iterator) from hand parses."""

    def __init__(self):
        spacy = pytest.importorskip("spacy", reason="spaCy is not installed: pip install -e .[phrases]")
        self.vocab, self.doc = spacy.blank("en").vocab, spacy.tokens.Doc

    def __call__(self, text):
        words = text.split(" ")
        pos, deps, heads = zip(*PARSES[text])
        return self.doc(self.vocab, words=words, spaces=[True] * (len(words) - 1) + [False], pos=list(pos),
                   deps=list(deps), heads=list(heads))

    def pipe(self, texts):
        return (self(t) for t in texts)


def test_spacy_noun_chunks_through_the_filter():
    nlp = HandParser()
    doc = nlp("a group of dogs near Paris and it")
    assert [c.text for c in doc.noun_chunks] == ["a group", "dogs", "Paris", "it"]  # what spaCy itself gives
    phrases = NounPhrases(nlp=nlp)
    assert phrases("a group of dogs near Paris and it") == ["dogs"]
    assert phrases("a red cat on a table") == ["a red cat"]
    assert phrases.many(list(PARSES)) == [["a red cat"], ["dogs"], ["a yellow bird", "a yellow bird"]]
    assert NounPhrases(nlp=nlp, keywords=["CAT"])("a red cat on a table") == ["a table"]
    with pytest.raises(TypeError, match="prompt string"):
        phrases(["a red cat"])


def test_usable_phrases_drop_what_a_weighted_prompt_cannot_mark():
    prompt = "a yellow bird and a yellow bird"
    kept, dropped = G.usable_phrases(prompt, ["a yellow bird", "a yellow bird"])
    assert kept == ["a yellow bird"] and dropped == ["a yellow bird"]
    # "a cat" is first found inside "a cat's toy": the authors' prompt.find would weight over the other phrase
    kept, dropped = G.usable_phrases("a cat's toy and a cat", ["a cat's toy", "a cat"])
    assert kept == ["a cat's toy"] and dropped == ["a cat"]
    kept, dropped = G.usable_phrases("a red cat and a blue dog", ["a blue dog", "a green bird", "a red cat"])
    assert kept == ["a blue dog", "a red cat"] and dropped == ["a green bird"]
    assert G.check_phrases("a red cat and a blue dog", kept) == kept
    assert G.weighted_prompt("a red cat and a blue dog", kept, [1.2, 1.0]) == "(a red cat)1.0 and (a blue dog)1.2"


def test_missing_spacy_or_model_says_what_to_install(monkeypatch):
    pytest.importorskip("spacy", reason="spaCy is not installed: pip install -e .[phrases]")
    with pytest.raises(OSError, match=r"python -m spacy download xx_no_such_model_here"):
        load_spacy("xx_no_such_model_here")
    monkeypatch.setitem(sys.modules, "spacy", None)  # as if spaCy were not installed
    with pytest.raises(ImportError, match=r"pip install -e \.\[phrases\]"):
        NounPhrases()


def test_the_authors_model_where_installed():
    spacy = pytest.importorskip("spacy", reason="spaCy is not installed: pip install -e .[phrases]")
    if not spacy.util.is_package("en_core_web_sm"):
        pytest.skip("spaCy's en_core_web_sm is not installed: python -m spacy download en_core_web_sm")
    phrases = NounPhrases()
    assert phrases("a red cat and a blue dog") == ["a red cat", "a blue dog"]
    assert phrases("a group of dogs on a table") == ["dogs"]
