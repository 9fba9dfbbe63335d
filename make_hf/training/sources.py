"""Where pre-training data comes from: the synthetic shop, Emoji-CLDR-3D, or the user's own triples."""

import os
import random
from collections import defaultdict
from dataclasses import dataclass
from typing import TYPE_CHECKING

import datasets

from ..data.evaluation_splits import EVALUATION_SPLITS, HELD_OUT_SPLITS, products_split, queries_split
from .arguments import PretrainArguments

if TYPE_CHECKING:
    from ..data import SkippedRows

MIN_HELD_OUT_PRODUCTS = 200
"""Products a held-out catalogue gets at least, data allowing: Recall@k on fewer than 10·k products says little."""


@dataclass
class PretrainingData:
    """Training rows plus a validation and a test retrieval set (products and queries with relevant ids)."""

    name: str
    train: datasets.Dataset
    validation_products: datasets.Dataset
    validation_queries: datasets.Dataset
    test_products: datasets.Dataset
    test_queries: datasets.Dataset
    skipped: "SkippedRows | None" = None  # rows dropped while loading, before training

    @classmethod
    def from_dataset_dict(cls, name: str, splits: datasets.DatasetDict, **extra) -> "PretrainingData":
        missing = [split for split in ("train",) + EVALUATION_SPLITS if split not in splits]
        if missing:
            raise ValueError(
                f"Dataset {name!r} lacks the split(s) {missing}; a pre-training dataset needs 'train' rows and "
                f"{list(EVALUATION_SPLITS)} (products and queries with relevant_ids)."
            )
        return cls(name=name, **{split: splits[split] for split in ("train",) + EVALUATION_SPLITS}, **extra)


def load_pretraining_data(args: PretrainArguments) -> PretrainingData:
    """Dispatch `--dataset` to its loader."""
    if args.dataset == "synthetic":
        from ..data import make_synthetic_shop

        shop = make_synthetic_shop(num_products=args.synthetic_products, seed=args.synthetic_seed)
        return PretrainingData.from_dataset_dict("synthetic-shop", shop)
    if args.dataset in ("emoji-en", "emoji-zh"):
        from ..data import build_emoji_cldr_3d

        language = args.dataset.split("-")[1]
        return PretrainingData.from_dataset_dict(
            f"emoji-cldr-3d-{language}", build_emoji_cldr_3d(args.emoji_data_dir, languages=language)
        )
    return _user_data(args)


def _user_data(args: PretrainArguments) -> PretrainingData:
    """The user's triples; products are held out for validation and test unless the data has those splits."""
    from ..data import SkippedRows, load_triples

    skipped = SkippedRows()
    loaded = load_triples(
        args.dataset,
        query_column=args.query_column,
        title_column=args.title_column,
        image_column=args.image_column,
        product_id_column=args.product_id_column,
        skipped=skipped,
    )
    name = os.path.basename(os.path.normpath(args.dataset))
    if isinstance(loaded, datasets.DatasetDict) and all(split in loaded for split in EVALUATION_SPLITS):
        return PretrainingData.from_dataset_dict(name, loaded, skipped=skipped)
    if isinstance(loaded, datasets.DatasetDict):
        if "train" not in loaded:
            raise ValueError(
                f"{args.dataset}: the dataset has splits {list(loaded)}; it needs a 'train' split of training rows "
                f"(and optionally {list(EVALUATION_SPLITS)})."
            )
        loaded = loaded["train"]
    rows = loaded
    data = split_by_product(name, rows, args.validation_fraction, seed=args.seed)
    data.skipped = skipped
    return data


def split_by_product(name: str, rows: datasets.Dataset, fraction: float, seed: int) -> PretrainingData:
    """Hold out products for validation and as many again for test: `fraction` of them, but at least
    `MIN_HELD_OUT_PRODUCTS` (200) per split when the data allows it, and never more than a quarter per split.

    A tenth of a small shop is a catalogue so small that every model finds everything in its top 10; raising the
    held-out share up to a quarter per split gives meaningful Recall@k while at least half the products still
    train. Splitting by product, never by row, keeps a product's other queries from leaking into training. Each
    held-out query string becomes one evaluation query whose relevant ids are every held-out product of that
    split it was issued for.
    """
    if not 0 < fraction < 0.5:
        raise ValueError(f"--validation_fraction must be in (0, 0.5), got {fraction}.")
    product_ids = sorted(set(rows["product_id"]))
    if len(product_ids) < 3:
        raise ValueError(f"{name}: {len(product_ids)} distinct product ids; need at least 3 to hold some out.")
    random.Random(seed).shuffle(product_ids)
    held_out = max(1, int(len(product_ids) * fraction), min(MIN_HELD_OUT_PRODUCTS, len(product_ids) // 4))
    split_of = {pid: "validation" for pid in product_ids[:held_out]}
    split_of.update({pid: "test" for pid in product_ids[held_out : 2 * held_out]})

    indices = defaultdict(list)
    for index, pid in enumerate(rows["product_id"]):
        indices[split_of.get(pid, "train")].append(index)
    splits = {"train": rows.select(indices["train"])}
    for split in HELD_OUT_SPLITS:
        held = rows.select(indices[split])
        products, relevant = {}, defaultdict(list)
        for row in held:
            # Data without a title or an image column (a shop with no pictures) holds products without one.
            products.setdefault(row["product_id"], {"product_id": row["product_id"], "title": row.get("title"),
                                                    "image": row.get("image")})
            if row["product_id"] not in relevant[row["query"]]:
                relevant[row["query"]].append(row["product_id"])
        splits[products_split(split)] = datasets.Dataset.from_list(list(products.values()))
        splits[queries_split(split)] = datasets.Dataset.from_list(
            [{"query": query, "relevant_ids": ids} for query, ids in relevant.items()]
        )
    return PretrainingData(name=name, **splits)


__all__ = ["MIN_HELD_OUT_PRODUCTS", "PretrainingData", "load_pretraining_data", "split_by_product"]
