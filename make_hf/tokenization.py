"""Train a BERT WordPiece vocabulary on a corpus, offline, and get a working transformers tokenizer.

Training MAKE from scratch (no pretrained text towers) needs a vocabulary that fits the shop's queries and
titles. This wraps the `tokenizers` WordPiece trainer with BERT's normaliser and pre-tokeniser: lower-casing,
accent stripping, and every CJK character its own token (so Chinese works without a segmenter). The ASCII
letters, digits and punctuation are always in the vocabulary (letters and digits also as `##` continuations), so
an English word never collapses to `[UNK]`. Training is deterministic: the same corpus gives the same vocabulary
in every run and process.

The result is a `transformers.BertTokenizer` built from the vocabulary dict (not from a file path:
`BertTokenizerFast(vocab_file=...)` silently ignores the file in transformers 5 and maps every word to `[UNK]`),
so `save_pretrained` / `AutoTokenizer.from_pretrained` round-trip it like any BERT tokenizer.
"""

from __future__ import annotations

import string
from collections.abc import Iterable, Iterator

from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
from transformers import BertTokenizer


BERT_SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
DEFAULT_ALPHABET = tuple(string.ascii_lowercase + string.digits + string.punctuation)


def _strings(texts: Iterable[str]) -> Iterator[str]:
    for index, text in enumerate(texts):
        if not isinstance(text, str):
            raise ValueError(f"`texts[{index}]` must be a string, got {type(text).__name__}.")
        yield text


def train_tokenizer(
    texts: Iterable[str],
    vocab_size: int = 8000,
    *,
    min_frequency: int = 2,
    lowercase: bool = True,
    model_max_length: int = 512,
    alphabet: Iterable[str] = DEFAULT_ALPHABET,
    limit_alphabet: int | None = None,
    show_progress: bool = False,
) -> BertTokenizer:
    """Train a BERT WordPiece tokenizer on `texts` and return it as a `transformers.BertTokenizer`.

    Args:
        texts: the corpus (queries and titles); any iterable of strings (read into memory once).
        vocab_size: the largest vocabulary size, special tokens and alphabet included.
        min_frequency: a merge must occur at least this often to enter the vocabulary.
        lowercase: lower-case and strip accents, as uncased BERT does.
        model_max_length: the tokenizer's `model_max_length`.
        alphabet: characters always in the vocabulary (letters and digits also as `##` continuations).
        limit_alphabet: keep at most this many distinct characters seen in the corpus (None: all). A Chinese
            corpus has thousands; lowering this trades rare characters for more subwords.
        show_progress: show the `tokenizers` progress bar.

    Returns:
        A `BertTokenizer` with `[PAD]`=0, `[UNK]`=1, `[CLS]`=2, `[SEP]`=3, `[MASK]`=4.

    Raises:
        ValueError: a non-string text, a vocabulary too small for the special tokens and alphabet, or a corpus
            from which nothing but `[UNK]` could be learnt (e.g. empty).
    """
    alphabet = sorted(dict.fromkeys(alphabet))
    corpus = list(_strings(texts))
    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]", continuing_subword_prefix="##"))
    tokenizer.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=None if lowercase else False, lowercase=lowercase
    )
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()

    # The trainer numbers the "##c" continuation symbols in hash-map order, which changes from run to run, and
    # breaks ties between equally frequent merges by those numbers, so the learnt vocabulary would differ between
    # runs (and between the processes of a distributed job). Declaring every continuation symbol up front, in
    # sorted order, fixes their numbers and makes training deterministic; it also puts the alphabet's letters and
    # digits in the vocabulary as continuations. CJK characters and punctuation are words of their own.
    continuation_characters = {character for character in alphabet if character.isalnum()}
    for text in corpus:
        for word, _ in tokenizer.pre_tokenizer.pre_tokenize_str(tokenizer.normalizer.normalize_str(text)):
            continuation_characters.update(word[1:])
    continuations = ["##" + character for character in sorted(continuation_characters)]
    reserved = len(BERT_SPECIAL_TOKENS) + len(continuations) + len(alphabet)
    if vocab_size <= reserved:
        raise ValueError(
            f"`vocab_size`={vocab_size} leaves no room to learn: the special tokens, the alphabet and the corpus's "
            f"characters (also as ## continuations) take {reserved}. Use a `vocab_size` well above that, or a "
            "smaller `alphabet`."
        )
    trainer_options = {"limit_alphabet": limit_alphabet} if limit_alphabet is not None else {}
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(BERT_SPECIAL_TOKENS) + continuations,
        initial_alphabet=alphabet,
        continuing_subword_prefix="##",
        show_progress=show_progress,
        **trainer_options,
    )
    tokenizer.train_from_iterator(corpus, trainer=trainer)

    vocab = tokenizer.get_vocab()
    for expected_id, token in enumerate(BERT_SPECIAL_TOKENS):
        if vocab.get(token) != expected_id:
            raise RuntimeError(f"The trained vocabulary put {token} at {vocab.get(token)}, expected {expected_id}.")

    bert = BertTokenizer(
        vocab=vocab,
        do_lower_case=lowercase,
        strip_accents=None if lowercase else False,
        tokenize_chinese_chars=True,
        model_max_length=model_max_length,
    )
    unk_id = bert.unk_token_id
    special_ids = set(bert.all_special_ids)
    sample = [text for text in corpus[:256] if text.strip()][:64]
    learnt = [
        token_id
        for text in sample
        for token_id in bert(text, add_special_tokens=False)["input_ids"]
        if token_id not in special_ids
    ]
    if not learnt or all(token_id == unk_id for token_id in learnt):
        raise ValueError(
            "The trained tokenizer maps the corpus to [UNK] only: `texts` was empty or held no usable text. "
            "Pass the training queries and titles."
        )
    return bert


__all__ = ["BERT_SPECIAL_TOKENS", "DEFAULT_ALPHABET", "train_tokenizer"]
