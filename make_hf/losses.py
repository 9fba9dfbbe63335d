"""Contrastive losses of MAKE as plain functions.

All losses score a matrix of similarity logits (rows: anchors, columns: candidates) with boolean masks that say which
candidates are positives and which may appear in the softmax at all. The model builds the masks (multi-positive by
`product_id`, missing modalities, keyword coverage, false-negative masking) and calls these functions; they know
nothing about towers or processes, so they can be tested by hand.

References:
    - InfoNCE: van den Oord et al., "Representation Learning with Contrastive Predictive Coding", 2018.
    - Symmetric image-text loss with a learnable temperature: Radford et al., "Learning Transferable Visual Models
      From Natural Language Supervision" (CLIP), 2021; local loss over gathered features as in open_clip.
    - Multi-positive soft targets: Khosla et al., "Supervised Contrastive Learning", 2020 (the `L_out` form).
    - MAKE: Zheng et al., "MAKE: Vision-Language Pre-training based Product Retrieval in Taobao Search", 2023.
"""

import torch
import torch.nn.functional as F


def masked_logit_fill_value(dtype: torch.dtype) -> float:
    """
    The value written into masked-out logits: a large negative *finite* number.

    `-inf` would make `0 * log_softmax` evaluate `0 * -inf = NaN` for entries outside the positives; a quarter of the
    dtype's minimum keeps `exp` at exactly 0 and leaves room for the `x - max` of the softmax without overflow.
    """
    return torch.finfo(dtype).min / 4


def positive_mask_from_ids(row_ids: torch.Tensor, column_ids: torch.Tensor) -> torch.Tensor:
    """
    Boolean `(N, M)` mask, True where `row_ids[i] == column_ids[j]`.

    With product ids, every query of the batch whose product appears several times has all those rows as positives
    (many queries hit one product): duplicates are false negatives otherwise.
    """
    return row_ids[:, None] == column_ids[None, :]


def keyword_coverage(query_term_ids: torch.Tensor, keyword_term_ids: torch.Tensor, chunk_elements: int = 1 << 24):
    """
    Which keyword sets cover which queries.

    Args:
        query_term_ids (`torch.LongTensor` of shape `(N, Tq)`): hashed query terms, padded with 0.
        keyword_term_ids (`torch.LongTensor` of shape `(M, Tk)`): hashed keyword terms of each product, padded with 0.
        chunk_elements (`int`): bound on the size of the intermediate comparison tensor (rows are processed in chunks).

    Returns:
        `torch.BoolTensor` of shape `(N, M)`: entry `(i, j)` is True when the nonzero terms of query `i` form a
        non-empty subset of the nonzero terms of keyword row `j`. 0 is padding, never a term.

    Example:

    ```python
    >>> keyword_coverage(torch.tensor([[5, 7], [9, 0]]), torch.tensor([[7, 5, 1], [9, 2, 0]]))
    tensor([[ True, False],
            [False,  True]])
    ```
    """
    n, tq = query_term_ids.shape
    m, tk = keyword_term_ids.shape
    query_has_terms = (query_term_ids != 0).any(dim=-1)
    rows_per_chunk = max(1, chunk_elements // max(1, m * tq * tk))
    chunks = []
    for start in range(0, n, rows_per_chunk):
        query = query_term_ids[start : start + rows_per_chunk]
        # (n_chunk, M, Tq): query term found among the keyword terms (padding counts as found).
        found = (query[:, None, :, None] == keyword_term_ids[None, :, None, :]).any(dim=-1) | (query[:, None, :] == 0)
        chunks.append(found.all(dim=-1))
    covered = torch.cat(chunks, dim=0) if chunks else query_term_ids.new_zeros((0, m), dtype=torch.bool)
    return covered & query_has_terms[:, None]


def multi_positive_info_nce(
    logits: torch.Tensor,
    positive_mask: torch.Tensor,
    candidate_mask: torch.Tensor | None = None,
    num_rows: torch.Tensor | float | None = None,
) -> torch.Tensor:
    """
    InfoNCE with several positives per row (soft targets), over a masked set of candidates.

    Row `i` has the target distribution uniform over its positives; the loss is the cross-entropy between that target
    and the softmax of the row's logits restricted to its candidates:
    `loss_i = -1/|P(i)| * sum_{j in P(i)} log softmax_{j' in C(i)}(logits[i, j'])[j]`.
    Rows without any positive contribute nothing. With one positive per row this is CLIP's cross-entropy.

    Args:
        logits (`torch.FloatTensor` of shape `(N, M)`): scaled similarities (anchor `i`, candidate `j`).
        positive_mask (`torch.BoolTensor` of shape `(N, M)`): the positives of each row.
        candidate_mask (`torch.BoolTensor` of shape `(N, M)` or `(M,)`, *optional*): entries allowed in the softmax
            denominator (missing modalities and false negatives are left out); positives are always candidates.
            Defaults to every entry.
        num_rows (`float` or scalar tensor, *optional*): divisor of the summed row losses. Defaults to the number of
            rows with at least one positive (a mean). In a multi-process local loss it is the global count divided by
            the world size, so that averaging gradients over processes reproduces the single-process loss.

    Returns:
        Scalar `torch.Tensor`.

    Example:

    ```python
    >>> logits = torch.tensor([[10.0, 0.0, 10.0], [0.0, 10.0, 0.0]])
    >>> positives = torch.tensor([[True, False, True], [False, True, False]])
    >>> round(multi_positive_info_nce(logits, positives).item(), 4)  # row 0: two equal positives, -log(1/2)
    0.3466
    ```
    """
    positive_mask = positive_mask.bool()
    if candidate_mask is None:
        candidate_mask = torch.ones_like(positive_mask)
    candidate_mask = candidate_mask.bool().expand_as(positive_mask) | positive_mask
    masked_logits = logits.masked_fill(~candidate_mask, masked_logit_fill_value(logits.dtype))
    log_probs = F.log_softmax(masked_logits, dim=-1)
    positives_per_row = positive_mask.sum(dim=-1, keepdim=True)
    targets = positive_mask.to(log_probs.dtype) / positives_per_row.clamp(min=1).to(log_probs.dtype)
    row_losses = -(targets * log_probs).sum(dim=-1)
    if num_rows is None:
        num_rows = (positives_per_row > 0).sum().clamp(min=1)
    return row_losses.sum() / num_rows


def symmetric_info_nce(
    logits_per_anchor: torch.Tensor,
    positive_mask: torch.Tensor,
    candidate_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """
    CLIP's symmetric loss with multi-positive targets: the mean of the loss over rows and over columns.

    Args:
        logits_per_anchor (`torch.FloatTensor` of shape `(N, M)`): e.g. queries against products.
        positive_mask (`torch.BoolTensor` of shape `(N, M)`).
        candidate_mask (`torch.BoolTensor` of shape `(N, M)`, *optional*): applied to the row direction only
            (false-negative masking is a query-side correction); the column direction uses every entry.

    Returns:
        Scalar `torch.Tensor`.
    """
    row_loss = multi_positive_info_nce(logits_per_anchor, positive_mask, candidate_mask)
    column_loss = multi_positive_info_nce(logits_per_anchor.t(), positive_mask.t())
    return (row_loss + column_loss) / 2


__all__ = [
    "keyword_coverage",
    "masked_logit_fill_value",
    "multi_positive_info_nce",
    "positive_mask_from_ids",
    "symmetric_info_nce",
]
