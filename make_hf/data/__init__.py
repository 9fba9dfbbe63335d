"""Data for MAKE: the synthetic shop, the Emoji-CLDR-3D benchmark, loading your own triples, and the collator."""

from .synthetic import make_synthetic_shop

__all__ = ["make_synthetic_shop"]
