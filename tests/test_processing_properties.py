"""Property-based tests: any Unicode query or title (blank aside) and any image array give the configured shapes."""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from transformers import ViTImageProcessorPil

from make_hf import KeywordExtractor, MakeProcessor, train_tokenizer
from make_hf.image_utils import load_image


QUERY_LENGTH, TITLE_LENGTH, IMAGE_SIZE = 8, 20, 16
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Blank strings are rejected as queries on purpose (see test_processing.py); everything else must work: any script,
# emoji, control characters, combining marks, CJK (through jieba), right-to-left text.
texts = st.text(min_size=1, max_size=60).filter(lambda text: text.strip())
cjk_heavy = st.text(
    alphabet=st.characters(min_codepoint=0x4E00, max_codepoint=0x4FFF) | st.sampled_from(" 0a-"), min_size=1
)
any_text = texts | cjk_heavy.filter(lambda text: text.strip())


@pytest.fixture(scope="module")
def processor():
    tokenizer = train_tokenizer(
        ["red running sneakers", "透气跑步鞋男女网面运动鞋", "leather wallet for men", "floral summer dress"] * 3,
        vocab_size=300,
        min_frequency=1,
    )
    image_processor = ViTImageProcessorPil(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    return MakeProcessor(
        image_processor, tokenizer, query_max_length=QUERY_LENGTH, title_max_length=TITLE_LENGTH, num_keywords=4
    ).fit_keywords(["red running sneakers", "透气跑步鞋男女网面运动鞋", "leather wallet for men"], ["sneakers", "跑步鞋", "wallet"])


@SETTINGS
@given(data=st.data())
def test_any_unicode_queries_and_titles_give_configured_shapes(processor, data):
    size = data.draw(st.integers(min_value=1, max_value=4), label="batch size")
    queries = data.draw(st.lists(any_text, min_size=size, max_size=size), label="queries")
    titles = data.draw(st.lists(any_text, min_size=size, max_size=size), label="titles")
    batch = processor(query=queries, title=titles)

    for key, length in [
        ("query_input_ids", QUERY_LENGTH),
        ("query_attention_mask", QUERY_LENGTH),
        ("title_input_ids", TITLE_LENGTH),
        ("title_attention_mask", TITLE_LENGTH),
        ("keyword_input_ids", QUERY_LENGTH),
        ("keyword_attention_mask", QUERY_LENGTH),
        ("query_term_ids", QUERY_LENGTH),
        ("keyword_term_ids", QUERY_LENGTH),
    ]:
        assert tuple(batch[key].shape) == (size, length), key
    # [CLS] and [SEP] are always attended, so no row is empty for the model.
    assert (batch["query_attention_mask"].sum(dim=1) >= 2).all()
    assert (batch["keyword_attention_mask"].sum(dim=1) >= 2).all()
    for key in ("query_term_ids", "keyword_term_ids"):
        for row in batch[key].tolist():
            real = [term_id for term_id in row if term_id != 0]
            assert row[: len(real)] == real, "term ids are packed at the front, zero-padded after"
            assert len(set(real)) == len(real)


@SETTINGS
@given(title=any_text, k=st.integers(min_value=1, max_value=6))
def test_extract_is_a_deterministic_ordered_subset_of_the_candidates(processor, title, k):
    extractor = processor.keyword_extractor
    candidates = extractor.candidates(title)
    keywords = extractor.extract(title, k)
    assert keywords == extractor.extract(title, k)
    assert len(keywords) == min(k, len(candidates))
    positions = [candidates.index(keyword) for keyword in keywords]
    assert positions == sorted(positions), "keywords keep the title's order"
    assert all(extractor.is_informative(term) for term in extractor.terms(title))


@SETTINGS
@given(text=any_text)
def test_terms_agree_between_jieba_and_bigram_extractors_on_latin_text(text):
    latin = "".join(ch for ch in text if ord(ch) < 0x2E80)
    assert KeywordExtractor(chinese_segmentation="bigrams").terms(latin) == KeywordExtractor().terms(latin)


image_arrays = st.one_of(
    arrays(np.uint8, st.tuples(st.integers(1, 12), st.integers(1, 12), st.sampled_from([1, 3, 4]))),
    arrays(np.uint8, st.tuples(st.integers(1, 12), st.integers(1, 12))),
    arrays(np.uint16, st.tuples(st.integers(1, 12), st.integers(1, 12))),
    arrays(np.bool_, st.tuples(st.integers(1, 12), st.integers(1, 12))),
    arrays(
        np.float32,
        st.tuples(st.integers(1, 12), st.integers(5, 12), st.just(3)),
        elements=st.floats(0, 255, width=32),
    ),
)


@SETTINGS
@given(array=image_arrays)
def test_any_image_array_becomes_rgb_pixels_of_the_configured_size(processor, array):
    image = load_image(array)
    assert image.mode == "RGB" and image.size == (array.shape[1], array.shape[0])
    batch = processor(images=[array, None], title=[None, "red shoes"])
    assert tuple(batch["pixel_values"].shape) == (2, 3, IMAGE_SIZE, IMAGE_SIZE)
    assert batch["image_mask"].tolist() == [1, 0]
