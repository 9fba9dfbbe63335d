"""MakeConfig: defaults, presets, overrides, validation and serialisation."""

import math

import pytest
from transformers import AutoConfig, BertConfig, RobertaConfig, ViTConfig

from make_hf import PRESET_NAMES, MakeConfig


def test_defaults_are_bert_bert_vit_with_independent_title_config():
    config = MakeConfig()
    assert isinstance(config.query_config, BertConfig) and isinstance(config.title_config, BertConfig)
    assert isinstance(config.vision_config, ViTConfig)
    assert config.title_config is not config.query_config
    assert config.projection_dim == 256 and config.text_pooling == "mean" and config.fusion == "modal_adaptation"
    assert config.keyword_enhancement and not config.false_negative_masking and not config.share_text_encoder
    assert config.logit_scale_init_value == pytest.approx(math.log(1 / 0.07), abs=1e-4)
    assert config.logit_scale_max == 100.0
    weights = [
        config.query_product_loss_weight,
        config.title_image_loss_weight,
        config.query_title_loss_weight,
        config.query_image_loss_weight,
        config.keyword_title_loss_weight,
        config.query_keyword_loss_weight,
    ]
    assert weights == [1.0, 0.5, 0.25, 0.25, 0.5, 0.5]


@pytest.mark.parametrize(
    ("name", "hidden", "layers", "image_size", "patch_size", "vocab_size"),
    [
        ("make-tiny", 32, 2, 32, 8, 1024),
        ("make-small", 256, 4, 64, 8, 8192),
        ("make-base", 768, 12, 224, 16, 30522),
    ],
)
def test_size_presets(name, hidden, layers, image_size, patch_size, vocab_size):
    config = MakeConfig.from_preset(name)
    for text_config in (config.query_config, config.title_config):
        assert (text_config.hidden_size, text_config.num_hidden_layers, text_config.vocab_size) == (
            hidden,
            layers,
            vocab_size,
        )
    vision = config.vision_config
    assert (vision.hidden_size, vision.num_hidden_layers, vision.image_size, vision.patch_size) == (
        hidden,
        layers,
        image_size,
        patch_size,
    )


@pytest.mark.parametrize("name", PRESET_NAMES)
def test_every_preset_builds_and_round_trips(name, tmp_path):
    sized = name in ("make-tiny", "make-small", "make-base")
    config = MakeConfig.from_preset(name) if sized else MakeConfig.from_preset(name, size="tiny")
    config.save_pretrained(tmp_path)
    loaded = MakeConfig.from_pretrained(tmp_path)
    assert loaded.to_dict() == config.to_dict()
    assert (loaded.title_config is None) == config.share_text_encoder


def test_baselines_default_to_small_and_take_a_size():
    assert MakeConfig.from_preset("clip").query_config.hidden_size == 256
    assert MakeConfig.from_preset("clip", size="tiny").query_config.hidden_size == 32
    assert MakeConfig.from_preset("make-no-ke", size="base").vision_config.image_size == 224


def test_overrides():
    config = MakeConfig.from_preset(
        "make-small",
        vocab_size=5000,
        image_size=32,
        projection_dim=64,
        text_num_hidden_layers=2,
        query_hidden_size=128,
        vision_patch_size=4,
        fusion="mean",
        share_projection=False,  # towers of two widths share neither projection nor word embeddings
        tie_word_embeddings=False,
    )
    assert config.query_config.vocab_size == config.title_config.vocab_size == 5000
    assert config.vision_config.image_size == 32 and config.vision_config.patch_size == 4
    assert config.projection_dim == 64 and config.fusion == "mean"
    assert config.query_config.num_hidden_layers == config.title_config.num_hidden_layers == 2
    assert config.query_config.hidden_size == 128 and config.title_config.hidden_size == 256
    # A field whose name starts with a tower prefix is a MakeConfig field, not a sub-config attribute.
    assert MakeConfig.from_preset("make-tiny", query_title_loss_weight=0.0).query_title_loss_weight == 0.0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(fusion="concat"), "`fusion` must be one of"),
        (dict(text_pooling="max"), "`text_pooling` must be one of"),
        (dict(vision_pooling="max"), "`vision_pooling` must be one of"),
        (dict(projection_dim=0), "`projection_dim` must be a positive integer"),
        (dict(modal_adaptation_hidden_size=-3), "`modal_adaptation_hidden_size`"),
        (dict(share_text_encoder=True, title_config={"model_type": "bert"}), "`title_config` must be None"),
        (dict(title_image_loss_weight=-0.5), "`title_image_loss_weight` must be a non-negative number"),
        (dict(query_keyword_loss_weight=float("nan")), "`query_keyword_loss_weight`"),
        (
            dict(
                query_product_loss_weight=0,
                title_image_loss_weight=0,
                query_title_loss_weight=0,
                query_image_loss_weight=0,
                keyword_title_loss_weight=0,
                query_keyword_loss_weight=0,
            ),
            "All loss weights are 0",
        ),
        (dict(logit_scale_max=1.0), "`logit_scale_max` must be above 1.0"),
        (dict(logit_scale_init_value=5.0), "above log\\(`logit_scale_max`\\)"),
    ],
)
def test_validation_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MakeConfig(**kwargs)


def test_validation_runs_again_at_save_time(tmp_path):
    config = MakeConfig.from_preset("make-tiny")
    config.fusion = "sum"
    with pytest.raises(ValueError, match="`fusion` must be one of"):
        config.save_pretrained(tmp_path)


@pytest.mark.parametrize(
    ("name", "kwargs", "message"),
    [
        ("make-gigantic", {}, "Unknown preset"),
        ("make-tiny", dict(size="base"), "fixes size='tiny'"),
        ("clip", dict(size="huge"), "`size` must be one of"),
        ("make-tiny", dict(num_layers=3), "Unknown override 'num_layers'"),
        ("make-tiny", dict(text_not_an_attribute=3), "Unknown override"),
        ("clip", dict(title_hidden_size=64), "no title encoder"),
    ],
)
def test_preset_errors(name, kwargs, message):
    with pytest.raises(ValueError, match=message):
        MakeConfig.from_preset(name, **kwargs)


def test_any_encoder_config_and_auto_config(tmp_path):
    config = MakeConfig(
        query_config=RobertaConfig(hidden_size=64, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64),
        vision_config={"model_type": "vit", "image_size": 48, "patch_size": 16},
    )
    assert isinstance(config.title_config, RobertaConfig) and config.vision_config.image_size == 48
    config.save_pretrained(tmp_path)
    loaded = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(loaded, MakeConfig) and isinstance(loaded.title_config, RobertaConfig)
    assert AutoConfig.for_model("make").model_type == "make"
