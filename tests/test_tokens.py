import pytest

from elbo_lib.models.random_init import tiny_clip_tokenizer
from elbo_lib.tokens import default_caption, token_positions


@pytest.fixture(scope="module")
def tok():
    return tiny_clip_tokenizer()


def test_single_and_multi_word(tok):
    cap = "a photo of a red circle and a cat"
    ids = tok(cap).input_ids
    pos = token_positions(tok, cap, "red circle")
    assert [tok.convert_ids_to_tokens(ids[p]) for p in pos] == ["red</w>", "circle</w>"]
    assert token_positions(tok, cap, "cat") == [len(ids) - 2]


def test_multi_token_word(tok):
    cap = "a zebra and a cat"  # 'zebra' is not in the vocabulary: several character tokens
    pos = token_positions(tok, cap, "zebra")
    assert len(pos) > 1 and pos == list(range(pos[0], pos[0] + len(pos)))


def test_phrase_twice_case_punctuation(tok):
    cap = "A Red Circle, a cat, and a red circle!"
    pos = token_positions(tok, cap, "red circle")  # the first occurrence, as the authors take it
    assert pos == [2, 3]
    assert len(token_positions(tok, cap, "red circle", occurrence="all")) == 4
    with pytest.raises(ValueError, match="occurrence"):
        token_positions(tok, cap, "red circle", occurrence="last")
    assert token_positions(tok, cap, "Cat") == token_positions(tok, cap, "cat")


def test_absent_and_empty(tok):
    with pytest.raises(ValueError, match="does not appear"):
        token_positions(tok, "a photo of a cat", "dog")
    with pytest.raises(ValueError, match="empty"):
        token_positions(tok, "a photo of a cat", "  ")


def test_past_limit(tok):
    cap = " ".join(["cat"] * 80) + " dog"
    with pytest.raises(ValueError, match="limit"):
        token_positions(tok, cap, "dog")


def test_default_caption():
    assert default_caption(["cat", "dog", "sky"]) == "a photo of cat, dog, sky"
    assert default_caption(["red circle"], item="a {}") == "a photo of a red circle"
    with pytest.raises(ValueError):
        default_caption([])


# ---- T5 sentencepiece (FLUX, PixArt-Sigma, SD 3's third encoder) ----------------------------------------------

@pytest.fixture(scope="module")
def t5():
    from elbo_lib.models.random_init import WORDS
    from elbo_lib.models.tokenizer import build_t5_tokenizer
    return build_t5_tokenizer(WORDS, model_max_length=16)


def test_t5_pieces_start_and_end(t5):
    """No BOS: a phrase at the start of the caption is position 0; the appended '</s>' is never a class token."""
    cap = "red circle and a cat"
    ids = t5(cap).input_ids
    assert t5.convert_ids_to_tokens(ids) == ["\u2581red", "\u2581circle", "\u2581and", "\u2581a", "\u2581cat", "</s>"]
    assert token_positions(t5, cap, "red circle") == [0, 1]
    assert token_positions(t5, cap, "cat") == [4]
    assert t5("cat", add_special_tokens=False).input_ids == [ids[4]]  # alone: the same '\u2581cat' piece


def test_t5_unknown_word_is_several_pieces(t5):
    cap = "a photo of a zebra and a cat"
    pos = token_positions(t5, cap, "zebra")
    toks = t5.convert_ids_to_tokens(t5(cap).input_ids)
    assert [toks[p] for p in pos] == ["\u2581", "z", "e", "b", "r", "a"]


def test_t5_punctuation_and_case_fall_back_to_character_spans(t5):
    """Sentencepiece splits on spaces only: 'circle,blue' gives ',' 'b' 'l' 'u' 'e' with no word marker, and
    'Cat' other pieces than 'cat'; the phrase is then found in the text and its overlapping tokens taken."""
    cap = "a red circle,blue star"
    toks = t5.convert_ids_to_tokens(t5(cap).input_ids)
    pos = token_positions(t5, cap, "blue star")
    assert "".join(toks[p] for p in pos) == "blue\u2581star"
    assert token_positions(t5, cap, "red circle") == [1, 2]  # found by ids
    cap2 = "A Cat and a dog, a cat"
    first = token_positions(t5, cap2, "cat")
    assert "".join(t5.convert_ids_to_tokens(t5(cap2).input_ids)[p] for p in first) == "\u2581cat"  # ids first
    with pytest.raises(ValueError, match="does not appear"):
        token_positions(t5, "a catalogue", "cat")  # not a word of the caption


def test_t5_limit_is_what_the_denoiser_sees(t5):
    cap = "a photo of a cat and a dog"
    assert token_positions(t5, cap, "dog") == [7]
    with pytest.raises(ValueError, match="7-token limit"):
        token_positions(t5, cap, "dog", limit=7)
    with pytest.raises(ValueError, match="16-token limit"):  # the tokenizer's own maximum by default
        token_positions(t5, " ".join(["cat"] * 20) + " dog", "dog")
