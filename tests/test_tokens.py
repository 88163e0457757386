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
