"""The generated model card is a valid Hub card whose model-index carries the run's retrieval metrics."""

import json
from pathlib import Path

import pytest
from huggingface_hub import ModelCard, ModelCardData
from huggingface_hub.repocard_data import model_index_to_eval_results

from make_hf import PRESET_NAMES, MakeConfig
from make_hf.modelcard import DEFAULT_TAGS, generate_model_card, metric_groups

REPO_ROOT = Path(__file__).resolve().parent.parent

# The shape of `make_hf.evaluation.evaluate_retrieval`'s result: per condition, the overall metrics and breakdowns.
EVALUATION = {
    "num_products": 160,
    "num_queries": 400,
    "title+image": {
        "overall": {"recall@1": 0.891, "recall@5": 0.95, "recall@10": 0.975, "recall@50": 1.0, "mrr@10": 0.921,
                    "ndcg@10": 0.934, "num_queries": 400},
        "by_bucket": {"seen": {"recall@1": 0.93, "recall@10": 0.99}, "title_only_term": {"recall@1": 0.67}},
        "num_retrievable_products": 160,
    },
    "title": {"overall": {"Recall@1": 0.70, "recall@10": 0.90, "eval_mrr@10": 0.75}},
    "mean_image_weight": 0.53,
    "image_weight_by_category_group": {"image_decided": 0.9, "title_decided": 0.07},
}


def _reload(card: ModelCard, tmp_path: Path) -> ModelCard:
    path = tmp_path / "README.md"
    card.save(path)
    return ModelCard.load(path)


def test_card_parses_and_model_index_carries_the_recall(tmp_path):
    config = MakeConfig.from_preset("make-tiny")
    evaluation_file = tmp_path / "eval.json"
    evaluation_file.write_text(json.dumps(EVALUATION))

    card = generate_model_card(
        config,
        evaluation_file,
        model_id="org/make-tiny",
        preset="make-small",
        dataset_name="synthetic shop",
        training_args={"learning_rate": 3e-4, "max_steps": 300},
        num_parameters=123_456,
    )
    loaded = _reload(card, tmp_path)
    data = loaded.data
    assert isinstance(data, ModelCardData)
    assert data.library_name == "transformers"
    assert data.pipeline_tag is None  # feature-extraction would promise a pipeline that cannot encode a product
    assert data.license == "apache-2.0"
    assert set(DEFAULT_TAGS) <= set(data.tags)
    assert data.model_name == "org/make-tiny"

    found = {
        (result.dataset_config, result.metric_type): result.metric_value
        for result in data.eval_results
    }
    assert found[("title+image", "recall@1")] == pytest.approx(0.891)
    assert found[("title+image", "recall@50")] == pytest.approx(1.0)
    assert found[("title+image", "ndcg@10")] == pytest.approx(0.934)
    assert found[("title", "recall@1")] == pytest.approx(0.70)  # key case normalised
    assert found[("title", "mrr@10")] == pytest.approx(0.75)  # prefix dropped
    assert len(found) == 9  # headline numbers only: breakdowns and image weights stay in the body
    assert all(result.task_type == "information-retrieval" for result in data.eval_results)
    assert all(result.dataset_split == "test" for result in data.eval_results)

    # The raw YAML is the Hub's model-index format, readable without ModelCardData.
    model_name, results = model_index_to_eval_results(loaded.data.to_dict()["model-index"])
    assert model_name == "org/make-tiny" and len(results) == len(data.eval_results)

    # The body tells the same numbers and the run's settings.
    assert "**condition title+image**" in loaded.text
    assert "| all queries | 0.891 | 0.950 | 0.975 | 1.000 | 0.921 | 0.934 |" in loaded.text
    assert "| bucket: title_only_term | 0.670 | - | - | - | - | - |" in loaded.text
    assert "400 queries, 160 products" in loaded.text
    assert "image_decided: 0.90; title_decided: 0.07" in loaded.text
    assert "| max_steps | 300 |" in loaded.text
    assert "bert, 2 layers, hidden 32" in loaded.text
    assert "123,456" in loaded.text
    assert 'MakeModel.from_pretrained("org/make-tiny")' in loaded.text


def test_breakdowns_can_go_into_the_model_index(tmp_path):
    card = generate_model_card(MakeConfig.from_preset("make-tiny"), EVALUATION, model_index_breakdowns=True)
    configs = {result.dataset_config for result in _reload(card, tmp_path).data.eval_results}
    assert configs == {"title+image", "title+image/bucket=seen", "title+image/bucket=title_only_term", "title"}


def test_card_from_a_saved_config_without_evaluation(tmp_path):
    config = MakeConfig.from_preset("clip", size="tiny")
    config.save_pretrained(tmp_path)
    loaded = _reload(generate_model_card(tmp_path, model_id="org/clip-tiny"), tmp_path)
    assert loaded.data.eval_results is None
    assert "model-index" not in loaded.data.to_dict()
    assert "the query encoder (shared)" in loaded.text  # CLIP baseline: one text tower
    assert "mean of the title and image embeddings" in loaded.text
    assert "No evaluation was attached" in loaded.text


def test_card_names_a_pretrained_timm_image_tower(tmp_path):
    from transformers import TimmWrapperConfig

    vision = TimmWrapperConfig.from_dict({
        "architecture": "tf_efficientnet_lite0", "num_features": 1280, "num_classes": 0,
        "pretrained_cfg": {"input_size": [3, 224, 224], "crop_pct": 0.875, "mean": [0.5] * 3, "std": [0.5] * 3},
    })
    tiny = MakeConfig.from_preset("make-tiny")
    config = MakeConfig(query_config=tiny.query_config, vision_config=vision, vision_pooling="pooler")
    config.save_pretrained(tmp_path)
    loaded = _reload(generate_model_card(tmp_path, model_id="org/make-lite0"), tmp_path)
    assert "timm tf_efficientnet_lite0, 1280 features, 224 px" in loaded.text


@pytest.mark.parametrize("preset", PRESET_NAMES)
def test_every_preset_gets_a_valid_card(preset, tmp_path):
    card = generate_model_card(MakeConfig.from_preset(preset), {"recall@10": 0.5}, preset=preset)
    loaded = _reload(card, tmp_path)
    assert loaded.data.eval_results[0].metric_type == "recall@10"
    assert loaded.data.eval_results[0].dataset_config is None  # top-level metrics: no group


@pytest.mark.parametrize("name", ["make-small", "make-base"])
def test_published_cards_parse(name):
    card = ModelCard.load(REPO_ROOT / "model_cards" / name / "README.md")
    assert card.data.library_name == "transformers"
    assert card.data.pipeline_tag is None
    assert "MakeRetriever.from_pretrained(" in card.text and "trust_remote_code=True" in card.text
    assert f"`{name}`" in card.text
    assert "What it needs" in card.text


def test_metric_groups_reads_nesting_in_order():
    groups = metric_groups({"ndcg@10": 0.5, "recall@5": 0.4, "recall@1": 0.3, "a": {"b": {"mrr@10": 0.2}}})
    assert groups == [((), {"recall@1": 0.3, "recall@5": 0.4, "ndcg@10": 0.5}), (("a", "b"), {"mrr@10": 0.2})]
    groups = metric_groups(EVALUATION)
    assert [path for path, _ in groups] == [
        ("title+image",), ("title+image", "bucket=seen"), ("title+image", "bucket=title_only_term"), ("title",),
    ]
    # Each query's values (evaluate_retrieval(return_per_query=True), --per_query_results) are not card groups.
    with_per_query = {"title": {"overall": {"recall@10": 0.5}, "per_query": {"recall@10": [0.0, 1.0]}}}
    assert metric_groups(with_per_query) == [(("title",), {"recall@10": 0.5})]


@pytest.mark.parametrize(
    "evaluation, message",
    [
        ({"loss": 0.3, "conditions": {"steps": 10}}, "holds no retrieval metric"),
        ({"title": {"overall": {"recall@1": float("nan")}}}, "'title/recall@1' must be a finite number"),
        ({"recall@1": "high"}, "'recall@1' must be a finite number"),
        ([0.3, 0.4], "must be a JSON object"),
    ],
)
def test_bad_evaluations_are_reported(evaluation, message):
    with pytest.raises(ValueError, match=message):
        generate_model_card(MakeConfig.from_preset("make-tiny"), evaluation)


def test_missing_evaluation_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="eval.json"):
        metric_groups(tmp_path / "eval.json")


def test_card_warns_about_recall_on_a_small_catalogue(tmp_path):
    card = _reload(generate_model_card(MakeConfig.from_preset("make-tiny"), EVALUATION), tmp_path)
    # 160 products: Recall@50 needs 500; Recall@1, @5 and @10 are measured on enough.
    assert "Recall@50 on 160 products is not meaningful" in card.text
    assert "Recall@10 on 160" not in card.text


def _run_card(tmp_path, **training_args):
    args = {"model": "make-small", "dataset": "synthetic", "init_from_towers": None, "init_image_tower": None,
            "lock_image_tower": False, **training_args}
    name = training_args.pop("dataset_name", "synthetic-shop")
    card = generate_model_card(MakeConfig.from_preset("make-tiny"), EVALUATION, preset=args["model"],
                               dataset_name=name, training_args=args)
    return _reload(card, tmp_path).text


def test_card_of_a_run_on_own_data_from_pretrained_towers_says_so(tmp_path):
    text = _run_card(tmp_path, dataset="/data/my_logs.jsonl", dataset_name="my_logs.jsonl",
                     init_from_towers=["sentence-transformers/all-MiniLM-L6-v2", str(tmp_path)], lock_image_tower=True)
    assert "synthetic shop" not in text and "from scratch" not in text
    assert "the user's own data, `my_logs.jsonl`" in text
    assert "query and title towers from the text checkpoint `sentence-transformers/all-MiniLM-L6-v2`" in text
    assert f"image tower from the pretrained checkpoint `{tmp_path.name}`; the image tower was locked" in text
    assert '"org/' not in text  # no hub id the user did not give
    assert 'MakeModel.from_pretrained("path/to/make-small")' in text


def test_card_of_a_run_names_an_image_tower_only_initialisation(tmp_path):
    text = _run_card(tmp_path, dataset="emoji-en", dataset_name="emoji-cldr-3d-en", init_image_tower="lite0")
    assert "Emoji-CLDR-3D, English (`emoji-cldr-3d-en`)" in text
    assert "text towers from scratch, image tower from the pretrained checkpoint `lite0`; the image tower was " \
           "fine-tuned" in text
    assert "trained from scratch on the embedded synthetic shop" not in text


def test_card_of_the_default_run_keeps_the_demo_summary(tmp_path):
    text = _run_card(tmp_path)
    assert "trained from scratch on the embedded synthetic shop" in text
    assert "Tower initialisation: all towers from scratch" in text


def test_launch_command_lists_what_differs_from_the_defaults():
    from make_hf.training import PretrainArguments
    from make_hf.training.trainer import _launch_command

    assert _launch_command(PretrainArguments()) == "accelerate launch examples/pretrain.py"
    args = PretrainArguments(dataset="logs.jsonl", init_from_towers=["a", "b"], lock_image_tower=True)
    command = _launch_command(args)
    assert command.split(" \\\n    ")[1:] == ["--init_from_towers a b", "--lock_image_tower", "--dataset logs.jsonl"]


def test_details_say_what_the_title_encoder_shares_and_an_older_config_shares_nothing():
    config = MakeConfig.from_preset("make-tiny").to_dict()
    assert "shares the query encoder's projection and word embeddings (tied)" in generate_model_card(config).text
    config.update(share_projection=False)
    assert "shares the query encoder's word embeddings (tied)" in generate_model_card(config).text
    del config["share_projection"], config["tie_word_embeddings"]  # saved before the fields existed: both off
    assert "shares the query encoder's" not in generate_model_card(config).text
