"""train_tokenizer: a real WordPiece vocabulary from a corpus (not all [UNK]), Chinese included, saved and reloaded."""

import pytest
from transformers import AutoTokenizer, BertTokenizer

from make_hf.tokenization import BERT_SPECIAL_TOKENS, train_tokenizer


CORPUS = [
    "2024 new breathable running shoes men women mesh sport sneakers",
    "red running sneakers",
    "leather wallet for men, slim card holder",
    "women summer dress cotton floral",
    "透气跑步鞋男女网面运动鞋",
    "跑步鞋",
    "真皮钱包男士",
] * 5


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(CORPUS, vocab_size=400, min_frequency=2, model_max_length=64)


def test_returns_a_bert_tokenizer_with_bert_special_tokens(tokenizer):
    assert isinstance(tokenizer, BertTokenizer)
    assert [tokenizer.convert_tokens_to_ids(token) for token in BERT_SPECIAL_TOKENS] == [0, 1, 2, 3, 4]
    assert tokenizer.pad_token_id == 0 and tokenizer.model_max_length == 64
    assert len(tokenizer) <= 400


def test_corpus_words_are_real_tokens_not_unk(tokenizer):
    assert tokenizer.tokenize("Running Sneakers") == ["running", "sneakers"]
    ids = tokenizer("red running sneakers", add_special_tokens=False)["input_ids"]
    assert tokenizer.unk_token_id not in ids
    assert tokenizer("red sneakers")["input_ids"][0] == tokenizer.cls_token_id


def test_chinese_characters_are_single_tokens(tokenizer):
    assert tokenizer.tokenize("跑步鞋") == ["跑", "步", "鞋"]
    assert tokenizer.unk_token_id not in tokenizer("男士跑步鞋", add_special_tokens=False)["input_ids"]


def test_unseen_ascii_words_split_into_known_pieces(tokenizer):
    pieces = tokenizer.tokenize("zebra quiz")
    assert "[UNK]" not in pieces
    assert "".join(piece.removeprefix("##") for piece in pieces) == "zebraquiz"


def test_save_and_autotokenizer_round_trip(tokenizer, tmp_path):
    tokenizer.save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    texts = ["2024 new running shoes", "透气跑步鞋", "zebra"]
    assert reloaded(texts)["input_ids"] == tokenizer(texts)["input_ids"]
    assert reloaded.get_vocab() == tokenizer.get_vocab()


def test_training_is_deterministic(tokenizer):
    again = train_tokenizer(CORPUS, vocab_size=400, min_frequency=2, model_max_length=64)
    assert again.get_vocab() == tokenizer.get_vocab()


def test_cased_tokenizer_keeps_case():
    cased = train_tokenizer(CORPUS + ["Nike Nike Nike"], vocab_size=400, lowercase=False)
    assert "Nike" in cased.tokenize("Nike")


def test_generator_input_and_errors():
    assert isinstance(train_tokenizer((text for text in CORPUS), vocab_size=300), BertTokenizer)
    with pytest.raises(ValueError, match="only"):
        train_tokenizer([], vocab_size=300)
    with pytest.raises(ValueError, match=r"texts\[1\]"):
        train_tokenizer(["red shoes", None], vocab_size=300)
    with pytest.raises(ValueError, match="vocab_size"):
        train_tokenizer(CORPUS, vocab_size=100)
