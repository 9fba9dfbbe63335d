"""The training data path does each thing once: cached keywords and pixels give the batches of no cache, DataLoader
workers still report dropped rows, and the logs split each step into data and compute time."""

import json
import os

import pytest
import torch

from make_hf import MakeConfig, MakeProcessor, train_tokenizer
from make_hf.data import MakeCollator, make_synthetic_shop
from make_hf.data.bounded_cache import BoundedCache
from make_hf.image_feature_cache import image_content_key, keep_images_encoded
from make_hf.training import PretrainArguments, pretrain
from make_hf.training import trainer as trainer_module
from model_inputs import TINY_RUN

TINY = dict(TINY_RUN, synthetic_products=96, logging_steps=2)


@pytest.fixture(scope="module")
def shop():
    return make_synthetic_shop(48, seed=0)


@pytest.fixture(scope="module")
def processor(shop):
    train = shop["train"]
    tokenizer = train_tokenizer(list(train["query"]) + list(train["title"]), vocab_size=300)
    config = MakeConfig.from_preset("make-tiny", vocab_size=len(tokenizer))
    return MakeProcessor.from_config(config, tokenizer).fit_keywords(list(train["title"]), list(train["query"]))


def _rows(shop, count=12):
    encoded = keep_images_encoded(shop["train"])  # as training reads them: {"bytes", "path"}, decoded by the collator
    rows = [encoded[i] for i in range(count)]
    rows[1] = dict(rows[1], title=None)  # an image-only product: never served from the pixel cache
    rows[2] = dict(rows[2], image=None)  # a title-only product
    return rows


def _assert_same(left, right):
    assert left.keys() == right.keys()
    for key in left:
        assert left[key].dtype == right[key].dtype, key
        assert torch.equal(left[key], right[key]), f"{key} differs"


def test_cached_keywords_and_pixels_give_the_batches_of_no_cache(shop, processor):
    rows = _rows(shop)
    plain = MakeCollator(processor, keyword_cache_size=0)
    cached = MakeCollator(processor, pixel_cache_mib=16)
    expected = plain(rows)
    first, second = cached(rows), cached(rows)  # the second is served from both caches
    _assert_same(expected, first)
    _assert_same(expected, second)
    assert "keyword_term_ids" in expected and expected["image_mask"].sum() == len(rows) - 1
    distinct_titles = len({row["title"] for row in rows if row["title"]})
    assert len(cached.keyword_cache) == distinct_titles and cached.keyword_cache.hits >= distinct_titles
    # The second call decodes no image of a row with a title; the image-only row is decoded each time.
    cacheable = [row for row in rows if row["title"] and row["image"]]
    distinct_images = len({image_content_key(row["image"]) for row in cacheable})
    assert 1 < distinct_images < len(cacheable)  # products recur with other queries
    assert len(cached.pixel_cache) == distinct_images and cached.pixel_cache.hits == len(cacheable)


def test_a_cached_keyword_string_is_what_the_extractor_gives(shop, processor):
    collator = MakeCollator(processor)
    title = shop["train"][0]["title"]
    expected = " ".join(processor.keyword_extractor.extract(title, processor.num_keywords))
    assert collator._keywords(title) == expected == collator._keywords(title)


def test_mixed_batches_of_cached_and_new_images_match_no_cache(shop, processor):
    rows = _rows(shop, 16)
    cached = MakeCollator(processor, pixel_cache_mib=16)
    cached(rows[:8])
    _assert_same(MakeCollator(processor)(rows[4:12]), cached(rows[4:12]))


def test_the_bounded_cache_drops_the_least_recently_used_entry():
    cache = BoundedCache(10, size_of=len)
    cache.put("a", "xxxx")
    cache.put("b", "xxxx")
    assert cache.get("a") == "xxxx"  # now "b" is the least recently used
    cache.put("c", "xxxx")
    assert "b" not in cache and "a" in cache and "c" in cache and cache.size == 8
    cache.put("huge", "x" * 11)
    assert "huge" not in cache
    with pytest.raises(ValueError, match="non-negative"):
        BoundedCache(-1)


def test_a_run_with_two_workers_reports_a_row_that_broke_after_loading(tmp_path, monkeypatch):
    build = trainer_module.build_model_and_processor

    def build_then_break_an_image(args, data, *rest, **options):
        built = build(args, data, *rest, **options)  # the rows are checked and the processor fitted: now it breaks
        broken = {"bytes": b"not a png any more", "path": None}
        data.train = keep_images_encoded(data.train).map(lambda row, i: {"image": broken} if i == 5 else {},
                                                          with_indices=True)
        return built

    monkeypatch.setattr(trainer_module, "build_model_and_processor", build_then_break_an_image)
    out = str(tmp_path / "run")
    args = dict(TINY, num_train_epochs=1, max_train_steps=None)
    results = pretrain(PretrainArguments(output_dir=out, dataloader_num_workers=2, **args))
    assert results["skipped_rows"]["by_reason"] == {"corrupt_image": 1}
    assert results["steps"] >= 2

    with open(os.path.join(out, "training_history.json"), encoding="utf-8") as f:
        history = json.load(f)["losses"]
    assert history and all(row["data_seconds"] >= 0 and row["compute_seconds"] > 0 for row in history)
    timing = results["step_time"]
    assert timing["compute_seconds"] > 0 and 0 <= timing["data_share"] < 1
    with open(os.path.join(out, "eval_results.json"), encoding="utf-8") as f:
        assert json.load(f)["step_time"] == timing


def test_dataloader_workers_must_not_be_negative():
    with pytest.raises(ValueError, match="--dataloader_num_workers must be 0 or more"):
        PretrainArguments(dataloader_num_workers=-1)


def test_workers_and_the_pixel_cache_keep_the_weights_and_exact_resumption(tmp_path):
    import shutil

    from safetensors.torch import load_file

    def weights(folder):
        return load_file(os.path.join(folder, "model.safetensors"))

    in_process = str(tmp_path / "in_process")
    pretrain(PretrainArguments(output_dir=in_process, **TINY))
    full = str(tmp_path / "full")
    cached = dict(TINY, dataloader_num_workers=2, pixel_cache_mib=8)
    pretrain(PretrainArguments(output_dir=full, checkpointing_steps=2, **cached))
    resumed = str(tmp_path / "resumed")
    os.makedirs(os.path.join(resumed, "checkpoints"))
    shutil.copytree(os.path.join(full, "checkpoints", "checkpoint-2"),
                    os.path.join(resumed, "checkpoints", "checkpoint-2"))
    pretrain(PretrainArguments(output_dir=resumed, resume_from_checkpoint="latest", **cached))
    expected = weights(in_process)
    for other in (weights(full), weights(resumed)):
        assert expected.keys() == other.keys()
        assert all(torch.equal(expected[name], other[name]) for name in expected)
