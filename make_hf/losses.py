"""Contrastive losses of MAKE: the InfoNCE building blocks, the gather layer, and MAKE's loss (`make_loss`).

`make_loss` takes the embeddings a batch produced (query, title, image, fused product, keyword), the modality masks,
the term ids and the product ids, and computes every term of `LOSS_TERMS` (see `loss_terms.py`) that the inputs
and the weights allow, as a local loss over the batch gathered from all processes. `MakeModel.forward` calls it as
transformers' CLIP calls `clip_loss`; GradCache calls it on cached embeddings.

The building blocks score a matrix of similarity logits (rows: anchors, columns: candidates) with boolean masks that
say which candidates are positives and which may appear in the softmax at all. `make_loss` builds the masks
(multi-positive by `product_id`, missing modalities, keyword coverage, false-negative masking) and calls them; they
know nothing about towers or processes, so they can be tested by hand.

References:
    - InfoNCE: van den Oord et al., "Representation Learning with Contrastive Predictive Coding", 2018.
    - Symmetric image-text loss with a learnable temperature: Radford et al., "Learning Transferable Visual Models
      From Natural Language Supervision" (CLIP), 2021; local loss over gathered features as in open_clip.
    - Multi-positive soft targets: Khosla et al., "Supervised Contrastive Learning", 2020 (the `L_out` form).
    - MAKE: Zheng et al., "MAKE: Vision-Language Pre-training based Product Retrieval in Taobao Search", 2023.
"""

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
import torch.nn.functional as F

from .loss_terms import EMBEDDING_KINDS, LOSS_TERMS


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


def all_gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate `tensor` from every process along dim 0; the backward pass sums the gradients of each process's
    copy into its owner (`accelerator.gather` would drop them)."""
    from torch.distributed import _functional_collectives as funcol

    # `all_gather_single_autograd` is the current name (torch >= 2.10); older releases only have the `_tensor_` one.
    gather = getattr(funcol, "all_gather_single_autograd", None) or funcol.all_gather_tensor_autograd
    return gather(tensor.contiguous(), 0, dist.group.WORLD)


class GlobalBatch:
    """
    Where the local rows sit in the batch gathered from all processes, and the gather itself.

    Batch sizes may differ between processes (last batch of an epoch): tensors are padded to the largest local batch,
    gathered, and the padding rows dropped. At world size 1 nothing is communicated.
    """

    def __init__(self, local_size: int, device: torch.device):
        self.world_size = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
        self.local_size = local_size
        if self.world_size == 1:
            self.sizes, self.rank = [local_size], 0
        else:
            self.rank = dist.get_rank()
            sizes = all_gather_with_grad(torch.tensor([local_size], device=device))
            self.sizes = [int(size) for size in sizes.tolist()]
        self.max_size = max(self.sizes)
        self.offset = sum(self.sizes[: self.rank])
        self.global_size = sum(self.sizes)
        self.local_rows = slice(self.offset, self.offset + local_size)
        self._keep = None
        if self.world_size > 1:
            self._keep = torch.cat(
                [torch.arange(size, device=device) + rank * self.max_size for rank, size in enumerate(self.sizes)]
            )

    def gather(self, tensor: torch.Tensor, with_grad: bool = False, pad_last_dim: bool = False) -> torch.Tensor:
        """Concatenate `tensor` from all processes along dim 0 (with gradient if `with_grad`)."""
        if self.world_size == 1:
            return tensor
        if pad_last_dim:
            # Term-id tensors may have a different width on each process: pad them to the widest with 0 (padding).
            width = all_gather_with_grad(torch.tensor([tensor.shape[-1]], device=tensor.device)).max().item()
            tensor = F.pad(tensor, (0, width - tensor.shape[-1]))
        if tensor.shape[0] < self.max_size:
            padding = tensor.new_zeros((self.max_size - tensor.shape[0], *tensor.shape[1:]))
            tensor = torch.cat([tensor, padding])
        if not with_grad:
            tensor = tensor.detach()
        return all_gather_with_grad(tensor)[self._keep]


@dataclass
class MakeLossOutput:
    """
    What [`make_loss`] computed.

    Args:
        loss (`torch.FloatTensor` of shape `()` or `None`): the weighted sum of `terms`; `None` when no term could be
            computed.
        terms (`dict[str, torch.FloatTensor]`): every computed term by its `LOSS_TERMS` name, in table order.
        logits_per_query, logits_per_product (`torch.FloatTensor` of shape `(batch_size, global_batch_size)`): scaled
            similarities of the local queries (products) to the products (queries) of the gathered batch, when the
            query-product term was computed.
        masked_negatives (`torch.FloatTensor` of shape `()`): mean number of negatives per local query row removed by
            false-negative masking, when it ran.
    """

    loss: torch.Tensor | None = None
    terms: dict[str, torch.Tensor] = field(default_factory=dict)
    logits_per_query: torch.Tensor | None = None
    logits_per_product: torch.Tensor | None = None
    masked_negatives: torch.Tensor | None = None


def make_loss(
    *,
    logit_scale: torch.Tensor,
    weights: Mapping[str, float],
    query_embeds: torch.Tensor | None = None,
    title_embeds: torch.Tensor | None = None,
    image_embeds: torch.Tensor | None = None,
    product_embeds: torch.Tensor | None = None,
    keyword_embeds: torch.Tensor | None = None,
    has_query: torch.Tensor | None = None,
    has_title: torch.Tensor | None = None,
    has_image: torch.Tensor | None = None,
    has_product: torch.Tensor | None = None,
    has_keywords: torch.Tensor | None = None,
    query_term_ids: torch.Tensor | None = None,
    keyword_term_ids: torch.Tensor | None = None,
    product_ids: torch.Tensor | None = None,
    false_negative_masking: bool = False,
) -> MakeLossOutput:
    """
    MAKE's loss: every term of `LOSS_TERMS` that the inputs and `weights` allow, weighted and summed.

    Each term is InfoNCE with one shared temperature over multi-positive soft targets: rows with the same
    `product_id` are positives of each other (`positives="product"`), or, for the query-keyword term, the pairs whose
    keyword terms contain every query term (`positives="coverage"`). Rows whose mask is False (a product without a
    title, a title without keywords) are neither anchors nor candidates of the terms that use that embedding. With
    `false_negative_masking`, the query-side softmax of the query-product term leaves out the other products whose
    keyword terms cover the query.

    In a multi-process run (`torch.distributed` initialised) the rows are the local anchors and the columns the
    candidates of the whole batch gathered from all processes with gradient (open_clip's local loss). Each term divides
    its summed row losses by (rows with a positive in the global batch) / (world size), so that the mean of the
    gradients over processes (DDP) equals the gradient of the single-process loss on the concatenated batch.

    A term is computed when its weight is above 0, both its embeddings are given, its positives can be formed (term
    ids for coverage) and at least one row of the global batch has a positive. Every process must call this with the
    same embeddings present (the gathers are collectives issued in one fixed order).

    Args:
        logit_scale (`torch.FloatTensor` of shape `()`): the multiplier of the cosine similarities (CLIP's
            `logit_scale.exp()`, already clamped).
        weights (`Mapping[str, float]`): the weight of each term by its name (`"query_product_loss"`, ...); a missing
            name counts as 0.
        query_embeds, title_embeds, image_embeds, product_embeds, keyword_embeds (`torch.FloatTensor` of shape
            `(batch_size, dim)`, *optional*): L2-normalised embeddings.
        has_query, has_title, has_image, has_product, has_keywords (`torch.BoolTensor` of shape `(batch_size,)`):
            which rows have that embedding (required for each embedding given).
        query_term_ids (`torch.LongTensor` of shape `(batch_size, Tq)`), keyword_term_ids (`(batch_size, Tk)`)
            (*optional*): hashed terms padded with 0, for keyword coverage.
        product_ids (`torch.LongTensor` of shape `(batch_size,)`, *optional*): without ids, row `i`'s only positive is
            row `i`.
        false_negative_masking (`bool`): see above; needs the term ids.

    Returns:
        [`MakeLossOutput`].

    Example:

    ```python
    >>> import torch.nn.functional as F
    >>> queries, products = F.normalize(torch.randn(4, 8), dim=-1), F.normalize(torch.randn(4, 8), dim=-1)
    >>> everyone = torch.ones(4, dtype=torch.bool)
    >>> out = make_loss(logit_scale=torch.tensor(10.0), weights={"query_product_loss": 1.0}, query_embeds=queries,
    ...                 product_embeds=products, has_query=everyone, has_product=everyone)
    >>> list(out.terms)
    ['query_product_loss']
    ```
    """
    local = {
        "query": query_embeds, "title": title_embeds, "image": image_embeds, "product": product_embeds,
        "keyword": keyword_embeds,
    }
    masks = {
        "query": has_query, "title": has_title, "image": has_image, "product": has_product, "keyword": has_keywords,
    }
    for kind in EMBEDDING_KINDS:
        if local[kind] is not None and masks[kind] is None:
            raise ValueError(f"`make_loss` got `{kind}_embeds` without its mask; pass `has_{kind}` too.")
    coverage_available = query_term_ids is not None and keyword_term_ids is not None
    active = [
        term
        for term in LOSS_TERMS
        if weights.get(term.name, 0) > 0
        and local[term.anchor] is not None
        and local[term.candidate] is not None
        and (term.positives != "coverage" or coverage_available)
    ]
    if not active:
        return MakeLossOutput()

    # A fixed order: every process must issue the same collectives in the same sequence (set order is not
    # stable across processes, string hashing is salted per interpreter).
    used = sorted({kind for term in active for kind in (term.anchor, term.candidate)})
    reference = local[used[0]]
    batch = GlobalBatch(reference.shape[0], reference.device)
    gathered = {kind: batch.gather(local[kind], with_grad=True) for kind in used}
    valid = {kind: batch.gather(masks[kind].long()).bool() for kind in used}
    if product_ids is not None:
        row_ids = batch.gather(product_ids)
    else:
        row_ids = torch.arange(batch.global_size, device=reference.device)
    same_product = positive_mask_from_ids(row_ids, row_ids)
    masks_query_product = false_negative_masking and any(term.name == "query_product_loss" for term in active)
    coverage = None
    if coverage_available and (any(term.positives == "coverage" for term in active) or masks_query_product):
        coverage = keyword_coverage(
            batch.gather(query_term_ids, pad_last_dim=True), batch.gather(keyword_term_ids, pad_last_dim=True)
        )
    rows = batch.local_rows

    def directional(anchor, candidate, positives, removed=None):
        positives = positives & valid[anchor][:, None] & valid[candidate][None, :]
        num_rows = positives.any(dim=-1).sum()
        if num_rows == 0:
            return None, None
        candidates = valid[candidate][None, :].expand_as(positives)
        if removed is not None:
            candidates = candidates & ~removed
        logits = logit_scale * local[anchor] @ gathered[candidate].t()
        loss = multi_positive_info_nce(
            logits, positives[rows], candidates[rows], num_rows=num_rows.to(logits.dtype) / batch.world_size
        )
        return loss, logits

    output = MakeLossOutput()
    for term in active:
        positives = same_product if term.positives == "product" else coverage
        removed = None
        if term.name == "query_product_loss" and false_negative_masking and coverage is not None:
            removed = coverage & ~same_product
            counted = removed[rows] & valid["product"][None, :] & valid["query"][rows][:, None]
            query_rows = valid["query"][rows]
            output.masked_negatives = counted.sum(dim=-1)[query_rows].to(local["query"].dtype).mean()
            if not query_rows.any():
                output.masked_negatives = local["query"].new_zeros(())
        value, forward_logits = directional(term.anchor, term.candidate, positives, removed)
        if term.symmetric:
            backward_value, backward_logits = directional(term.candidate, term.anchor, positives.t())
            if term.name == "query_product_loss":
                output.logits_per_query, output.logits_per_product = forward_logits, backward_logits
            value = None if value is None or backward_value is None else (value + backward_value) / 2
        if value is not None:
            output.terms[term.name] = value
    for name, value in output.terms.items():
        weighted = weights[name] * value
        output.loss = weighted if output.loss is None else output.loss + weighted
    return output


__all__ = [
    "GlobalBatch",
    "MakeLossOutput",
    "all_gather_with_grad",
    "keyword_coverage",
    "make_loss",
    "masked_logit_fill_value",
    "multi_positive_info_nce",
    "positive_mask_from_ids",
    "symmetric_info_nce",
]
