"""Text to token ids, offline: LEAF's character vocabulary (Shakespeare) and a word-level
vocabulary learnt from the training text with Hugging Face `tokenizers` (Sent140).

Character ids are LEAF's indices (0..79) plus 80 for a character outside LEAF's set; word ids
keep 0 for padding and 1 for a word the vocabulary did not learn (`[UNK]`).
"""

from __future__ import annotations

import numpy as np

from fedsim.errors import ConfigError

# LEAF's Shakespeare characters (leaf/models/utils/language_utils.py), in LEAF's order
LEAF_CHARACTERS = "\n !\"&'(),-.0123456789:;>?ABCDEFGHIJKLMNOPQRSTUVWXYZ[]abcdefghijklmnopqrstuvwxyz}"
CHARACTER_VOCAB = len(LEAF_CHARACTERS) + 1  # LEAF's 80, then "unknown"
WORD_PAD, WORD_UNKNOWN = "[PAD]", "[UNK]"


def encode_characters(texts: list[str], length: int) -> np.ndarray:
    """[n, length] int64 character ids of equal-length strings."""
    joined = "".join(texts)
    if len(joined) != length * len(texts):
        raise ConfigError(f"every text must have {length} characters")
    codes = np.frombuffer(joined.encode("utf-32-le"), dtype=np.uint32)
    known = np.array([ord(c) for c in LEAF_CHARACTERS], dtype=np.uint32)
    order = np.argsort(known)
    at = np.minimum(np.searchsorted(known[order], codes), len(known) - 1)
    ids = np.where(known[order][at] == codes, order[at], CHARACTER_VOCAB - 1)
    return ids.astype(np.int64).reshape(len(texts), length)


def word_vocabulary(texts: list[str], size: int):
    """A lowercasing word-level `tokenizers.Tokenizer` learnt from `texts`: its `size` most
    frequent words and punctuation marks (0 = every one) plus `[PAD]` = 0 and `[UNK]` = 1."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.WordLevel(unk_token=WORD_UNKNOWN))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()  # words and punctuation marks
    trainer = trainers.WordLevelTrainer(
        vocab_size=size + 2 if size else 2**31 - 1, special_tokens=[WORD_PAD, WORD_UNKNOWN], show_progress=False
    )
    tokenizer.train_from_iterator(texts, trainer)
    return tokenizer


def encode_words(tokenizer, texts: list[str], length: int) -> np.ndarray:
    """[n, length] int64 word ids: the first `length` tokens of each text, left-padded with 0 so a
    sequence's last position is its last word."""
    ids = np.zeros((len(texts), length), dtype=np.int64)
    for row, encoding in enumerate(tokenizer.encode_batch(texts)):
        tokens = encoding.ids[:length]
        if tokens:
            ids[row, length - len(tokens) :] = tokens
    return ids
