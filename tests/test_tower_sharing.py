"""What the two text towers may share (projection, word embeddings) and a shorter query tower."""

import pytest
import torch
from safetensors import safe_open

from make_hf import MakeConfig, MakeModel
from model_inputs import random_batch, single_torch_thread, tiny_config  # noqa: F401 (autouse fixture)


def build(seed=0, **overrides):
    torch.manual_seed(seed)
    return MakeModel(tiny_config("make-tiny", **overrides))


def test_shared_projection_projects_titles_with_the_query_projection():
    model = build(share_projection=True).eval()
    assert model.title_projection is None
    ids = torch.tensor([[2, 17, 40, 3]])
    with torch.no_grad():
        pooled = model.get_title_features(ids, project=False)
        expected = torch.nn.functional.normalize(model.query_projection(pooled), dim=-1)
        torch.testing.assert_close(model.get_title_features(ids), expected)
    model.train()
    model(**random_batch(model.config)).loss.backward()
    # Both towers' gradients reach the one projection; the towers themselves stay separate.
    assert model.query_projection.weight.grad.abs().sum() > 0
    assert model.title_model is not model.query_model


def test_tied_word_embeddings_are_one_parameter_stored_once(tmp_path):
    model = build(tie_word_embeddings=True)
    query_embeddings = model.query_model.get_input_embeddings().weight
    assert model.title_model.get_input_embeddings().weight is query_embeddings
    assert len(list(model.parameters())) == len(set(map(id, model.parameters())))

    model.train()
    model(**random_batch(model.config)).loss.backward()
    with torch.no_grad():
        query_embeddings -= 0.1 * query_embeddings.grad  # one update moves both towers' embeddings
    assert torch.equal(model.title_model.get_input_embeddings().weight, query_embeddings)

    model.save_pretrained(tmp_path)
    with safe_open(tmp_path / "model.safetensors", "pt") as f:
        stored = [key for key in f.keys() if "word_embeddings" in key]
    assert stored == ["query_model.embeddings.word_embeddings.weight"]
    loaded = MakeModel.from_pretrained(tmp_path).eval()
    assert loaded.title_model.get_input_embeddings().weight is loaded.query_model.get_input_embeddings().weight
    ids = torch.tensor([[2, 17, 40, 3]])
    with torch.no_grad():
        torch.testing.assert_close(loaded.get_title_features(ids), model.eval().get_title_features(ids))


def test_untied_model_keeps_two_embedding_matrices():
    model = build(tie_word_embeddings=False)
    assert model.title_model.get_input_embeddings().weight is not model.query_model.get_input_embeddings().weight


def test_defaults_share_the_projection_and_the_word_embeddings():
    model = build()
    assert model.title_projection is None
    assert model.title_model.get_input_embeddings().weight is model.query_model.get_input_embeddings().weight
    # With one shared text encoder there is nothing left to share: the defaults are implied, not an error.
    shared = MakeModel(tiny_config("clip"))
    assert shared.title_model is None and shared.title_projection is None


def test_checkpoint_saved_without_the_sharing_fields_loads_as_it_was_trained(tmp_path):
    import json

    model = build(share_projection=False, tie_word_embeddings=False).eval()
    model.save_pretrained(tmp_path)
    config_file = tmp_path / "config.json"
    saved = json.loads(config_file.read_text())
    del saved["share_projection"], saved["tie_word_embeddings"]
    config_file.write_text(json.dumps(saved))

    loaded = MakeModel.from_pretrained(tmp_path).eval()
    assert loaded.title_projection is not None
    assert loaded.title_model.get_input_embeddings().weight is not loaded.query_model.get_input_embeddings().weight
    ids = torch.tensor([[2, 17, 40, 3]])
    with torch.no_grad():
        torch.testing.assert_close(loaded.get_title_features(ids), model.get_title_features(ids))


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(tie_word_embeddings=True, title_vocab_size=77), "share `vocab_size`"),
        (dict(share_projection=True, title_hidden_size=64, title_intermediate_size=64), "equal query and title"),
    ],
)
def test_impossible_sharing_is_refused_with_what_to_do(overrides, message):
    with pytest.raises(ValueError, match=message):
        MakeConfig.from_preset("make-tiny", **overrides)


def test_query_tower_keeps_evenly_spaced_layers_of_a_pretrained_tower():
    from transformers import BertConfig, BertModel, ViTConfig

    def six_layer_tower():
        config = BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=6, num_attention_heads=4,
                            intermediate_size=64)
        return BertModel(config, add_pooling_layer=False)

    torch.manual_seed(0)
    text = six_layer_tower()
    vision = ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                       intermediate_size=64)
    originals = [layer.attention.self.query.weight.clone() for layer in text.encoder.layer]
    model = MakeModel.from_towers(query=text, vision=vision, query_num_hidden_layers=3)
    assert model.config.query_config.num_hidden_layers == 3
    assert model.config.title_config.num_hidden_layers == 6  # the title tower is a full copy, taken before
    kept = [layer.attention.self.query.weight for layer in model.query_model.encoder.layer]
    for weight, source in zip(kept, (0, 2, 4)):
        assert torch.equal(weight, originals[source])
    with pytest.raises(ValueError, match=r"in \[1, 6\]"):
        MakeModel.from_towers(query=six_layer_tower(), vision=vision, query_num_hidden_layers=7)
