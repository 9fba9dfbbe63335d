"""The six contrastive loss terms of MAKE, in one table.

`LOSS_TERMS` is the single place a term is defined: its name (the `MakeOutput` field), which embeddings it scores,
its positives, its default weight (the `MakeConfig.<name>_weight` field) and its description. `make_hf.losses`
computes the terms in this order, `MakeConfig` takes its weight fields and defaults from here, `MakeOutput` its loss
fields, and the model card its loss names. The table imports nothing heavy, so torch-free code can read it too.
"""

from dataclasses import dataclass

EMBEDDING_KINDS = ("query", "title", "image", "product", "keyword")
"""The embeddings a loss term can score: `<kind>_embeds` of `MakeOutput`."""


@dataclass(frozen=True)
class LossTerm:
    """
    One InfoNCE term of MAKE.

    Args:
        name (`str`): the `MakeOutput` field holding the term, e.g. `"query_product_loss"`.
        anchor, candidate (`str`): the embedding kinds of the rows and columns of its logits (`EMBEDDING_KINDS`).
        symmetric (`bool`): the mean of both directions (CLIP), or `anchor -> candidate` only.
        positives (`str`): `"product"` (rows with the same `product_id`) or `"coverage"` (pairs whose keyword terms
            contain every query term; needs `query_term_ids` and `keyword_term_ids`).
        default_weight (`float`): the default of `MakeConfig.<name>_weight`.
        description (`str`): one line, used in the `MakeOutput` and `MakeConfig` docs.
    """

    name: str
    anchor: str
    candidate: str
    symmetric: bool
    positives: str
    default_weight: float
    description: str

    @property
    def weight_name(self) -> str:
        """The `MakeConfig` field holding the term's weight."""
        return f"{self.name}_weight"

    @property
    def label(self) -> str:
        """A short display name, `anchor-candidate` (e.g. `query-product`)."""
        return f"{self.anchor}-{self.candidate}"

    @property
    def uses_keywords(self) -> bool:
        """Whether the term scores keyword embeddings (present only with `keyword_enhancement`)."""
        return "keyword" in (self.anchor, self.candidate)


LOSS_TERMS = (
    LossTerm(
        "query_product_loss", "query", "product", True, "product", 1.0,
        "Symmetric InfoNCE between queries and fused products (the main objective).",
    ),
    LossTerm(
        "title_image_loss", "title", "image", True, "product", 0.5,
        "Symmetric InfoNCE between titles and images of products that have both.",
    ),
    LossTerm(
        "query_title_loss", "query", "title", True, "product", 0.25,
        "Symmetric InfoNCE between queries and titles.",
    ),
    LossTerm(
        "query_image_loss", "query", "image", True, "product", 0.25,
        "Symmetric InfoNCE between queries and images.",
    ),
    LossTerm(
        "keyword_title_loss", "keyword", "title", False, "product", 0.5,
        "InfoNCE from keywords (query encoder) to titles (`k->t`).",
    ),
    LossTerm(
        "query_keyword_loss", "query", "keyword", True, "coverage", 0.5,
        "Symmetric InfoNCE between queries and keywords, positives being the pairs whose keyword terms cover every "
        "query term.",
    ),
)
"""Every loss term, in the order they are computed, summed and reported."""

LOSS_TERM_NAMES = tuple(term.name for term in LOSS_TERMS)
LOSS_WEIGHT_NAMES = tuple(term.weight_name for term in LOSS_TERMS)


def check_loss_fields(cls: type, attribute: str) -> None:
    """
    Raise a `TypeError` unless `cls` declares a dataclass field for every loss term (`attribute`: `"name"` for the
    term fields of an output, `"weight_name"` for the weight fields of a config).

    Dataclass fields must be written out in the class body (Python 3.14 evaluates annotations lazily, so they cannot
    be generated there); this check keeps the written fields and the table from drifting apart.
    """
    fields = getattr(cls, "__dataclass_fields__", {})
    for term in LOSS_TERMS:
        name = getattr(term, attribute)
        if name not in fields:
            raise TypeError(f"{cls.__name__} has no field `{name}` for the loss term `{term.name}` of LOSS_TERMS.")


__all__ = ["EMBEDDING_KINDS", "LOSS_TERMS", "LOSS_TERM_NAMES", "LOSS_WEIGHT_NAMES", "LossTerm", "check_loss_fields"]
