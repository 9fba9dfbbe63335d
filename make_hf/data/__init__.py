"""Data for MAKE: the synthetic shop, the Emoji-CLDR-3D benchmark, loading your own triples, and the collator.

Every dataset here has the same layout: a `DatasetDict` with `train` rows (`query`, `title`, `image`,
`product_id`, ...) and, for `validation` and `test`, a catalogue `<split>_products` (`product_id`, `title`,
`image`, ...) and `<split>_queries` (`query`, `relevant_ids`, ...) judged against that catalogue.
"""

from ..training_stack import require_training_stack

require_training_stack("make_hf.data (training and evaluation data)", ("datasets",))

from .collator import MakeCollator, catalogue_of, hash_product_id  # noqa: E402
from .emoji import build_emoji_cldr_3d, describe_emoji_cldr_3d, fetch_emoji_tarballs  # noqa: E402
from .files import derive_product_id, load_triples  # noqa: E402
from .skipped import SKIP_REASONS, SkippedRow, SkippedRows  # noqa: E402
from .synthetic import make_synthetic_shop  # noqa: E402

__all__ = [
    "SKIP_REASONS",
    "MakeCollator",
    "SkippedRow",
    "SkippedRows",
    "build_emoji_cldr_3d",
    "catalogue_of",
    "derive_product_id",
    "describe_emoji_cldr_3d",
    "fetch_emoji_tarballs",
    "hash_product_id",
    "load_triples",
    "make_synthetic_shop",
]
