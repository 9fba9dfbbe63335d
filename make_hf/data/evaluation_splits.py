"""The evaluation-split layout every MAKE dataset shares (the synthetic shop, Emoji-CLDR-3D, a shop's own rows).

Besides `train`, each held-out split `S` ("validation", "test") is a catalogue `S_products` (`product_id`, `title`,
`image`, ...) and the queries judged against it, `S_queries` (`query`, `relevant_ids`, ...).
"""

HELD_OUT_SPLITS = ("validation", "test")
"""The splits whose products are held out of training: validation during the run, test at its end."""


def products_split(split: str) -> str:
    """The name of the catalogue of held-out split `split`."""
    return f"{split}_products"


def queries_split(split: str) -> str:
    """The name of the queries (with `relevant_ids`) of held-out split `split`."""
    return f"{split}_queries"


EVALUATION_SPLITS = tuple(name for split in HELD_OUT_SPLITS for name in (products_split(split), queries_split(split)))
"""Every evaluation split name, validation first: `validation_products`, `validation_queries`, `test_products`,
`test_queries`."""

__all__ = ["EVALUATION_SPLITS", "HELD_OUT_SPLITS", "products_split", "queries_split"]
