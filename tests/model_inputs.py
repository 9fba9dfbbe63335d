"""Hand-built model inputs for the model tests (random token ids and pixels; no processor needed)."""

import pytest
import torch

from make_hf import MakeConfig


TINY_SIZE = "tiny"


@pytest.fixture(autouse=True)
def single_torch_thread():
    """Tiny models run as fast on one thread, and two threads on shared, busy cores can be many times slower."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


TINY_RUN = dict(
    model="make-tiny",
    per_device_train_batch_size=8,
    max_train_steps=4,
    warmup_steps=1,
    eval_steps=0,
    logging_steps=1,
    eval_batch_size=64,
    report_to="none",
)
"""`PretrainArguments` of a pre-training run of a few seconds: make-tiny, 4 steps of 8, no validation."""


def tiny_config(preset: str = "make-tiny", **overrides) -> MakeConfig:
    """A preset at tiny size (hidden 32, 2 layers, 32 px images)."""
    if preset in ("make-tiny", "make-small", "make-base"):
        return MakeConfig.from_preset("make-tiny", **overrides)
    return MakeConfig.from_preset(preset, size=TINY_SIZE, **overrides)


def random_batch(
    config: MakeConfig, batch_size: int = 6, seed: int = 0, query_length: int = 8, title_length: int = 20
) -> dict:
    """
    A full training batch: queries, titles, images, keywords, term ids and product ids.

    Row 0 has no title, row 1 no image; the keyword terms of rows 0-2 cover the queries of rows 0 and 1, so that the
    query-keyword loss and false-negative masking have covering pairs (including cross-row ones).
    """
    generator = torch.Generator().manual_seed(seed)
    vocab_size = config.query_config.vocab_size
    image_size = config.vision_config.image_size

    def token_ids(length):
        ids = torch.randint(5, vocab_size, (batch_size, length), generator=generator)
        ids[:, 0] = 2
        return ids

    def attention_mask(length):
        lengths = torch.randint(length // 2, length + 1, (batch_size,), generator=generator)
        return (torch.arange(length)[None, :] < lengths[:, None]).long()

    title_attention_mask = attention_mask(title_length)
    title_attention_mask[0] = 0
    image_mask = torch.ones(batch_size, dtype=torch.long)
    image_mask[1] = 0
    pixel_values = torch.randn(batch_size, 3, image_size, image_size, generator=generator)
    pixel_values[1] = 0
    query_term_ids = torch.zeros(batch_size, 3, dtype=torch.long)
    keyword_term_ids = torch.zeros(batch_size, 5, dtype=torch.long)
    for row in range(batch_size):
        query_term_ids[row, :2] = torch.tensor([100 + row, 200 + row])
        keyword_term_ids[row, :3] = torch.tensor([100 + row, 200 + row, 300 + row])
    query_term_ids[0, :2] = query_term_ids[1, :2] = torch.tensor([7, 8])
    keyword_term_ids[0, :3] = torch.tensor([7, 8, 9])
    keyword_term_ids[1, :3] = torch.tensor([8, 7, 5])
    keyword_term_ids[2, :4] = torch.tensor([1, 7, 8, 300])
    return {
        "query_input_ids": token_ids(query_length),
        "query_attention_mask": attention_mask(query_length),
        "title_input_ids": token_ids(title_length),
        "title_attention_mask": title_attention_mask,
        "pixel_values": pixel_values,
        "image_mask": image_mask,
        "keyword_input_ids": token_ids(query_length),
        "keyword_attention_mask": attention_mask(query_length),
        "query_term_ids": query_term_ids,
        "keyword_term_ids": keyword_term_ids,
        "product_ids": torch.arange(batch_size) + 1000,
    }


__all__ = ["random_batch", "single_torch_thread", "tiny_config"]
