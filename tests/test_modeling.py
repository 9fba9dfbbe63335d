"""MakeModel: presets train end to end, fusion and masking are exact, Modal Adaptation learns, round trips hold."""

import math

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoConfig, AutoModel, DistilBertConfig, ViTConfig

import make_hf
from make_hf import PRESET_NAMES, MakeConfig, MakeModel, MakeOutput
from model_inputs import random_batch, single_torch_thread, tiny_config  # noqa: F401 (autouse fixture)


LOSS_TERMS = (
    "query_product_loss",
    "title_image_loss",
    "query_title_loss",
    "query_image_loss",
    "keyword_title_loss",
    "query_keyword_loss",
)


def build(preset="make-tiny", seed=0, **overrides):
    torch.manual_seed(seed)
    return MakeModel(tiny_config(preset, **overrides))


@pytest.mark.parametrize("preset", PRESET_NAMES)
def test_preset_trains_every_parameter_it_has(preset):
    model = build(preset).train()
    config = model.config
    output = model(**random_batch(config))

    assert isinstance(output, MakeOutput)
    assert torch.isfinite(output.loss)
    expected_terms = set(LOSS_TERMS) if config.keyword_enhancement else set(LOSS_TERMS[:4])
    assert {name for name in LOSS_TERMS if getattr(output, name) is not None} == expected_terms
    weighted = sum(getattr(config, f"{name}_weight") * getattr(output, name) for name in expected_terms)
    torch.testing.assert_close(output.loss, weighted)

    output.loss.backward()
    without_gradient = [
        name for name, parameter in model.named_parameters() if parameter.grad is None or not parameter.grad.any()
    ]
    assert without_gradient == []

    towers = [model.query_model, model.title_model, model.vision_model]
    assert [tower.config._attn_implementation for tower in towers if tower is not None] == ["sdpa"] * (
        2 if config.share_text_encoder else 3
    )
    names = [name for name, _ in model.named_parameters()]
    assert not any("pooler" in name for name in names)
    if config.share_text_encoder:
        assert model.title_model is None and model.title_projection is None
        assert not any(name.startswith(("title_model", "title_projection")) for name in names)
    else:
        assert any(name.startswith("title_model.") for name in names)
    if config.fusion != "modal_adaptation":
        assert model.modal_adaptation is None
        assert not any(name.startswith("modal_adaptation") for name in names)


def test_presets_set_what_their_names_say():
    assert tiny_config("clip").share_text_encoder and tiny_config("clip").fusion == "mean"
    assert not tiny_config("clip").keyword_enhancement
    assert tiny_config("make-no-ma").fusion == "mean"
    assert not tiny_config("make-no-ke").keyword_enhancement
    assert tiny_config("make-shared-encoder").share_text_encoder
    assert tiny_config("make-fn-mask").false_negative_masking


def test_missing_modality_gets_exactly_the_other_embedding():
    model = build().eval()
    batch = random_batch(model.config)  # row 0: no title, row 1: no image
    with torch.no_grad():
        output = model(**batch)
        weights = output.modal_weights
        torch.testing.assert_close(weights.sum(dim=-1), torch.ones(len(weights)))
        assert weights[0].tolist() == [0.0, 1.0] and weights[1].tolist() == [1.0, 0.0]
        assert torch.equal(output.product_embeds[0], output.image_embeds[0])
        assert torch.equal(output.product_embeds[1], output.title_embeds[1])
        assert ((weights[2:] > 0) & (weights[2:] < 1)).all()

        # Whatever the missing title's tokens are, they do not reach the product.
        changed = dict(batch, title_input_ids=batch["title_input_ids"].clone())
        changed["title_input_ids"][0] = 7
        torch.testing.assert_close(model(**changed).product_embeds[0], output.product_embeds[0], rtol=0, atol=0)

        titles = (batch["title_input_ids"], batch["title_attention_mask"])
        title_output = model.get_product_features(*titles)
        title_only, title_weights = title_output.product_embeds, title_output.modal_weights
        assert torch.equal(title_only[1:], model.get_title_features(*titles)[1:])
        assert title_weights[1:].tolist() == [[1.0, 0.0]] * 5
        # Row 0 has neither a title nor (here) an image: zero embedding, zero weights.
        assert not title_only[0].any() and not title_weights[0].any()

        image_output = model.get_product_features(pixel_values=batch["pixel_values"])
        image_only, image_weights = image_output.product_embeds, image_output.modal_weights
        assert torch.equal(image_only, model.get_image_features(batch["pixel_values"]))
        assert image_weights.tolist() == [[0.0, 1.0]] * 6


@pytest.mark.parametrize(("fusion", "expected"), [("mean", [0.5, 0.5]), ("title", [1.0, 0.0]), ("image", [0.0, 1.0])])
def test_fixed_fusions(fusion, expected):
    model = build(fusion=fusion).eval()
    batch = random_batch(model.config)
    with torch.no_grad():
        output = model(**batch)
    assert output.modal_weights[2:].tolist() == [expected] * 4
    assert output.modal_weights[0].tolist() == [0.0, 1.0] and output.modal_weights[1].tolist() == [1.0, 0.0]


def test_modal_adaptation_learns_which_modality_decides():
    """Half the products can only be told apart by their image, half only by their title."""
    torch.manual_seed(0)
    model = MakeModel(
        tiny_config(title_image_loss_weight=0.0, query_title_loss_weight=0.0, query_image_loss_weight=0.0)
    ).train()
    num_products, half = 16, 8
    generator = torch.Generator().manual_seed(0)
    query_ids = torch.tensor([[2, 10 + i, 3] for i in range(num_products)])
    same_title = [2, 500, 501, 502, 3]
    title_ids = torch.tensor(
        [same_title if i < half else [2, 600 + i, 700 + i, 800 + i, 3] for i in range(num_products)]
    )
    same_image = torch.randn(3, 32, 32, generator=generator)
    images = torch.stack(
        [torch.randn(3, 32, 32, generator=generator) if i < half else same_image for i in range(num_products)]
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    for step in range(200):
        output = model(query_input_ids=query_ids, title_input_ids=title_ids, pixel_values=images)
        if step == 0:
            initial = output.modal_weights[:, 1].detach()
        optimizer.zero_grad()
        output.loss.backward()
        optimizer.step()
        model.clamp_logit_scale()

    image_weight = model.get_product_features(title_ids, pixel_values=images).modal_weights[:, 1].detach()
    assert abs(initial[:half].mean() - initial[half:].mean()) < 0.05
    assert image_weight[:half].mean() - image_weight[half:].mean() > 0.25
    assert image_weight[:half].min() > image_weight[half:].max()
    assert output.query_product_loss < 0.05


def _hand_info_nce(logits, positives, removed=None):
    """Mean over rows with a positive of -mean_{j in P(i)} log softmax_j, computed with Python floats."""
    losses = []
    for i, row in enumerate(logits.tolist()):
        columns = [j for j in range(len(row)) if not (removed and (i, j) in removed)]
        log_norm = math.log(sum(math.exp(row[j]) for j in columns))
        positive = [j for j in range(len(row)) if positives[i][j]]
        if positive:
            losses.append(-sum(row[j] - log_norm for j in positive) / len(positive))
    return sum(losses) / len(losses)


def test_duplicated_product_id_gives_the_multi_positive_loss():
    model = build().eval()
    batch = random_batch(model.config)
    batch["product_ids"] = torch.tensor([5, 9, 9, 3, 5, 5])
    with torch.no_grad():
        output = model(**batch)
    ids = batch["product_ids"].tolist()
    positives = [[ids[i] == ids[j] for j in range(6)] for i in range(6)]
    expected = (
        _hand_info_nce(output.logits_per_query, positives) + _hand_info_nce(output.logits_per_product, positives)
    ) / 2
    assert output.query_product_loss.item() == pytest.approx(expected, rel=1e-5)

    # Unique ids and no ids at all are the same: each row's only positive is itself.
    batch["product_ids"] = torch.arange(6) * 11
    with torch.no_grad():
        unique = model(**batch).query_product_loss
        no_ids = model(**{k: v for k, v in batch.items() if k != "product_ids"}).query_product_loss
    torch.testing.assert_close(unique, no_ids)
    assert unique.item() != pytest.approx(output.query_product_loss.item(), rel=1e-3)


def _term_sets(term_ids):
    return [{t for t in row if t != 0} for row in term_ids.tolist()]


def test_false_negative_masking_removes_exactly_the_covering_products():
    model = build("make-fn-mask").eval()
    batch = random_batch(model.config)
    batch["product_ids"] = torch.tensor([1, 2, 3, 4, 5, 1])
    query_terms, keyword_terms = _term_sets(batch["query_term_ids"]), _term_sets(batch["keyword_term_ids"])
    ids = batch["product_ids"].tolist()
    removed = {
        (i, j)
        for i in range(6)
        for j in range(6)
        if ids[i] != ids[j] and query_terms[i] and query_terms[i] <= keyword_terms[j]
    }
    # Queries 0 and 1 ({7, 8}) are covered by keyword rows 0, 1 and 2; query 5 only by its own row 5, whose product
    # it shares with row 0 (a positive, never masked).
    assert removed == {(0, 1), (0, 2), (1, 0), (1, 2)}
    with torch.no_grad():
        output = model(**batch)
    assert output.masked_negatives.item() == pytest.approx(len(removed) / 6)
    positives = [[ids[i] == ids[j] for j in range(6)] for i in range(6)]
    expected = (
        _hand_info_nce(output.logits_per_query, positives, removed)
        + _hand_info_nce(output.logits_per_product, positives)
    ) / 2
    assert output.query_product_loss.item() == pytest.approx(expected, rel=1e-5)

    model.config.false_negative_masking = False
    with torch.no_grad():
        unmasked = model(**batch)
    assert unmasked.masked_negatives is None
    unmasked_expected = (
        _hand_info_nce(unmasked.logits_per_query, positives) + _hand_info_nce(unmasked.logits_per_product, positives)
    ) / 2
    assert unmasked.query_product_loss.item() == pytest.approx(unmasked_expected, rel=1e-5)


def test_keyword_losses_use_titles_and_covering_pairs_only():
    model = build().eval()
    batch = random_batch(model.config)
    with torch.no_grad():
        output = model(**batch)
    scale = model.logit_scale.exp()
    query_terms, keyword_terms = _term_sets(batch["query_term_ids"]), _term_sets(batch["keyword_term_ids"])
    covers = [[bool(query_terms[i]) and query_terms[i] <= keyword_terms[j] for j in range(6)] for i in range(6)]
    query_keyword = scale * output.query_embeds @ output.keyword_embeds.T
    expected = (
        _hand_info_nce(query_keyword, covers) + _hand_info_nce(query_keyword.T, [list(col) for col in zip(*covers)])
    ) / 2
    assert output.query_keyword_loss.item() == pytest.approx(expected, rel=1e-5)

    # k -> t: keywords against the titles that exist (row 0 has none: neither anchor nor candidate).
    keyword_title = (scale * output.keyword_embeds @ output.title_embeds.T)[1:, 1:]
    expected = _hand_info_nce(keyword_title, [[i == j for j in range(5)] for i in range(5)])
    assert output.keyword_title_loss.item() == pytest.approx(expected, rel=1e-5)

    # Without term ids there is no coverage, hence no q<->k loss; k->t remains.
    without_terms = {k: v for k, v in batch.items() if not k.endswith("term_ids")}
    with torch.no_grad():
        partial = model(**without_terms)
    assert partial.query_keyword_loss is None and partial.keyword_title_loss is not None


def test_mean_pooling_ignores_padding():
    model = build().eval()
    ids = torch.tensor([[2, 40, 41, 3, 0, 0], [2, 50, 3, 0, 0, 0]])
    mask = (ids != 0).long()
    other_padding = ids.masked_fill(mask == 0, 99)
    with torch.no_grad():
        torch.testing.assert_close(model.get_query_features(ids, mask), model.get_query_features(other_padding, mask))
        single = model.get_query_features(ids[:1, :4], mask[:1, :4])
    torch.testing.assert_close(model.get_query_features(ids, mask)[:1], single, atol=1e-6, rtol=1e-5)


def test_logit_scale_is_clamped():
    model = build().eval()
    batch = random_batch(model.config)
    with torch.no_grad():
        model.logit_scale.fill_(10.0)
        output = model(**batch)
    cosine = output.query_embeds @ output.product_embeds.T
    torch.testing.assert_close(output.logits_per_query, 100.0 * cosine)
    model.clamp_logit_scale()
    assert model.logit_scale.item() == pytest.approx(math.log(100.0))


def test_save_and_load_give_identical_outputs(tmp_path):
    for preset in ("make-tiny", "make-shared-encoder"):
        model = build(preset).eval()
        batch = random_batch(model.config)
        model.save_pretrained(tmp_path / preset)
        assert (tmp_path / preset / "model.safetensors").exists()
        loaded = MakeModel.from_pretrained(tmp_path / preset).eval()
        assert loaded.query_model.config._attn_implementation == "sdpa"
        with torch.no_grad():
            expected, actual = model(**batch), loaded(**batch)
        for name in ("loss", "product_embeds", "query_embeds", "keyword_embeds", "modal_weights", "logits_per_query"):
            assert torch.equal(getattr(expected, name), getattr(actual, name)), name


def test_logit_scale_missing_from_a_checkpoint_is_initialised(tmp_path):
    model = build()
    model.save_pretrained(tmp_path)
    weights = load_file(tmp_path / "model.safetensors")
    del weights["logit_scale"]
    save_file(weights, tmp_path / "model.safetensors", metadata={"format": "pt"})
    loaded = MakeModel.from_pretrained(tmp_path)
    assert loaded.logit_scale.item() == pytest.approx(model.config.logit_scale_init_value)


def test_auto_classes_after_import(tmp_path):
    model = build()
    model.save_pretrained(tmp_path)
    assert isinstance(AutoConfig.from_pretrained(tmp_path), MakeConfig)
    assert type(AutoModel.from_pretrained(tmp_path)) is MakeModel
    assert type(AutoModel.from_config(tiny_config())) is MakeModel
    assert make_hf.MakeModel is MakeModel


def test_activation_checkpointing_gives_the_same_gradients():
    # Checkpointing is active in training mode only: switch dropout off instead of using eval().
    no_dropout = dict(text_hidden_dropout_prob=0.0, text_attention_probs_dropout_prob=0.0)
    batch = random_batch(tiny_config())
    gradients, attention_calls = [], []
    for checkpointing in (False, True):
        model = build(**no_dropout).train()
        if checkpointing:
            model.activation_checkpointing_enable()
        calls = []
        model.query_model.encoder.layer[0].attention.register_forward_hook(lambda *args: calls.append(1))
        model(**batch).loss.backward()
        attention_calls.append(len(calls))
        gradients.append({name: p.grad.clone() for name, p in model.named_parameters()})
    # Query and keyword passes; with checkpointing each layer runs again in the backward pass.
    assert attention_calls == [2, 4]
    for name, gradient in gradients[0].items():
        torch.testing.assert_close(gradients[1][name], gradient, msg=name)


def test_other_encoder_families():
    config = MakeConfig(
        query_config=DistilBertConfig(vocab_size=1024, dim=32, n_layers=2, n_heads=4, hidden_dim=64),
        vision_config=ViTConfig(image_size=32, patch_size=8, hidden_size=48, num_hidden_layers=1,
                                num_attention_heads=4, intermediate_size=64),
        projection_dim=16,
        text_pooling="cls",
    )
    assert config.title_config.model_type == "distilbert" and config.title_config is not config.query_config
    torch.manual_seed(0)
    model = MakeModel(config)
    output = model(**random_batch(config))
    output.loss.backward()
    assert output.product_embeds.shape == (6, 16)
    assert all(p.grad is not None for p in model.parameters())


def test_errors_name_the_problem():
    model = build().eval()
    batch = random_batch(model.config)
    with pytest.raises(ValueError, match="same batch size"):
        model(query_input_ids=batch["query_input_ids"], title_input_ids=batch["title_input_ids"][:3])
    with pytest.raises(ValueError, match="no loss term"):
        model(query_input_ids=batch["query_input_ids"], return_loss=True)
    with pytest.raises(ValueError, match="title_input_ids` or `pixel_values"):
        model.get_product_features()
    with pytest.raises(ValueError, match="share_text_encoder"):
        MakeModel(tiny_config("make-shared-encoder"), title_model=model.title_model)
    # Queries alone: embeddings, no loss.
    output = model(query_input_ids=batch["query_input_ids"])
    assert output.loss is None and output.query_embeds.shape == (6, 32)
    assert model(**batch, return_loss=False).loss is None
    assert isinstance(model(**batch, return_dict=False), tuple)
