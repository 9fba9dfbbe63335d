"""One run of the quality benchmark: train (or not) one variant on one dataset with one learning rate and seed, then
score its validation and test splits. `benchmarks/quality.py` plans the runs and calls `python quality_runs.py SPEC`
once per run, in a fresh process, so that every run starts from the same state and a crash costs one run.

The run writes one JSON file: settings, validation and test metrics (title + image; title only and image only too
for the MAKE family), each test query's Recall@10 and MRR@10 in test-split order (for the paired bootstrap), and
the CPU and wall time the run took.
"""

import dataclasses
import json
import math
import os
import resource
import shutil
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402

from make_hf.atomic import write_json  # noqa: E402

FIXED_MIX_IMAGE_WEIGHTS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
PER_QUERY_METRICS = ("recall@10", "mrr@10")


def _overall(section: dict) -> dict:
    return dict(section["overall"])


def _per_query(section: dict) -> dict:
    return {name: section["per_query"][name] for name in PER_QUERY_METRICS}


def _pretrain_arguments(spec: dict, output_dir: str):
    from make_hf.training import PretrainArguments

    return PretrainArguments(
        model=spec["preset"],
        dataset=spec["dataset"],
        emoji_data_dir=spec.get("emoji_data_dir"),
        init_from_towers=spec.get("init_from_towers"),
        init_image_tower=spec.get("init_image_tower"),
        config_overrides=spec.get("config_overrides"),
        query_num_hidden_layers=spec.get("query_num_hidden_layers"),
        lock_image_tower=True,
        image_feature_cache=spec["image_feature_cache"],
        max_train_steps=spec["steps"],
        per_device_train_batch_size=spec["batch_size"],
        learning_rate=spec["learning_rate"],
        warmup_steps=spec["warmup_steps"],
        seed=spec["seed"],
        eval_steps=0,
        report_to="none",
        output_dir=output_dir,
        per_query_results=True,
    )


def _fixed_mix(model, processor, products, queries, cache, weights) -> dict:
    """Recall of `normalize((1 - w) t + w v)` for each image weight `w`, from one encoding of the catalogue."""
    from make_hf.evaluation import encode_products, evaluate_retrieval
    from make_hf.modeling_make import fuse_title_and_image

    encoded = encode_products(model, processor, products, conditions=("title", "image"), image_features=cache,
                              show_progress=False)
    results = {}
    for weight in weights:
        logits = torch.tensor([math.log(1 - weight), math.log(weight)]).expand(len(encoded.product_ids), 2)
        mixed, _ = fuse_title_and_image(encoded.embeds["title"], encoded.embeds["image"], encoded.has_title,
                                        encoded.has_image, logits)
        mix = dataclasses.replace(encoded, embeds={"title+image": mixed},
                                  retrievable={"title+image": encoded.has_title | encoded.has_image},
                                  modal_weights=None)
        results[weight] = evaluate_retrieval(model, processor, products, queries, conditions=("title+image",),
                                             encoded_products=mix, show_progress=False, return_per_query=True)
    return results


def run_make(spec: dict) -> dict:
    """A MakeModel preset trained by `pretrain` (the same loop as examples/pretrain.py)."""
    from make_hf import MakeModel, MakeProcessor
    from make_hf.evaluation import evaluate_retrieval
    from make_hf.image_feature_cache import ImageFeatureCache, keep_images_encoded
    from make_hf.training import pretrain
    from make_hf.training.sources import load_pretraining_data

    output_dir = spec["work_dir"]
    args = _pretrain_arguments(spec, output_dir)
    test = pretrain(args)
    model = MakeModel.from_pretrained(output_dir).lock_image_tower().eval()
    processor = MakeProcessor.from_pretrained(output_dir)
    data = load_pretraining_data(args)
    cache = ImageFeatureCache(args.image_feature_cache, model, processor)
    validation_products = keep_images_encoded(data.validation_products)
    test_products = keep_images_encoded(data.test_products)
    validation = evaluate_retrieval(model, processor, validation_products, data.validation_queries,
                                    conditions=("title+image",), image_features=cache, show_progress=False)
    record = {
        "validation": _overall(validation["title+image"]),
        "test": {condition: _overall(test[condition]) for condition in ("title+image", "title", "image")},
        "per_query": _per_query(test["title+image"]),
        "num_test_products": test["num_products"],
        "num_test_queries": test["num_queries"],
        "mean_image_weight": test.get("mean_image_weight"),
        "image_weight_by_category_group": test.get("image_weight_by_category_group"),
        "train_seconds": test["train_seconds"],
    }
    if spec.get("fixed_mix"):
        on_validation = _fixed_mix(model, processor, validation_products, data.validation_queries, cache,
                                   FIXED_MIX_IMAGE_WEIGHTS)
        best = max(FIXED_MIX_IMAGE_WEIGHTS, key=lambda w: on_validation[w]["title+image"]["overall"]["recall@10"])
        on_test = _fixed_mix(model, processor, test_products, data.test_queries, cache, (best,))[best]
        record["fixed_mix"] = {
            "image_weight": best,
            "validation_recall@10_by_image_weight": {
                str(w): on_validation[w]["title+image"]["overall"]["recall@10"] for w in FIXED_MIX_IMAGE_WEIGHTS
            },
            "validation": _overall(on_validation[best]["title+image"]),
            "test": {"title+image": _overall(on_test["title+image"])},
            "per_query": _per_query(on_test["title+image"]),
        }
    return record


def _peer_record(score, data) -> dict:
    from peers import peer_per_query_metrics, score_peer

    record = {}
    for split in ("validation", "test"):
        products, queries = getattr(data, f"{split}_products"), getattr(data, f"{split}_queries")
        scores = score(list(queries["query"]), list(products["title"]))
        record[split] = score_peer(scores, products, queries)["title"]["overall"]
        if split == "test":
            per_query = peer_per_query_metrics(scores, products, queries)
            record["per_query"] = {name: per_query[name].tolist() for name in PER_QUERY_METRICS}
            record["num_test_products"], record["num_test_queries"] = len(products), len(queries)
    record["test"] = {"title": record["test"]}
    return record


def run_peer(spec: dict) -> dict:
    """BM25, zero-shot MiniLM or a sentence-transformers fine-tune: titles only."""
    from peers import bm25_scores, sentence_encoder_scores
    from sentence_transformers_baseline import finetune_sentence_transformer, sentence_transformer_scores

    from make_hf.training.sources import load_pretraining_data

    data = load_pretraining_data(_pretrain_arguments({**spec, "preset": "make-small"}, spec["work_dir"]))
    kind = spec["kind"]
    if kind == "bm25":
        language = "zh" if spec["dataset"].endswith("-zh") else "en"
        return _peer_record(lambda q, t: bm25_scores(q, t, language=language), data)
    if kind == "zero-shot":
        return _peer_record(lambda q, t: sentence_encoder_scores(q, t, spec["text_tower"]), data)
    started = time.perf_counter()
    model = finetune_sentence_transformer(
        data.train["query"], data.train["title"], data.train["product_id"], spec["text_tower"], spec["work_dir"],
        max_steps=spec["steps"], batch_size=spec["batch_size"], learning_rate=spec["learning_rate"],
        seed=spec["seed"], warmup_steps=spec["warmup_steps"],
    )
    train_seconds = time.perf_counter() - started
    record = _peer_record(lambda q, t: sentence_transformer_scores(model, q, t), data)
    record["train_seconds"] = round(train_seconds, 1)
    return record


def main(spec_path: str) -> None:
    with open(spec_path, encoding="utf-8") as f:
        spec = json.load(f)
    torch.manual_seed(spec["seed"])
    started = time.perf_counter()
    record = run_make(spec) if spec["kind"] == "make" else run_peer(spec)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    local_paths = ("work_dir", "output", "image_feature_cache", "emoji_data_dir", "text_tower", "init_from_towers",
                   "init_image_tower")
    record.update(
        spec={k: v for k, v in spec.items() if k not in local_paths},
        towers={"text": spec.get("text_tower_name"), "image": spec.get("image_tower_name")},
        wall_seconds=round(time.perf_counter() - started, 1),
        cpu_seconds=round(usage.ru_utime + usage.ru_stime, 1),
        torch_threads=torch.get_num_threads(),
    )
    write_json(spec["output"], record)
    shutil.rmtree(spec["work_dir"], ignore_errors=True)  # trained weights are not kept: only the figures


if __name__ == "__main__":
    main(sys.argv[1])
