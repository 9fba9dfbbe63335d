"""MakeProcessor: equals its tokenizer and image processor, round-trips (fitted keywords included), feeds MakeModel,
and rejects bad input with errors that name the argument and the row."""

import copy
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import PIL.Image
import pytest
import torch
from transformers import AutoProcessor, ViTImageProcessorPil

from make_hf import KeywordExtractor, MakeConfig, MakeModel, MakeProcessor, hash_term, train_tokenizer
from make_hf.image_utils import InvalidInputTypeError


TITLES = [
    "2024 new breathable running shoes men women mesh sport sneakers",
    "red leather wallet for men slim card holder",
    "women summer dress cotton floral",
    "透气跑步鞋男女网面运动鞋",
    "shockproof case for iphone 15 pro max clear cover",
]
QUERIES = ["running sneakers", "slim wallet", "floral dress", "跑步鞋", "clear phone case"]
IMAGE_SIZE = 32


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(TITLES + QUERIES, vocab_size=400, min_frequency=1)


@pytest.fixture(scope="module")
def processor(tokenizer):
    image_processor = ViTImageProcessorPil(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    return MakeProcessor(image_processor, tokenizer, query_max_length=12, title_max_length=24).fit_keywords(
        TITLES, QUERIES
    )


def rgb_images(count, seed=0):
    rng = np.random.default_rng(seed)
    return [PIL.Image.fromarray(rng.integers(0, 256, (20 + i, 30, 3), dtype=np.uint8)) for i in range(count)]


def tokenizer_output(tokenizer, texts, max_length):
    return tokenizer(
        texts, padding="max_length", truncation=True, max_length=max_length, return_token_type_ids=False,
        return_tensors="pt",
    )  # fmt: skip


def test_query_equals_the_tokenizer_at_the_query_max_length(processor, tokenizer):
    batch = processor(query=QUERIES)
    expected = tokenizer_output(tokenizer, QUERIES, 12)
    assert set(batch) == {"query_input_ids", "query_attention_mask"}
    assert torch.equal(batch["query_input_ids"], expected["input_ids"])
    assert torch.equal(batch["query_attention_mask"], expected["attention_mask"])
    single = processor(query=QUERIES[0])
    assert torch.equal(single["query_input_ids"], expected["input_ids"][:1])


def test_title_equals_the_tokenizer_at_the_title_max_length(processor, tokenizer):
    batch = processor(title=TITLES)
    expected = tokenizer_output(tokenizer, TITLES, 24)
    assert set(batch) == {"title_input_ids", "title_attention_mask"}
    assert torch.equal(batch["title_input_ids"], expected["input_ids"])
    assert torch.equal(batch["title_attention_mask"], expected["attention_mask"])


def test_images_equal_the_image_processor(processor):
    images = rgb_images(3)
    batch = processor(images=images)
    expected = processor.image_processor(images, return_tensors="pt")["pixel_values"]
    assert batch["pixel_values"].shape == (3, 3, IMAGE_SIZE, IMAGE_SIZE)
    assert batch["pixel_values"].dtype == torch.float32
    assert torch.equal(batch["pixel_values"], expected)
    assert batch["image_mask"].tolist() == [1, 1, 1]


def test_every_image_input_kind_and_mode_is_accepted(processor, tmp_path):
    path = tmp_path / "cut_out.png"
    PIL.Image.new("RGBA", (9, 7), (10, 200, 30, 0)).save(path)
    base = PIL.Image.new("RGB", (9, 7), (10, 200, 30))
    images = [
        base, base.convert("RGBA"), base.convert("LA"), base.convert("P"), base.convert("L"), base.convert("CMYK"),
        PIL.Image.fromarray(np.full((7, 9), 40000, dtype=np.uint16)), np.asarray(base),
        np.asarray(base).astype(np.float32) / 255, torch.from_numpy(np.array(base)).permute(2, 0, 1).contiguous(),
        str(path), path.read_bytes(), None,
    ]  # fmt: skip
    batch = processor(title=["a product"] * len(images), images=images)
    assert batch["pixel_values"].shape == (len(images), 3, IMAGE_SIZE, IMAGE_SIZE)
    assert batch["image_mask"].tolist() == [1] * (len(images) - 1) + [0]
    assert torch.count_nonzero(batch["pixel_values"][-1]) == 0
    # The fully transparent PNG is white after compositing: the normalised maximum everywhere.
    assert torch.allclose(batch["pixel_values"][10], torch.ones(3, IMAGE_SIZE, IMAGE_SIZE))


def test_missing_titles_and_images_are_masked_rows(processor, tokenizer):
    images = rgb_images(3)
    batch = processor(title=[TITLES[0], None, "   "], images=[None, images[1], images[2]])
    assert batch["title_attention_mask"].sum(dim=1).tolist()[1:] == [0, 0]
    assert batch["title_input_ids"][1:].eq(tokenizer.pad_token_id).all()
    assert batch["title_attention_mask"][0].sum() > 0
    assert batch["image_mask"].tolist() == [0, 1, 1]
    assert torch.count_nonzero(batch["pixel_values"][0]) == 0


def test_keywords_are_extracted_for_training_calls_only(processor, tokenizer):
    training = processor(query=QUERIES, title=TITLES)
    expected_strings = [" ".join(processor.keyword_extractor.extract(title, 8)) for title in TITLES]
    expected = tokenizer_output(tokenizer, expected_strings, 12)
    assert torch.equal(training["keyword_input_ids"], expected["input_ids"])
    assert torch.equal(training["keyword_attention_mask"], expected["attention_mask"])
    assert "iphone" not in expected_strings[4] and "running" in expected_strings[0]
    # Catalogue and serving calls carry no keywords unless asked for.
    assert "keyword_input_ids" not in processor(title=TITLES)
    assert "keyword_input_ids" not in processor(query=QUERIES)
    assert "keyword_input_ids" not in processor(query=QUERIES, title=TITLES, extract_keywords=False)
    assert torch.equal(processor(title=TITLES, extract_keywords=True)["keyword_input_ids"], expected["input_ids"])
    # Explicit keywords win over extraction; lists of terms are joined.
    explicit = processor(query=QUERIES[:2], title=TITLES[:2], keywords=["red sneakers", ["slim", "wallet"]])
    assert torch.equal(
        explicit["keyword_input_ids"], tokenizer_output(tokenizer, ["red sneakers", "slim wallet"], 12)["input_ids"]
    )


def test_processor_level_switch_follows_keyword_enhancement(tokenizer):
    config = MakeConfig.from_preset("make-no-ke", size="tiny", vocab_size=len(tokenizer))
    assert config.keyword_enhancement is False
    off = MakeProcessor.from_config(config, tokenizer)
    assert off.extract_keywords is False
    assert "keyword_input_ids" not in off(query=QUERIES, title=TITLES)
    assert "keyword_input_ids" in off(query=QUERIES, title=TITLES, extract_keywords=True)


def test_term_ids_make_coverage_a_set_test(processor):
    batch = processor(query=["running sneakers", "slim wallet", "floral dress"], title=TITLES[:3])
    query_terms, keyword_terms = batch["query_term_ids"], batch["keyword_term_ids"]
    assert query_terms.shape == keyword_terms.shape == (3, 12) and query_terms.dtype == torch.long
    assert query_terms[0, :2].tolist() == [hash_term("running"), hash_term("sneakers")]
    assert query_terms[0, 2:].eq(0).all()

    def covers(i, j):
        query = set(query_terms[j][query_terms[j] != 0].tolist())
        return bool(query) and query <= set(keyword_terms[i][keyword_terms[i] != 0].tolist())

    assert [[covers(i, j) for j in range(3)] for i in range(3)] == [
        [True, False, False],
        [False, True, False],
        [False, False, True],
    ]
    # A query whose terms are all uninformative has no terms and so is never covered.
    assert processor(query=["2024 new"], title=[TITLES[0]])["query_term_ids"].eq(0).all()


def test_return_tensors_numpy_and_lists(processor):
    as_numpy = processor(query=QUERIES[:2], title=TITLES[:2], images=rgb_images(2), return_tensors="np")
    as_torch = processor(query=QUERIES[:2], title=TITLES[:2], images=rgb_images(2))
    as_lists = processor(query=QUERIES[:2], title=TITLES[:2], images=rgb_images(2), return_tensors=None)
    assert set(as_numpy) == set(as_torch) == set(as_lists)
    for key in as_torch:
        assert isinstance(as_numpy[key], np.ndarray)
        assert np.array_equal(as_numpy[key], as_torch[key].numpy())
        assert np.array_equal(np.asarray(as_lists[key]), as_torch[key].numpy())


def _same_outputs(first, second):
    assert set(first) == set(second)
    for key in first:
        assert torch.equal(first[key], second[key]), key


def test_save_load_and_autoprocessor_round_trip_keep_the_fitted_keywords(processor, tmp_path):
    processor.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "processor_config.json").read_text())
    assert saved["keyword_extractor_state"] == processor.keyword_extractor.to_dict()
    assert saved["auto_map"]["AutoProcessor"] == "processing_make.MakeProcessor"
    for module in ("processing_make.py", "keywords.py", "image_utils.py"):
        assert (tmp_path / module).is_file(), module

    inputs = dict(query=QUERIES, title=TITLES, images=rgb_images(5))
    expected = processor(**inputs)
    for loaded in (MakeProcessor.from_pretrained(tmp_path), AutoProcessor.from_pretrained(tmp_path)):
        assert type(loaded) is MakeProcessor
        assert loaded.keyword_extractor == processor.keyword_extractor and loaded.keyword_extractor.is_fitted
        assert (loaded.query_max_length, loaded.title_max_length, loaded.num_keywords) == (12, 24, 8)
        _same_outputs(loaded(**inputs), expected)


def test_autoprocessor_loads_the_saved_code_without_make_hf(processor, tmp_path):
    saved, result = tmp_path / "saved", tmp_path / "result.npz"
    processor.save_pretrained(saved)
    inputs = dict(query=QUERIES, title=TITLES, images=[np.asarray(image) for image in rgb_images(5)])
    np.savez(tmp_path / "images.npz", *inputs["images"])
    script = textwrap.dedent(
        f"""
        import json, sys
        import numpy as np
        from transformers import AutoProcessor
        images = list(np.load({str(tmp_path / "images.npz")!r}).values())
        processor = AutoProcessor.from_pretrained({str(saved)!r}, trust_remote_code=True)
        assert "make_hf" not in sys.modules, "make_hf was imported"
        assert type(processor).__module__.startswith("transformers_modules."), type(processor).__module__
        batch = processor(query={QUERIES!r}, title={TITLES!r}, images=images, return_tensors="np")
        np.savez({str(result)!r}, **batch)
        """
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules")}
    completed = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert completed.returncode == 0, completed.stderr[-4000:]
    remote = np.load(result)
    expected = processor(**inputs, return_tensors="np")
    assert set(remote.files) == set(expected)
    for key in expected:
        assert np.array_equal(remote[key], expected[key]), key


def test_from_config_matches_the_vision_tower_and_checks_lengths(tokenizer):
    config = MakeConfig.from_preset("make-tiny", vocab_size=len(tokenizer), image_size=48)
    processor = MakeProcessor.from_config(config, tokenizer, title_max_length=32)
    assert processor.image_size == (48, 48) and processor.extract_keywords is True
    assert processor(images=rgb_images(1))["pixel_values"].shape == (1, 3, 48, 48)
    too_long = config.query_config.max_position_embeddings + 1
    with pytest.raises(ValueError, match="query_max_length"):
        MakeProcessor.from_config(config, tokenizer, query_max_length=too_long)


def test_keyword_state_accepts_an_extractor_and_rejects_other_types(processor):
    extractor = KeywordExtractor().fit(TITLES)
    rebuilt = MakeProcessor(processor.image_processor, processor.tokenizer, keyword_extractor_state=extractor)
    assert rebuilt.keyword_extractor is extractor
    with pytest.raises(InvalidInputTypeError, match="keyword_extractor_state"):
        MakeProcessor(processor.image_processor, processor.tokenizer, keyword_extractor_state="state.json")
    with pytest.raises(ValueError, match="title_max_length"):
        MakeProcessor(processor.image_processor, processor.tokenizer, title_max_length=0)


@pytest.mark.parametrize(
    "argument, value, message",
    [
        ("query_max_length", 10**9, r"`query_max_length`=1000000000 exceeds the bound 8192 \(`make_hf"),
        ("title_max_length", 600, "`title_max_length`=600 exceeds the tokenizer's `model_max_length`=512"),
        ("num_keywords", 10**6, "`num_keywords`=1000000 exceeds the bound 1024"),
    ],
)
def test_absurd_lengths_are_refused_before_anything_is_allocated(processor, tmp_path, argument, value, message):
    assert processor.tokenizer.model_max_length == 512
    with pytest.raises(ValueError, match=message):
        MakeProcessor(processor.image_processor, processor.tokenizer, **{argument: value})
    processor.save_pretrained(tmp_path)
    config_path = tmp_path / "processor_config.json"
    crafted = json.loads(config_path.read_text())
    crafted[argument] = value
    config_path.write_text(json.dumps(crafted))
    with pytest.raises(ValueError, match=message):
        MakeProcessor.from_pretrained(tmp_path)


def test_the_text_length_ceiling_holds_for_a_tokenizer_without_a_limit(processor):
    unlimited = copy.deepcopy(processor.tokenizer)
    unlimited.model_max_length = int(1e30)  # what transformers sets when a tokenizer has no known limit
    assert MakeProcessor(processor.image_processor, unlimited, query_max_length=4096).query_max_length == 4096
    with pytest.raises(ValueError, match="`query_max_length`=8193 exceeds the bound 8192"):
        MakeProcessor(processor.image_processor, unlimited, query_max_length=8193)


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({}, ValueError, "at least one of `query`, `title`, `images`"),
        ({"query": QUERIES[:2], "title": TITLES[:3]}, ValueError, "`query` has 2, `title` has 3"),
        ({"query": QUERIES[:2], "images": [None]}, ValueError, "`images` has 1"),
        ({"query": ["red shoes", "  "]}, ValueError, r"`query\[1\]` is empty"),
        ({"query": ["red shoes", ""]}, ValueError, r"`query\[1\]` is empty"),
        ({"query": []}, ValueError, "Empty batch"),
        ({"query": 5}, InvalidInputTypeError, "`query` must be a string"),
        ({"query": ["red shoes", 7]}, InvalidInputTypeError, r"`query\[1\]` must be a string"),
        ({"title": ["red shoes", b"bytes"]}, InvalidInputTypeError, r"`title\[1\]` must be a string or None"),
        ({"title": TITLES[:1], "keywords": [3]}, InvalidInputTypeError, r"`keywords\[0\]`"),
        ({"title": ["red shoes", None]}, ValueError, r"row 1 has neither a title nor an image"),
        ({"title": [None], "images": [None]}, ValueError, r"`title\[0\]` is empty, `images\[0\]` is None"),
        ({"images": [np.zeros((4, 4, 3), np.uint8), object()]}, InvalidInputTypeError, r"`images\[1\]`"),
        ({"query": "red shoes", "return_tensors": "tf"}, ValueError, "return_tensors"),
        ({"query": "red shoes", "extract_keywords": True}, ValueError, "needs `title`"),
    ],
)
def test_bad_inputs_name_the_argument_and_row(processor, kwargs, error, message):
    with pytest.raises(error, match=message):
        processor(**kwargs)


def test_wrong_types_are_also_value_errors(processor):
    with pytest.raises(ValueError):
        processor(query=5)


def test_missing_and_unreadable_image_files(processor, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"`images\[1\]`.*missing\.jpg"):
        processor(title=TITLES[:2], images=[rgb_images(1)[0], str(tmp_path / "missing.jpg")])
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    with pytest.raises(ValueError, match=r"`images\[0\]`.*broken\.png"):
        processor(title=TITLES[:1], images=[str(broken)])


@pytest.fixture(scope="module")
def tiny_model(tokenizer):
    torch.manual_seed(0)
    config = MakeConfig.from_preset("make-tiny", vocab_size=len(tokenizer))
    model = MakeModel(config).eval()
    processor = MakeProcessor.from_config(config, tokenizer).fit_keywords(TITLES, QUERIES)
    return model, processor


SUBSETS = [
    ("query",),
    ("title",),
    ("images",),
    ("title", "images"),
    ("query", "title"),
    ("query", "images"),
    ("query", "title", "images"),
    ("query", "title", "images", "keywords"),
]


@pytest.mark.parametrize("subset", SUBSETS, ids=["+".join(subset) for subset in SUBSETS])
def test_model_runs_on_the_processor_output(tiny_model, subset):
    model, processor = tiny_model
    available = {
        "query": QUERIES[:4],
        "title": TITLES[:3] + [None] if "images" in subset else TITLES[:4],
        "images": rgb_images(2) + [None] + rgb_images(1) if "title" in subset else rgb_images(4),
        "keywords": ["running sneakers", "wallet", None, "运动鞋"],
    }
    batch = processor(**{name: available[name] for name in subset})
    with torch.no_grad():
        outputs = model(**batch, return_loss=len(subset) > 1)
    if "query" in subset:
        assert outputs.query_embeds.shape == (4, model.config.projection_dim)
    if "title" in subset or "images" in subset:
        assert outputs.product_embeds.shape == (4, model.config.projection_dim)
        assert torch.isfinite(outputs.product_embeds).all()
    if len(subset) > 1 and "query" in subset:
        assert torch.isfinite(outputs.loss)
    if "keyword_input_ids" in batch:
        assert outputs.keyword_embeds.shape == (4, model.config.projection_dim)
