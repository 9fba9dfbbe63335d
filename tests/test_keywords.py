"""KeywordExtractor: term normalisation, salience (IDF + query boost), "for <brand>", Chinese, state round trip."""

import json
import logging

import pytest

from make_hf import keywords as keywords_module
from make_hf.keywords import KeywordExtractor, hash_term, jieba_available


FIXTURE_TITLE = "2024 new breathable running shoes men women mesh sport sneakers"
FIXTURE_TITLE_ZH = "2024新款透气跑步鞋男女网面运动鞋"

# A small shoe shop: "shoes", "men", "women" are everywhere (low IDF); shoppers search "running" and "sneakers".
SHOP_TITLES = [
    FIXTURE_TITLE,
    "2023 hot sale men casual leather shoes black",
    "women canvas shoes white low top",
    "kids running shoes light breathable",
    "men sport sneakers red size 39-45",
    "women sneakers platform chunky",
    "mesh running sneakers men women lightweight",
    "men formal shoes oxford leather",
    "women sandals summer beach shoes",
]
SHOP_QUERIES = [
    "running sneakers",
    "leather shoes",
    "canvas shoes",
    "kids running shoes",
    "red sneakers",
    "chunky sneakers",
    "running sneakers",
    "oxford shoes",
    "beach sandals",
]


@pytest.fixture(scope="module")
def shop_extractor():
    return KeywordExtractor().fit(SHOP_TITLES, SHOP_QUERIES)


def test_hash_term_is_stable_positive_and_distinct():
    # Literal values: the ids must not change across processes, runs or releases (saved datasets hold them).
    assert hash_term("running") == 1711034389842323314
    assert hash_term("跑步") == 2179747114330375437
    ids = {hash_term(term) for term in ["running", "sneakers", "shoes", "跑步", "Running", ""]}
    assert len(ids) == 6
    assert all(1 <= term_id < 2**62 for term_id in ids)


def test_terms_normalise_and_drop_uninformative_tokens():
    extractor = KeywordExtractor()
    text = "ＲＵＮＮＩＮＧ Shoes, the 2024 NEW hot-sale XL 39-45 100ml 5.5cm Men's t-shirt shoes free shipping"
    assert extractor.terms(text) == ["running", "shoes", "men", "t-shirt"]
    assert extractor.terms("rtx4090 4k 1080p anti-slip") == ["rtx4090", "4k", "1080p", "anti-slip"]
    assert extractor.terms("2024 new hot sale!!") == []


def test_extract_english_fixture(shop_extractor):
    top = shop_extractor.extract(FIXTURE_TITLE, k=8)
    assert "running" in top and "sneakers" in top
    assert "2024" not in top and "new" not in top
    # With room for only a few, the terms shoppers search for (and rare ones) win over "men" and "women".
    top4 = shop_extractor.extract(FIXTURE_TITLE, k=4)
    assert "running" in top4 and "sneakers" in top4
    assert not {"men", "women"} & set(top4)


def test_extract_chinese_fixture_with_jieba():
    assert jieba_available(), "jieba is a dev dependency: pip install -e .[dev]"
    extractor = KeywordExtractor()
    assert extractor.segmenter == "jieba"
    top = extractor.fit([FIXTURE_TITLE_ZH, "男士皮鞋商务正装", "女士凉鞋夏季"], ["跑步鞋", "皮鞋", "凉鞋"]).extract(
        FIXTURE_TITLE_ZH, k=8
    )
    assert "跑步鞋" in top or "运动鞋" in top
    assert "新款" not in top and "2024" not in top


def test_chinese_bigram_fallback_needs_no_segmenter():
    extractor = KeywordExtractor(chinese_segmentation="bigrams")
    assert extractor.terms("透气跑步鞋") == ["透气", "气跑", "跑步", "步鞋"]
    assert extractor.terms("鞋") == ["鞋"]


def test_jieba_state_without_jieba_falls_back_with_a_warning(monkeypatch):
    monkeypatch.setattr(keywords_module, "_JIEBA_TOKENIZER", None)
    monkeypatch.setattr(keywords_module, "_JIEBA_MISSING", True)
    extractor = KeywordExtractor.from_dict({"chinese_segmentation": "jieba"})
    with pytest.warns(UserWarning, match="jieba"):
        assert extractor.terms("跑步鞋") == ["跑步", "步鞋"]


def test_for_other_brand_mentions_are_not_keywords():
    extractor = KeywordExtractor()
    assert extractor.candidates("Shockproof Case for iPhone 15 Pro Max, Clear Cover") == [
        "shockproof",
        "case",
        "clear",
        "cover",
    ]
    assert extractor.candidates("Compatible with Samsung Galaxy S23 charger cable") == ["charger", "cable"]
    assert extractor.candidates("screen protector for ipad air 5 glass") == ["screen", "protector", "glass"]
    assert extractor.candidates("running shoes for men") == ["running", "shoes", "men"]
    assert extractor.candidates("sleeve for 15 inch laptop") == ["sleeve", "laptop"]
    assert "苹果" not in extractor.candidates("适用苹果15手机壳透明")
    assert "手机" in extractor.candidates("适用苹果15手机壳透明")
    # The query-side normalisation keeps them: a shopper may well search "iphone case".
    assert "iphone" in extractor.terms("case for iphone")
    assert KeywordExtractor(drop_for_mentions=False).candidates("case for iphone") == ["case", "iphone"]


def test_rare_terms_outrank_common_ones_and_order_is_the_titles():
    extractor = KeywordExtractor(min_df=1).fit(["red shoes", "blue shoes", "green shoes", "yellow velvet shoes"])
    assert extractor.extract("yellow velvet shoes", k=2) == ["yellow", "velvet"]
    assert extractor.extract("shoes velvet yellow", k=2) == ["velvet", "yellow"]


def test_query_co_occurrence_boosts_searched_terms():
    titles = ["alpha beta item one", "alpha beta item two", "gamma delta"]
    without = KeywordExtractor(min_df=1).fit(titles)
    assert without.extract("beta alpha", k=1) == ["beta"]  # equal IDF: the earlier term wins the tie
    boosted = KeywordExtractor(min_df=1).fit(titles, ["alpha", "alpha", "delta"])
    assert boosted.extract("beta alpha", k=1) == ["alpha"]
    assert boosted.query_hits["alpha"] == (2, 2)


def test_duplicate_titles_count_once_for_the_idf():
    extractor = KeywordExtractor(min_df=1).fit(["red shoes"] * 5 + ["blue shoes"])
    assert extractor.num_titles == 2
    assert extractor.document_frequency == {"red": 1, "shoes": 2, "blue": 1}


def test_min_df_prunes_rare_terms_from_the_state():
    extractor = KeywordExtractor(min_df=2).fit(["red shoes", "blue shoes", "red hat"])
    assert extractor.document_frequency == {"red": 2, "shoes": 2}
    assert extractor.idf("blue") == extractor.idf("never-seen")


def test_unfitted_extractor_keeps_the_first_terms_and_says_so(caplog):
    extractor = KeywordExtractor()
    with caplog.at_level(logging.WARNING, logger="make_hf.keywords"):
        assert extractor.extract(FIXTURE_TITLE, k=3) == ["breathable", "running", "shoes"]
        extractor.extract(FIXTURE_TITLE, k=3)
    assert sum("not fitted" in record.message for record in caplog.records) == 1


def test_fit_is_deterministic_and_state_round_trips_through_json(shop_extractor):
    again = KeywordExtractor().fit(SHOP_TITLES, SHOP_QUERIES)
    assert again.to_dict() == shop_extractor.to_dict()
    state = json.loads(json.dumps(shop_extractor.to_dict()))
    restored = KeywordExtractor.from_dict(state)
    assert restored == shop_extractor
    assert restored.extract_batch(SHOP_TITLES, 3) == shop_extractor.extract_batch(SHOP_TITLES, 3)
    assert [restored.score(t) for t in ("running", "shoes")] == [shop_extractor.score(t) for t in ("running", "shoes")]


def test_extra_stop_words_are_never_terms():
    extractor = KeywordExtractor(extra_stop_words=["AcmeShop"])
    assert extractor.terms("acmeshop running shoes") == ["running", "shoes"]
    assert KeywordExtractor.from_dict(extractor.to_dict()).terms("acmeshop shoes") == ["shoes"]


def test_bad_arguments_raise_clear_errors():
    with pytest.raises(ValueError, match="aligned"):
        KeywordExtractor().fit(["a title", "another title"], ["one query"])
    with pytest.raises(ValueError, match=r"titles\[1\]"):
        KeywordExtractor().fit(["a title", None])
    with pytest.raises(ValueError, match="not a single string"):
        KeywordExtractor().fit("a title")
    with pytest.raises(ValueError, match="chinese_segmentation"):
        KeywordExtractor(chinese_segmentation="spaces")
    with pytest.raises(ValueError, match="k"):
        KeywordExtractor().extract("red shoes", k=0)
    with pytest.raises(ValueError, match="version"):
        KeywordExtractor.from_dict({"state_version": 99})
