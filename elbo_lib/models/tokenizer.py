"""Tokenizers built locally from a word list (no hub access).

CLIP byte-pair (:func:`build_tokenizer`): the vocabulary holds CLIP's 256 byte symbols, the same
with the end-of-word marker, one merge chain per word (so each word becomes a single token) and
the two special tokens. Any text still tokenises: unknown words fall back to characters.

T5 sentencepiece (:func:`build_t5_tokenizer`): a ``tokenizers`` Unigram model with T5's
pre-tokenisation (whitespace split, ``"▁"`` word-start marker prepended to every word) and
post-processing (``</s>`` appended, no BOS), wrapped as ``T5TokenizerFast``. Each word is one
piece ``"▁word"``; other text falls back to single characters, as a real sentencepiece
model does for rare words.
"""
from __future__ import annotations

import json
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
from transformers import CLIPTokenizer, T5TokenizerFast


def _byte_symbols() -> list[str]:
    """CLIP/GPT-2's reversible byte -> printable unicode table, in CLIP's order."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]


def _bpe(symbols: list[str], ranks: dict[tuple[str, str], int]) -> list[str]:
    """CLIP's greedy BPE: repeatedly merge the adjacent pair with the lowest rank."""
    while len(symbols) > 1:
        pairs = [(ranks.get((a, b), 1 << 30), i) for i, (a, b) in enumerate(zip(symbols, symbols[1:]))]
        r, i = min(pairs)
        if r == 1 << 30:
            break
        symbols = symbols[:i] + [symbols[i] + symbols[i + 1]] + symbols[i + 2:]
    return symbols


def vocab_and_merges(words: list[str]) -> tuple[dict[str, int], list[str]]:
    """Vocabulary and merge rules that turn every word of ``words`` into one token.

    For each word, BPE is run with the merges so far; while it ends in several symbols, the
    merge of its first two symbols is appended (lowest priority), which cannot alter words
    already reduced to one token."""
    symbols = _byte_symbols()
    vocab_list = symbols + [s + "</w>" for s in symbols]
    ranks: dict[tuple[str, str], int] = {}
    words = list(dict.fromkeys(w.lower() for w in words))
    for word in words:
        while True:
            parts = _bpe(list(word[:-1]) + [word[-1] + "</w>"], ranks)
            if len(parts) == 1:
                break
            ranks[(parts[0], parts[1])] = len(ranks)
            vocab_list.append(parts[0] + parts[1])
    for word in words:  # every word is one token under the final merge table
        assert len(_bpe(list(word[:-1]) + [word[-1] + "</w>"], ranks)) == 1, word
    vocab_list += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {}
    for tok in vocab_list:
        vocab.setdefault(tok, len(vocab))
    return vocab, [f"{a} {b}" for (a, b), _ in sorted(ranks.items(), key=lambda kv: kv[1])]


def build_tokenizer(words: list[str], model_max_length: int = 40, save_dir: str | Path | None = None) -> CLIPTokenizer:
    """A CLIPTokenizer whose vocabulary covers ``words`` as whole tokens."""
    vocab, merges = vocab_and_merges(words)
    if save_dir is not None:  # the classic slow-tokenizer files, loadable by any transformers version
        save_dir = Path(save_dir)
        save_dir.mkdir(parents=True, exist_ok=True)
        (save_dir / "vocab.json").write_text(json.dumps(vocab))
        (save_dir / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    tok = CLIPTokenizer(vocab=vocab, merges=[tuple(m.split(" ")) for m in merges], model_max_length=model_max_length)
    if save_dir is not None:
        tok.save_pretrained(save_dir)
    return tok


T5_SPECIALS = ("<pad>", "</s>", "<unk>")  # T5's ids 0, 1, 2
T5_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789,.;:!?'()-"


def build_t5_tokenizer(words: list[str], model_max_length: int = 64) -> T5TokenizerFast:
    """A T5 sentencepiece (Unigram) tokenizer whose vocabulary holds ``"▁" + word`` for each of ``words``
    (scores favour whole words over characters), the bare marker and single characters."""
    pieces = [(p, 0.0) for p in T5_SPECIALS] + [("▁" + w, -1.0) for w in dict.fromkeys(words)]
    pieces += [("▁", -4.0)] + [(c, -5.0) for c in T5_CHARS]
    tk = Tokenizer(models.Unigram(pieces, unk_id=T5_SPECIALS.index("<unk>")))
    tk.normalizer = normalizers.Replace(Regex(" {2,}"), " ")
    tk.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(),
                                                pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")])
    tk.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    tk.post_processor = processors.TemplateProcessing(single="$A </s>", pair="$A </s> $B </s>",
                                                      special_tokens=[("</s>", T5_SPECIALS.index("</s>"))])
    return T5TokenizerFast(tokenizer_object=tk, eos_token="</s>", unk_token="<unk>", pad_token="<pad>", extra_ids=0,
                           model_max_length=model_max_length)
